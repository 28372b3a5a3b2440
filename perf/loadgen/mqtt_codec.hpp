// Minimal MQTT 3.1.1 client codec for the load generator, written from the OASIS specification and independent of the
// broker's src/mqtt on purpose: a shared bug must not be able to hide itself in the measurements.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>

namespace loadgen::mqtt {

enum packet_type : std::uint8_t {
    connect = 1,
    connack = 2,
    publish = 3,
    puback = 4,
    pubrec = 5,
    pubrel = 6,
    pubcomp = 7,
    subscribe = 8,
    suback = 9,
    unsubscribe = 10,
    unsuback = 11,
    pingreq = 12,
    pingresp = 13,
    disconnect = 14,
};

// Append-only byte buffer with a consumed prefix: packets are encoded at the tail and written from the head, so a
// partial write costs no copy until the next growth. Allocates nothing until first used (10k idle connections must
// stay cheap). Owned by one connection, used by its worker thread only.
class byte_buffer {
public:
    std::uint8_t* append(std::size_t n) {
        if (size_ + n > cap_) make_room(n);
        std::uint8_t* p = buf_.get() + size_;
        size_ += n;
        return p;
    }
    const std::uint8_t* data() const { return buf_.get() + head_; }
    std::size_t size() const { return size_ - head_; }
    bool empty() const { return size_ == head_; }
    void consume(std::size_t n) {
        head_ += n;
        if (head_ == size_) head_ = size_ = 0;
    }
    void clear() { head_ = size_ = 0; }

private:
    void make_room(std::size_t n) {
        const std::size_t live = size_ - head_;
        if (live + n <= cap_) {
            std::memmove(buf_.get(), buf_.get() + head_, live);
        } else {
            const std::size_t cap = std::max({live + n, cap_ * 2, std::size_t{256}});
            auto fresh = std::make_unique_for_overwrite<std::uint8_t[]>(cap);
            if (live) std::memcpy(fresh.get(), buf_.get() + head_, live);
            buf_ = std::move(fresh);
            cap_ = cap;
        }
        head_ = 0;
        size_ = live;
    }

    std::unique_ptr<std::uint8_t[]> buf_;
    std::size_t head_ = 0;
    std::size_t size_ = 0;
    std::size_t cap_ = 0;
};

// Bytes the Remaining Length field takes for a value (1..4).
inline std::size_t varint_size(std::uint32_t v) { return v < 128 ? 1 : v < 16384 ? 2 : v < 2097152 ? 3 : 4; }

inline std::uint8_t* put_varint(std::uint8_t* p, std::uint32_t v) {
    do {
        std::uint8_t b = v & 0x7f;
        v >>= 7;
        if (v) b |= 0x80;
        *p++ = b;
    } while (v);
    return p;
}

inline std::uint8_t* put_u16(std::uint8_t* p, std::uint16_t v) {
    p[0] = static_cast<std::uint8_t>(v >> 8);
    p[1] = static_cast<std::uint8_t>(v);
    return p + 2;
}

inline std::uint8_t* put_str(std::uint8_t* p, std::string_view s) {
    p = put_u16(p, static_cast<std::uint16_t>(s.size()));
    std::memcpy(p, s.data(), s.size());
    return p + s.size();
}

inline std::uint16_t get_u16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }

// CONNECT with protocol level 4, no will, no credentials.
inline void encode_connect(byte_buffer& out, std::string_view client_id, std::uint16_t keepalive_s, bool clean) {
    const auto rem = static_cast<std::uint32_t>(10 + 2 + client_id.size());
    std::uint8_t* p = out.append(1 + varint_size(rem) + rem);
    *p++ = connect << 4;
    p = put_varint(p, rem);
    p = put_str(p, "MQTT");
    *p++ = 4;
    *p++ = clean ? 0x02 : 0x00;
    p = put_u16(p, keepalive_s);
    put_str(p, client_id);
}

inline void encode_subscribe(byte_buffer& out, std::uint16_t id, std::string_view filter, std::uint8_t qos) {
    const auto rem = static_cast<std::uint32_t>(2 + 2 + filter.size() + 1);
    std::uint8_t* p = out.append(1 + varint_size(rem) + rem);
    *p++ = (subscribe << 4) | 0x02; // reserved flags 0010 (MQTT-3.8.1-1)
    p = put_varint(p, rem);
    p = put_u16(p, id);
    p = put_str(p, filter);
    *p = qos;
}

