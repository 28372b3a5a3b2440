#pragma once
// The MQTT 3.1 / 3.1.1 / 5.0 wire codec: fixed header framing, per-packet decoders producing views into the
// caller's bytes, and encoders appending whole packets to a caller-owned vector. Pure and shard-agnostic: no state,
// no allocation except the vectors inside subscribe/unsubscribe/suback views and the output vector.
//
// Decoders take `body` = the remaining_length bytes after the fixed header and `flags` = its low nibble. They
// validate everything the spec makes the receiver check (flags, lengths, UTF-8, packet ids, v5 properties) and
// return an error value; they never assert or throw on peer input. On error the view is partially filled and only
// meaningful where documented (decode_connect's version on unsupported_protocol_version).
//
// Encoders trust their arguments: a string over 65535 bytes or a packet over 268435455 bytes is a caller bug and
// asserts. v5 property arguments are raw property blocks without their length varint (as found in the views, or
// built with encode_properties and stripped); they are ignored for v3/v4.
#include "mqtt/properties.hpp"
#include "mqtt/types.hpp"
#include "mqtt/varint.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace ringmq::mqtt {

// Parses from p[0..n). Returns need_more if the remaining-length varint is not complete yet,
// malformed_remaining_length if it runs over 4 bytes or is not minimally encoded (MQTT-1.5.5-1).
// Does not validate the packet type or the flags (decode_* do that).
error parse_fixed_header_full(const uint8_t* p, size_t n, fixed_header& out);
// Inline for a remaining length under 128 (every PUBACK, most small PUBLISHes): one byte, always minimal. Two per
// QoS 1 delivery, where the call was half the cost.
inline error parse_fixed_header(const uint8_t* p, size_t n, fixed_header& out) {
    if (n >= 2 && p[1] < 0x80) {
        out.type = static_cast<packet_type>(p[0] >> 4);
        out.flags = p[0] & 0x0F;
        out.remaining_length = p[1];
        out.header_len = 2;
        return error::none;
    }
    return parse_fixed_header_full(p, n, out);
}

// packet_too_large when the whole packet (header + body) exceeds max_packet_size; lets a reader refuse before it
// allocates a reassembly buffer.
inline error check_packet_size(const fixed_header& h, uint32_t max_packet_size) {
    return uint64_t{h.header_len} + h.remaining_length > max_packet_size ? error::packet_too_large : error::none;
}

// Variable byte integer: same rules and results as parse_fixed_header's length; len = bytes consumed.
error decode_varint(const uint8_t* p, size_t n, uint32_t& value, size_t& len);
// Writes v as on the wire (1..4 bytes, returned); asserts v <= max_remaining_length. varint_size: mqtt/varint.hpp.
size_t encode_varint(uint32_t v, uint8_t* out);

// For a buffer of whole, already framed packets: the length of the prefix made of the packets that start at an
// offset <= room, and their number in `count`. This is what sending them one at a time gives when each is allowed
// while the bytes queued before it are within a limit, so a run of frames copied at once honours the limit the
// same way. Stops early (at the last whole packet) on bytes that do not frame.
size_t frames_starting_within(std::span<const uint8_t> frames, size_t room, uint64_t& count);

// True when a v5 reason code is one the spec lists for packet type t (CONNACK, PUBACK..PUBCOMP, SUBACK, UNSUBACK,
// DISCONNECT, AUTH).
bool valid_reason_code(packet_type t, uint8_t code);

// `parsed` / `will_parsed`, when given, receive the v5 properties the decoder validated anyway, saving a re-parse.
error decode_connect(std::span<const uint8_t> body, uint8_t flags, connect_view& out, properties* parsed = nullptr,
                     properties* will_parsed = nullptr);
// topic_checked: the caller has already seen this very topic name pass the topic checks (UTF-8, no wildcard, not
// empty), so they are not repeated; the packet's other checks are.
error decode_publish(std::span<const uint8_t> body, uint8_t flags, protocol_version v, publish_view& out,
                     properties* parsed = nullptr, bool topic_checked = false);
error decode_ack_full(packet_type t, std::span<const uint8_t> body, uint8_t flags, protocol_version v, ack_view& out);
// Inline for the usual PUBACK, PUBREC or PUBCOMP, a packet id alone with flags 0 (valid in every version); the rest
// is decode_ack_full's. One in every QoS 1 delivery, where the call and the reader were 40 instructions.
inline error decode_ack(packet_type t, std::span<const uint8_t> body, uint8_t flags, protocol_version v,
                        ack_view& out) {
    if (body.size() == 2 && flags == 0 && is_ack(t) && t != packet_type::pubrel) {
        out = ack_view{static_cast<uint16_t>(body[0] << 8 | body[1]), 0, {}};
        return out.packet_id != 0 ? error::none : error::zero_packet_id;
    }
    return decode_ack_full(t, body, flags, v, out);
}
error decode_subscribe(std::span<const uint8_t> body, uint8_t flags, protocol_version v, subscribe_view& out,
                       properties* parsed = nullptr);
