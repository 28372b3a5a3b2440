#include "mqtt/codec.hpp"

#include "mqtt/reader.hpp"
#include "mqtt/validate.hpp"
#include "util/assert.hpp"

#include <algorithm>
#include <initializer_list>

namespace ringmq::mqtt {

const char* to_string(packet_type t) {
    switch (t) {
    case packet_type::reserved:
        return "RESERVED";
    case packet_type::connect:
        return "CONNECT";
    case packet_type::connack:
        return "CONNACK";
    case packet_type::publish:
        return "PUBLISH";
    case packet_type::puback:
        return "PUBACK";
    case packet_type::pubrec:
        return "PUBREC";
    case packet_type::pubrel:
        return "PUBREL";
    case packet_type::pubcomp:
        return "PUBCOMP";
    case packet_type::subscribe:
        return "SUBSCRIBE";
    case packet_type::suback:
        return "SUBACK";
    case packet_type::unsubscribe:
        return "UNSUBSCRIBE";
    case packet_type::unsuback:
        return "UNSUBACK";
    case packet_type::pingreq:
        return "PINGREQ";
    case packet_type::pingresp:
        return "PINGRESP";
    case packet_type::disconnect:
        return "DISCONNECT";
    case packet_type::auth:
        return "AUTH";
    }
    return "UNKNOWN";
}

const char* to_string(protocol_version v) {
    switch (v) {
    case protocol_version::v31:
        return "3.1";
    case protocol_version::v311:
        return "3.1.1";
    case protocol_version::v5:
        return "5.0";
    }
    return "unknown";
}

const char* to_string(error e) {
    switch (e) {
    case error::none:
        return "none";
    case error::need_more:
        return "need_more";
    case error::malformed_remaining_length:
        return "malformed_remaining_length";
    case error::bad_flags:
        return "bad_flags";
    case error::bad_qos:
        return "bad_qos";
    case error::malformed:
        return "malformed";
    case error::bad_protocol_name:
        return "bad_protocol_name";
    case error::unsupported_protocol_version:
        return "unsupported_protocol_version";
    case error::bad_connect_flags:
        return "bad_connect_flags";
    case error::client_id_rejected:
        return "client_id_rejected";
    case error::bad_utf8:
        return "bad_utf8";
    case error::bad_topic:
        return "bad_topic";
    case error::zero_packet_id:
        return "zero_packet_id";
    case error::empty_subscribe:
        return "empty_subscribe";
    case error::bad_property:
        return "bad_property";
    case error::packet_too_large:
        return "packet_too_large";
    }
    return "unknown";
}

// ---------------------------------------------------------------------------------------------------------------
// Varints and the fixed header

error decode_varint(const uint8_t* p, size_t n, uint32_t& value, size_t& len) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) {
        if (i == n) return error::need_more;
        uint8_t c = p[i];
        v |= uint32_t{c & 0x7Fu} << (7 * i);
        if ((c & 0x80) == 0) {
            if (i > 0 && c == 0) return error::malformed_remaining_length;
            value = v;
            len = i + 1;
            return error::none;
        }
    }
    return error::malformed_remaining_length;
}

size_t frames_starting_within(std::span<const uint8_t> frames, size_t room, uint64_t& count) {
    size_t off = 0;
    count = 0;
    while (off < frames.size() && off <= room) {
        fixed_header h{};
        if (parse_fixed_header(frames.data() + off, frames.size() - off, h) != error::none) break;
        const size_t len = size_t{h.header_len} + h.remaining_length;
        if (len > frames.size() - off) break;
        off += len;
        ++count;
    }
    return off;
}

size_t encode_varint(uint32_t v, uint8_t* out) {
    RINGMQ_ASSERT(v <= max_remaining_length);
    return write_varint(v, out);
}

error parse_fixed_header_full(const uint8_t* p, size_t n, fixed_header& out) {
    if (n == 0) return error::need_more;
    uint32_t rl;
    size_t len;
    if (error e = decode_varint(p + 1, n - 1, rl, len); e != error::none) return e;
    out.type = static_cast<packet_type>(p[0] >> 4);
    out.flags = p[0] & 0x0F;
    out.remaining_length = rl;
    out.header_len = static_cast<uint8_t>(1 + len);
    return error::none;
}