inline void encode_unsubscribe(byte_buffer& out, std::uint16_t id, std::string_view filter) {
    const auto rem = static_cast<std::uint32_t>(2 + 2 + filter.size());
    std::uint8_t* p = out.append(1 + varint_size(rem) + rem);
    *p++ = (unsubscribe << 4) | 0x02; // reserved flags 0010 (MQTT-3.10.1-1)
    p = put_varint(p, rem);
    p = put_u16(p, id);
    put_str(p, filter);
}

// PUBACK, PUBREC, PUBREL (flags 0010, MQTT-3.6.1-1) and PUBCOMP: two-byte packet id bodies.
inline void encode_ack(byte_buffer& out, packet_type type, std::uint16_t id) {
    std::uint8_t* p = out.append(4);
    p[0] = static_cast<std::uint8_t>((type << 4) | (type == pubrel ? 0x02 : 0x00));
    p[1] = 2;
    put_u16(p + 2, id);
}

inline void encode_empty(byte_buffer& out, packet_type type) {
    std::uint8_t* p = out.append(2);
    p[0] = static_cast<std::uint8_t>(type << 4);
    p[1] = 0;
}

// Fixed header and topic of a PUBLISH whose payload size and QoS never change: encoded once per publisher, then each
// message only appends the packet id (QoS > 0) and the payload. Returns the number of bytes written to `p` (at most
// 5 + 2 + topic size).
inline std::size_t encode_publish_prefix(std::uint8_t* p, std::string_view topic, std::uint8_t qos,
                                         std::size_t payload_size) {
    const auto rem = static_cast<std::uint32_t>(2 + topic.size() + (qos ? 2 : 0) + payload_size);
    std::uint8_t* start = p;
    *p++ = static_cast<std::uint8_t>((publish << 4) | (qos << 1));
    p = put_varint(p, rem);
    p = put_str(p, topic);
    return static_cast<std::size_t>(p - start);
}

// A whole PUBLISH with the RETAIN flag (QoS 0 or 1; the id only for QoS 1).
inline void encode_retained_publish(byte_buffer& out, std::string_view topic, std::uint8_t qos, std::uint16_t id,
                                    const std::uint8_t* payload, std::size_t payload_size) {
    const auto rem = static_cast<std::uint32_t>(2 + topic.size() + (qos ? 2 : 0) + payload_size);
    std::uint8_t* p = out.append(1 + varint_size(rem) + rem);
    *p++ = static_cast<std::uint8_t>((publish << 4) | (qos << 1) | 0x01);
    p = put_varint(p, rem);
    p = put_str(p, topic);
    if (qos) p = put_u16(p, id);
    if (payload_size) std::memcpy(p, payload, payload_size);
}

// One complete packet inside a receive buffer (a view: valid until the buffer is reused).
struct packet_view {
    std::uint8_t type = 0;
    std::uint8_t flags = 0;
    const std::uint8_t* body = nullptr;
    std::size_t size = 0;
};

// Splits the next packet off [p, p + n): returns the bytes it takes, 0 when more bytes are needed, -1 when the
// Remaining Length is malformed (more than four bytes).
inline long parse_packet(const std::uint8_t* p, std::size_t n, packet_view& out) {
    if (n < 2) return 0;
    std::uint32_t len = 0;
    unsigned shift = 0;
    std::size_t i = 1;
    for (;;) {
        if (i >= n) return 0;
        const std::uint8_t b = p[i++];
        len |= static_cast<std::uint32_t>(b & 0x7f) << shift;
        if (!(b & 0x80)) break;
        shift += 7;
        if (shift > 21) return -1;
    }
    if (n - i < len) return 0;
    out.type = p[0] >> 4;
    out.flags = p[0] & 0x0f;
    out.body = p + i;
    out.size = len;
    return static_cast<long>(i + len);
}

// The fields of a received PUBLISH, pointing into the packet_view's buffer.
struct publish_view {
    std::string_view topic;
    std::uint8_t qos = 0;
    bool retain = false;
    std::uint16_t id = 0;
    const std::uint8_t* payload = nullptr;
    std::size_t payload_size = 0;
};

inline bool decode_publish(const packet_view& pv, publish_view& out) {
    out.qos = (pv.flags >> 1) & 3;
    out.retain = (pv.flags & 1) != 0;
    if (out.qos == 3 || pv.size < 2) return false;
    const std::size_t tlen = get_u16(pv.body);
    std::size_t pos = 2 + tlen;
    if (pos > pv.size) return false;
    out.topic = std::string_view(reinterpret_cast<const char*>(pv.body + 2), tlen);
    if (out.qos) {
        if (pos + 2 > pv.size) return false;
        out.id = get_u16(pv.body + pos);
        pos += 2;
    }
    out.payload = pv.body + pos;
    out.payload_size = pv.size - pos;
    return true;
}

} // namespace loadgen::mqtt