error decode_unsubscribe(std::span<const uint8_t> body, uint8_t flags, protocol_version v, unsubscribe_view& out);
error decode_connack(std::span<const uint8_t> body, uint8_t flags, protocol_version v, connack_view& out);
error decode_suback(std::span<const uint8_t> body, uint8_t flags, protocol_version v, suback_view& out);
error decode_unsuback(std::span<const uint8_t> body, uint8_t flags, protocol_version v,
                      suback_view& out); // codes empty for v3/v4
error decode_disconnect(std::span<const uint8_t> body, uint8_t flags, protocol_version v, disconnect_view& out);
error decode_auth(std::span<const uint8_t> body, uint8_t flags, protocol_version v, auth_view& out); // v5 only
// PINGREQ/PINGRESP (and v3/v4 DISCONNECT): flags 0, body empty.
error decode_empty(packet_type t, std::span<const uint8_t> body, uint8_t flags);

// Encoders append whole packets to out (used by the broker for control packets and by tests/tools).
// encode_connect writes the flags exactly as given (so tests can build invalid packets); an empty protocol_name
// means the standard one for the version.
void encode_connect(std::vector<uint8_t>& out, const connect_view& c);
void encode_connack(std::vector<uint8_t>& out, protocol_version v, bool session_present, uint8_t code,
                    std::span<const uint8_t> props = {});
void encode_publish(std::vector<uint8_t>& out, protocol_version v, const publish_view& p);
// PUBREL gets flags 0x2; v5 omits the reason code when it is 0 and there are no properties.
void encode_ack(std::vector<uint8_t>& out, packet_type t, protocol_version v, uint16_t packet_id,
                uint8_t reason_code = 0, std::span<const uint8_t> props = {});
void encode_subscribe(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id,
                      std::span<const subscription> subs, std::span<const uint8_t> props = {});
void encode_suback(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id, std::span<const uint8_t> codes,
                   std::span<const uint8_t> props = {});
void encode_unsubscribe(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id,
                        std::span<const std::string_view> filters, std::span<const uint8_t> props = {});
// v3/v4 UNSUBACK carries no codes; they are ignored.
void encode_unsuback(std::vector<uint8_t>& out, protocol_version v, uint16_t packet_id, std::span<const uint8_t> codes,
                     std::span<const uint8_t> props = {});
void encode_pingreq(std::vector<uint8_t>& out);
void encode_pingresp(std::vector<uint8_t>& out);
// v3/v4 DISCONNECT is always empty; v5 omits the reason code when it is 0 and there are no properties.
void encode_disconnect(std::vector<uint8_t>& out, protocol_version v, uint8_t reason_code = 0,
                       std::span<const uint8_t> props = {});
void encode_auth(std::vector<uint8_t>& out, uint8_t reason_code, std::span<const uint8_t> props = {}); // v5 only

// Bytes of a 3.1/3.1.1 PUBLISH of this topic and payload, the whole packet as mqtt.max_packet_size counts it (past
// max_remaining_length, 5 bytes for the length: more than any limit allows).
inline constexpr uint64_t publish_packet_size(size_t topic_len, uint8_t qos, size_t payload_len) {
    const uint64_t body = 2 + uint64_t{topic_len} + (qos != 0 ? 2 : 0) + payload_len;
    return 1 + body + (body > max_remaining_length ? 5 : varint_size(static_cast<uint32_t>(body)));
}

// For zero-copy fan-out: writes the PUBLISH fixed header + 2-byte topic length into out (needs <= 7 bytes) and
// returns the size. remaining_length = 2 + topic_len + (qos ? 2 : 0) + props_block_len (v5) + payload_len; caller
// supplies it.
inline constexpr size_t max_publish_prefix = 7;
// Inline (a remaining length under 128 without the varint call): every frame the broker encodes for a subscriber
// starts with it.
inline size_t encode_publish_prefix(uint8_t* out, uint8_t qos, bool retain, bool dup, uint32_t remaining_length,
                                    uint16_t topic_len) {
    out[0] = static_cast<uint8_t>(0x30 | (dup ? 0x08 : 0) | (qos & 0x03) << 1 | (retain ? 0x01 : 0));
    size_t n = 1;
    if (remaining_length < 128)
        out[n++] = static_cast<uint8_t>(remaining_length);
    else
        n += encode_varint(remaining_length, out + 1);
    out[n++] = static_cast<uint8_t>(topic_len >> 8);
    out[n++] = static_cast<uint8_t>(topic_len);
    return n;
}

} // namespace ringmq::mqtt