bool valid_reason_code(packet_type t, uint8_t code) {
    auto in = [code](std::initializer_list<uint8_t> codes) {
        return std::find(codes.begin(), codes.end(), code) != codes.end();
    };
    switch (t) {
    case packet_type::connack:
        return in({0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
                   0x8A, 0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F});
    case packet_type::puback:
    case packet_type::pubrec:
        return in({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99});
    case packet_type::pubrel:
    case packet_type::pubcomp:
        return in({0x00, 0x92});
    case packet_type::suback:
        return in({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2});
    case packet_type::unsuback:
        return in({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91});
    case packet_type::disconnect:
        return in({0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
                   0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2});
    case packet_type::auth:
        return in({0x00, 0x18, 0x19});
    default:
        return false;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Decoders

namespace {
// A plain loop: string_view::find_first_of calls memchr on the two-character set once per topic byte, which showed
// up as the hottest libc function of the publish path.
bool has_wildcard(std::string_view s) {
    for (char c : s)
        if (c == '+' || c == '#') return true;
    return false;
}
} // namespace

namespace {

using detail::reader;

// SUBSCRIBE, UNSUBSCRIBE and PUBREL carry 0x2. MQTT 3.1 gave them QoS 1 with a DUP bit a client may set on
// retransmission, so v3 also accepts 0xA (as mosquitto does).
bool qos1_flags_ok(uint8_t flags, protocol_version v) {
    return flags == 0x2 || (v == protocol_version::v31 && flags == 0xA);
}

// Reads a v5 property block (length varint + bytes) into `block` and validates it for packet type t.
error read_properties(reader& r, packet_type t, bool for_will, std::span<const uint8_t>& block, properties* parsed) {
    if (!r.property_block(block)) return error::malformed;
    properties local;
    return parse_properties(block, t, for_will, parsed ? *parsed : local);
}

// A UTF-8 string field: truncation is malformed, bad content is bad_utf8.
error read_utf8(reader& r, std::string_view& s) {
    if (!r.string(s)) return error::malformed;
    return valid_utf8(s) ? error::none : error::bad_utf8;
}

bool as_version(uint8_t level, protocol_version& v) {
    if (level < 3 || level > 5) return false;
    v = static_cast<protocol_version>(level);
    return true;
}

} // namespace

error decode_connect(std::span<const uint8_t> body, uint8_t flags, connect_view& out, properties* parsed,
                     properties* will_parsed) {
    out = connect_view{};
    out.version = protocol_version::v311;
    reader r(body);
    uint8_t level;
    if (!r.string(out.protocol_name) || !r.u8(level)) return error::malformed;

    // Name and level come first so that the broker can still answer CONNACK 0x01 for an unknown level.
    const bool mqtt = out.protocol_name == "MQTT";
    const bool mqisdp = out.protocol_name == "MQIsdp";
    if (!mqtt && !mqisdp) return error::bad_protocol_name;
    // An unsupported level is answered in the framing the name implies.
    out.version = mqisdp ? protocol_version::v31 : protocol_version::v311;
    protocol_version v;
    if (!as_version(level, v) || mqisdp != (v == protocol_version::v31)) return error::unsupported_protocol_version;
    out.version = v;
    const bool v5 = v == protocol_version::v5;

    if (flags != 0) return error::bad_flags;

    uint8_t cf;
    if (!r.u8(cf) || !r.u16(out.keepalive)) return error::malformed;
    if (cf & 0x01) return error::bad_connect_flags;
    out.clean_session = cf & 0x02;
    out.will_flag = cf & 0x04;
    out.will_qos = (cf >> 3) & 0x03;
    out.will_retain = cf & 0x20;
    out.has_password = cf & 0x40;
    out.has_username = cf & 0x80;
    if (out.will_flag) {
        if (out.will_qos == 3) return error::bad_qos;
    } else if (out.will_qos != 0 || out.will_retain) {
        return error::bad_connect_flags; // MQTT-3.1.2-11, -13, -15
    }
    if (!v5 && out.has_password && !out.has_username) return error::bad_connect_flags; // MQTT-3.1.2-22

    if (v5) {
        properties local;
        properties& p = parsed ? *parsed : local;
        if (error e = read_properties(r, packet_type::connect, false, out.properties, &p); e != error::none) return e;
        if (p.authentication_data && !p.authentication_method) return error::bad_property;
    }
    if (error e = read_utf8(r, out.client_id); e != error::none) return e;

    if (out.will_flag) {
        if (v5) {
            if (error e = read_properties(r, packet_type::connect, true, out.will_properties, will_parsed);
                e != error::none)
                return e;
        }
        if (error e = read_utf8(r, out.will_topic); e != error::none) return e;
        if (!valid_topic_name(out.will_topic)) return error::bad_topic;
        if (!r.binary(out.will_payload)) return error::malformed;
    }
    // MQTT 3.1 clients exist that set the username/password flags and then send nothing; mosquitto tolerates it,
    // so a v3 flag with no bytes left at all reads as "absent".
    const bool lenient = v == protocol_version::v31;
    if (out.has_username) {
        if (lenient && r.empty()) {
            out.has_username = false;
        } else if (error e = read_utf8(r, out.username); e != error::none) {
            return e;
        }
    }
    if (out.has_password) {
        if (lenient && r.empty()) {
            out.has_password = false;
        } else if (!r.binary(out.password)) {
            return error::malformed;
        }
    }
    if (!r.empty()) return error::malformed;

    // Last, so that every structural error wins over this policy answer.
    // 3.1 counts its 23 in characters: a multi-byte one is one (12 x 'é' is 24 bytes and was refused).
    if (v == protocol_version::v31 &&
        (out.client_id.empty() || std::count_if(out.client_id.begin(), out.client_id.end(), [](char ch) {
                                      return (static_cast<uint8_t>(ch) & 0xC0) != 0x80; // not a UTF-8 continuation byte
                                  }) > static_cast<std::ptrdiff_t>(max_v3_client_id_length)))
        return error::client_id_rejected;
    return error::none;
}

error decode_publish(std::span<const uint8_t> body, uint8_t flags, protocol_version v, publish_view& out,
                     properties* parsed, bool topic_checked) {
    out = publish_view{};
    out.retain = flags & 0x01;
    out.qos = (flags >> 1) & 0x03;
    out.dup = flags & 0x08;
    if (out.qos == 3) return error::bad_qos;
    if (out.dup && out.qos == 0) return error::bad_flags; // MQTT-3.3.1-2

    reader r(body);
    if (topic_checked) {
        if (!r.string(out.topic)) return error::malformed;
    } else {
        if (error e = read_utf8(r, out.topic); e != error::none) return e;
        // v5 allows an empty topic together with a Topic Alias; whether the alias is there is the broker's check.
        if (out.topic.empty() ? v != protocol_version::v5 : has_wildcard(out.topic)) return error::bad_topic;
    }
    if (out.qos > 0) {
        if (!r.u16(out.packet_id)) return error::malformed;
        if (out.packet_id == 0) return error::zero_packet_id;
    }
    if (v == protocol_version::v5) {
        if (error e = read_properties(r, packet_type::publish, false, out.properties, parsed); e != error::none)
            return e;
    }
    out.payload = r.rest();
    return error::none;
}

error decode_ack_full(packet_type t, std::span<const uint8_t> body, uint8_t flags, protocol_version v, ack_view& out) {
    out = ack_view{};
    if (!is_ack(t)) return error::malformed;
    if (t == packet_type::pubrel ? !qos1_flags_ok(flags, v) : flags != 0) return error::bad_flags;
    reader r(body);
    if (!r.u16(out.packet_id)) return error::malformed;
    if (out.packet_id == 0) return error::zero_packet_id;
    if (v != protocol_version::v5) {
        if (!r.empty()) return error::malformed;
    } else if (!r.empty()) {
        // v5: reason code and property length may each be omitted when the remaining length stops before them.
        r.u8(out.reason_code);
        if (!valid_reason_code(t, out.reason_code)) return error::malformed;
        if (!r.empty()) {
            if (error e = read_properties(r, t, false, out.properties, nullptr); e != error::none) return e;
            if (!r.empty()) return error::malformed;
        }
    }
    return error::none;
}

error decode_subscribe(std::span<const uint8_t> body, uint8_t flags, protocol_version v, subscribe_view& out,
                       properties* parsed) {
    out.packet_id = 0;
    out.entries.clear();
    out.properties = {};
    if (!qos1_flags_ok(flags, v)) return error::bad_flags;
    reader r(body);
    if (!r.u16(out.packet_id)) return error::malformed;
    if (out.packet_id == 0) return error::zero_packet_id;
    const bool v5 = v == protocol_version::v5;
    if (v5) {
        if (error e = read_properties(r, packet_type::subscribe, false, out.properties, parsed); e != error::none)
            return e;
    }
    if (r.empty()) return error::empty_subscribe;
    while (!r.empty()) {
        subscription s;
        // A filter that is valid UTF-8 but not a valid filter is kept: the broker refuses just that entry.
        if (error e = read_utf8(r, s.filter); e != error::none) return e;
        if (!r.u8(s.options)) return error::malformed;
        if (v5) {
            if (s.options & 0xC0) return error::malformed;               // MQTT-3.8.3-5
            if (((s.options >> 4) & 0x03) == 3) return error::malformed; // retain handling 3 is reserved
        } else if (s.options & 0xFC) {
            return error::malformed; // MQTT-3.8.3-4
        }
        if ((s.options & 0x03) == 3) return error::bad_qos;
        out.entries.push_back(s);
    }
    return error::none;
}

error decode_unsubscribe(std::span<const uint8_t> body, uint8_t flags, protocol_version v, unsubscribe_view& out) {
    out.packet_id = 0;
    out.filters.clear();
    out.properties = {};
    if (!qos1_flags_ok(flags, v)) return error::bad_flags;
    reader r(body);
    if (!r.u16(out.packet_id)) return error::malformed;
    if (out.packet_id == 0) return error::zero_packet_id;
    if (v == protocol_version::v5) {
        if (error e = read_properties(r, packet_type::unsubscribe, false, out.properties, nullptr); e != error::none)
            return e;
    }
    if (r.empty()) return error::empty_subscribe;
    while (!r.empty()) {
        std::string_view f;
        if (error e = read_utf8(r, f); e != error::none) return e;
        out.filters.push_back(f);
    }
    return error::none;
}

error decode_connack(std::span<const uint8_t> body, uint8_t flags, protocol_version v, connack_view& out) {
    out = connack_view{};
    if (flags != 0) return error::bad_flags;
    reader r(body);
    uint8_t ack_flags;
    if (!r.u8(ack_flags) || !r.u8(out.code)) return error::malformed;
    if (v == protocol_version::v31) {
        // 3.1 has no session present flag; the byte is reserved and unused.
        if (out.code > 5 || !r.empty()) return error::malformed;
        return error::none;
    }
    if (ack_flags & 0xFE) return error::malformed; // MQTT-3.2.2-1 reserved bits
    out.session_present = ack_flags & 0x01;
    if (v == protocol_version::v311) {
        if (out.code > 5 || !r.empty()) return error::malformed;
    } else {
        if (!valid_reason_code(packet_type::connack, out.code)) return error::malformed;
        if (error e = read_properties(r, packet_type::connack, false, out.properties, nullptr); e != error::none)
            return e;
        if (!r.empty()) return error::malformed;
    }
    if (out.session_present && out.code != 0) return error::malformed; // MQTT-3.2.2-4 / 3.2.2-6
    return error::none;
}

namespace {

error decode_ack_list(packet_type t, std::span<const uint8_t> body, uint8_t flags, protocol_version v,
                      suback_view& out) {
    out.packet_id = 0;
    out.codes.clear();
    out.properties = {};
    if (flags != 0) return error::bad_flags;
    reader r(body);
    if (!r.u16(out.packet_id)) return error::malformed;
    if (out.packet_id == 0) return error::zero_packet_id;
    const bool v5 = v == protocol_version::v5;
    if (t == packet_type::unsuback && !v5) return r.empty() ? error::none : error::malformed;
    if (v5) {
        if (error e = read_properties(r, t, false, out.properties, nullptr); e != error::none) return e;
    }
    if (r.empty()) return error::malformed;
    std::span<const uint8_t> codes = r.rest();
    for (uint8_t c : codes) {
        bool ok = v5 ? valid_reason_code(t, c) : (c <= 2 || c == 0x80);
        if (!ok) return error::malformed;
    }
    out.codes.assign(codes.begin(), codes.end());
    return error::none;
}

} // namespace

error decode_suback(std::span<const uint8_t> body, uint8_t flags, protocol_version v, suback_view& out) {
    return decode_ack_list(packet_type::suback, body, flags, v, out);
}

error decode_unsuback(std::span<const uint8_t> body, uint8_t flags, protocol_version v, suback_view& out) {
    return decode_ack_list(packet_type::unsuback, body, flags, v, out);
}

namespace {

// DISCONNECT and AUTH share a shape in v5: optional reason code, then optional properties.
error decode_reason_and_properties(packet_type t, std::span<const uint8_t> body, uint8_t flags, uint8_t& reason,
                                   std::span<const uint8_t>& props) {
    reason = 0;
    props = {};
    if (flags != 0) return error::bad_flags;
    reader r(body);
    if (r.empty()) return error::none;
    r.u8(reason);
    if (!valid_reason_code(t, reason)) return error::malformed;
    if (r.empty()) return error::none;
    if (error e = read_properties(r, t, false, props, nullptr); e != error::none) return e;
    return r.empty() ? error::none : error::malformed;
}

} // namespace

error decode_disconnect(std::span<const uint8_t> body, uint8_t flags, protocol_version v, disconnect_view& out) {
    if (v != protocol_version::v5) {
        out = disconnect_view{};
        return decode_empty(packet_type::disconnect, body, flags);
    }
    return decode_reason_and_properties(packet_type::disconnect, body, flags, out.reason_code, out.properties);
}

error decode_auth(std::span<const uint8_t> body, uint8_t flags, protocol_version v, auth_view& out) {
    out = auth_view{};
    if (v != protocol_version::v5) return error::malformed; // AUTH is a reserved type before v5
    return decode_reason_and_properties(packet_type::auth, body, flags, out.reason_code, out.properties);
}

error decode_empty(packet_type t, std::span<const uint8_t> body, uint8_t flags) {
    if (t != packet_type::pingreq && t != packet_type::pingresp && t != packet_type::disconnect)
        return error::malformed;
    if (flags != 0) return error::bad_flags;
    return body.empty() ? error::none : error::malformed;
}

// ---------------------------------------------------------------------------------------------------------------
// Encoders

void detail::put_varint(std::vector<uint8_t>& out, uint32_t v) {
    uint8_t buf[4];
    size_t n = encode_varint(v, buf);
    out.insert(out.end(), buf, buf + n);
}

void detail::put_binary(std::vector<uint8_t>& out, std::span<const uint8_t> b) {
    RINGMQ_ASSERT(b.size() <= max_string_length);
    put_u16(out, static_cast<uint16_t>(b.size()));
    put_bytes(out, b);
}

void detail::put_string(std::vector<uint8_t>& out, std::string_view s) {
    RINGMQ_ASSERT(s.size() <= max_string_length);
    put_u16(out, static_cast<uint16_t>(s.size()));
    put_bytes(out, s);
}

namespace {

using detail::put_binary;
using detail::put_bytes;
using detail::put_string;
using detail::put_u16;
using detail::put_u8;
using detail::put_varint;

uint8_t first_byte(packet_type t, uint8_t flags) { return static_cast<uint8_t>(static_cast<uint8_t>(t) << 4 | flags); }

// Starts a packet: reserves its full size up front so the body appends never reallocate.
void begin(std::vector<uint8_t>& out, packet_type t, uint8_t flags, size_t remaining_length) {
    RINGMQ_ASSERT(remaining_length <= max_remaining_length);
    auto rl = static_cast<uint32_t>(remaining_length);
    out.reserve(out.size() + 1 + varint_size(rl) + rl);
    put_u8(out, first_byte(t, flags));
    put_varint(out, rl);
}

// Bytes a v5 property block takes on the wire including its length varint.
size_t props_wire_size(std::span<const uint8_t> props) {
    RINGMQ_ASSERT(props.size() <= max_remaining_length);
    return varint_size(static_cast<uint32_t>(props.size())) + props.size();
}

void put_props(std::vector<uint8_t>& out, std::span<const uint8_t> props) {
    put_varint(out, static_cast<uint32_t>(props.size()));
    put_bytes(out, props);
}

} // namespace

void encode_connect(std::vector<uint8_t>& out, const connect_view& c) {
    const bool v5 = c.version == protocol_version::v5;
    std::string_view name = c.protocol_name;
    if (name.empty()) name = c.version == protocol_version::v31 ? "MQIsdp" : "MQTT";
    size_t rl = 2 + name.size() + 1 + 1 + 2 + 2 + c.client_id.size();
    if (v5) rl += props_wire_size(c.properties);
    if (c.will_flag) {
        rl += 2 + c.will_topic.size() + 2 + c.will_payload.size();
        if (v5) rl += props_wire_size(c.will_properties);
    }
    if (c.has_username) rl += 2 + c.username.size();
    if (c.has_password) rl += 2 + c.password.size();

    uint8_t cf = static_cast<uint8_t>((c.has_username << 7) | (c.has_password << 6) | (c.will_retain << 5) |
                                      ((c.will_qos & 0x03) << 3) | (c.will_flag << 2) | (c.clean_session << 1));
    begin(out, packet_type::connect, 0, rl);
    put_string(out, name);
    put_u8(out, static_cast<uint8_t>(c.version));
    put_u8(out, cf);
    put_u16(out, c.keepalive);
    if (v5) put_props(out, c.properties);
    put_string(out, c.client_id);
    if (c.will_flag) {
        if (v5) put_props(out, c.will_properties);
        put_string(out, c.will_topic);
        put_binary(out, c.will_payload);
    }
    if (c.has_username) put_string(out, c.username);
    if (c.has_password) put_binary(out, c.password);
}

void encode_connack(std::vector<uint8_t>& out, protocol_version v, bool session_present, uint8_t code,
                    std::span<const uint8_t> props) {
    const bool v5 = v == protocol_version::v5;
    begin(out, packet_type::connack, 0, 2 + (v5 ? props_wire_size(props) : 0));
    // 3.1 has no session present flag: the byte is reserved.
    put_u8(out, v != protocol_version::v31 && session_present ? 1 : 0);
    put_u8(out, code);
    if (v5) put_props(out, props);
}

void encode_publish(std::vector<uint8_t>& out, protocol_version v, const publish_view& p) {
    const bool v5 = v == protocol_version::v5;
    size_t rl = 2 + p.topic.size() + (p.qos ? 2 : 0) + (v5 ? props_wire_size(p.properties) : 0) + p.payload.size();
    RINGMQ_ASSERT(rl <= max_remaining_length && p.topic.size() <= max_string_length);
    uint8_t prefix[max_publish_prefix];
    size_t n = encode_publish_prefix(prefix, p.qos, p.retain, p.dup, static_cast<uint32_t>(rl),
                                     static_cast<uint16_t>(p.topic.size()));
    out.reserve(out.size() + n + rl - 2);
    out.insert(out.end(), prefix, prefix + n);
    put_bytes(out, p.topic);
    if (p.qos) put_u16(out, p.packet_id);
    if (v5) put_props(out, p.properties);
    put_bytes(out, p.payload);
}

void encode_ack(std::vector<uint8_t>& out, packet_type t, protocol_version v, uint16_t packet_id, uint8_t reason_code,
                std::span<const uint8_t> props) {
    RINGMQ_ASSERT(is_ack(t));
    const uint8_t flags = t == packet_type::pubrel ? 0x2 : 0;
    size_t rl = 2;
    const bool v5 = v == protocol_version::v5;
    if (v5 && !props.empty()) {
        rl += 1 + props_wire_size(props);
    } else if (v5 && reason_code != 0) {
        rl += 1;
    }
    begin(out, t, flags, rl);
    put_u16(out, packet_id);
    if (rl > 2) put_u8(out, reason_code);
    if (rl > 3) put_props(out, props);
}

void encode_subscribe(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id,
                      std::span<const subscription> subs, std::span<const uint8_t> props) {
    const bool v5 = v == protocol_version::v5;
    size_t rl = 2 + (v5 ? props_wire_size(props) : 0);
    for (const auto& s : subs)
        rl += 2 + s.filter.size() + 1;
    begin(out, packet_type::subscribe, 0x2, rl);
    put_u16(out, packet_id);
    if (v5) put_props(out, props);
    for (const auto& s : subs) {
        put_string(out, s.filter);
        put_u8(out, s.options);
    }
}

void encode_suback(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id, std::span<const uint8_t> codes,
                   std::span<const uint8_t> props) {
    const bool v5 = v == protocol_version::v5;
    begin(out, packet_type::suback, 0, 2 + (v5 ? props_wire_size(props) : 0) + codes.size());
    put_u16(out, packet_id);
    if (v5) put_props(out, props);
    put_bytes(out, codes);
}

void encode_unsubscribe(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id,
                        std::span<const std::string_view> filters, std::span<const uint8_t> props) {
    const bool v5 = v == protocol_version::v5;
    size_t rl = 2 + (v5 ? props_wire_size(props) : 0);
    for (auto f : filters)
        rl += 2 + f.size();
    begin(out, packet_type::unsubscribe, 0x2, rl);
    put_u16(out, packet_id);
    if (v5) put_props(out, props);
    for (auto f : filters)
        put_string(out, f);
}

void encode_unsuback(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id, std::span<const uint8_t> codes,
                     std::span<const uint8_t> props) {
    if (v != protocol_version::v5) {
        begin(out, packet_type::unsuback, 0, 2);
        put_u16(out, packet_id);
        return;
    }
    begin(out, packet_type::unsuback, 0, 2 + props_wire_size(props) + codes.size());
    put_u16(out, packet_id);
    put_props(out, props);
    put_bytes(out, codes);
}

void encode_pingreq(std::vector<uint8_t>& out) { begin(out, packet_type::pingreq, 0, 0); }

void encode_pingresp(std::vector<uint8_t>& out) { begin(out, packet_type::pingresp, 0, 0); }

namespace {

void encode_reason_and_properties(std::vector<uint8_t>& out, packet_type t, uint8_t reason_code,
                                  std::span<const uint8_t> props) {
    if (props.empty()) {
        begin(out, t, 0, reason_code ? 1 : 0);
        if (reason_code) put_u8(out, reason_code);
        return;
    }
    begin(out, t, 0, 1 + props_wire_size(props));
    put_u8(out, reason_code);
    put_props(out, props);
}

} // namespace

void encode_disconnect(std::vector<uint8_t>& out, protocol_version v, uint8_t reason_code,
                       std::span<const uint8_t> props) {
    if (v != protocol_version::v5) {
        begin(out, packet_type::disconnect, 0, 0);
        return;
    }
    encode_reason_and_properties(out, packet_type::disconnect, reason_code, props);
}

void encode_auth(std::vector<uint8_t>& out, uint8_t reason_code, std::span<const uint8_t> props) {
    encode_reason_and_properties(out, packet_type::auth, reason_code, props);
}

} // namespace ringmq::mqtt
