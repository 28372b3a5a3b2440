#pragma once
// Packet-level vocabulary of the MQTT codec: packet types, protocol versions, error values and the decoded views.
// Everything here is a plain value: no shard owns it, and views never own bytes (they point into the buffer the
// caller decoded from, so they must not outlive it).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace ringmq::mqtt {

enum class packet_type : uint8_t {
    reserved = 0,
    connect = 1,
    connack,
    publish,
    puback,
    pubrec,
    pubrel,
    pubcomp,
    subscribe,
    suback,
    unsubscribe,
    unsuback,
    pingreq,
    pingresp,
    disconnect,
    auth,
};

// PUBACK, PUBREC, PUBREL or PUBCOMP: the four packets that are a packet id (and in v5 a reason and properties).
inline bool is_ack(packet_type t) { return t >= packet_type::puback && t <= packet_type::pubcomp; }

// The numeric value is the CONNECT protocol level byte.
enum class protocol_version : uint8_t { v31 = 3, v311 = 4, v5 = 5 };

const char* to_string(packet_type t);
const char* to_string(protocol_version v);

// Decode outcome. Peer input never asserts or throws: every problem in the bytes is one of these values, and the
// broker maps it to a CONNACK/DISCONNECT code (as the version allows) and closes.
enum class error : uint8_t {
    none = 0,
    need_more,                    // not an error: the fixed header is incomplete
    malformed_remaining_length,   // more than 4 length bytes, or a non-minimal encoding
    bad_flags,                    // reserved fixed-header flag bits wrong
    bad_qos,                      // QoS 3 in PUBLISH, will QoS 3, subscription QoS > 2
    malformed,                    // lengths don't add up, truncated fields, trailing bytes, bad reason code, etc.
    bad_protocol_name,            // CONNECT protocol name neither "MQTT" nor "MQIsdp"
    unsupported_protocol_version, // level not 3/4/5 or not matching the name: the broker answers CONNACK 0x01
    bad_connect_flags,            // reserved bit set, will flags inconsistent, password without username (v3/v4)
    client_id_rejected,           // v3: client id empty or longer than 23 bytes: CONNACK 0x02 (the broker decides)
    bad_utf8,                     // ill-formed UTF-8, U+0000 or surrogate code points (MQTT 1.5.3)
    bad_topic,                    // empty topic name, wildcard in a topic name, bad filter
    zero_packet_id,               // packet id 0 where one is required
    empty_subscribe,              // SUBSCRIBE/UNSUBSCRIBE without topic filters
    bad_property,                 // v5 property not allowed for the packet, duplicated, or with a forbidden value
    packet_too_large,
};

const char* to_string(error e);

// The first 2..5 bytes of every packet, as parsed by parse_fixed_header. A plain value.
struct fixed_header {
    packet_type type;
    uint8_t flags;             // low nibble of the first byte
    uint32_t remaining_length; // body size in bytes
    uint8_t header_len;        // bytes taken by the fixed header itself (2..5)
};

// A decoded CONNECT; views into the caller's body buffer. Strings have been checked for UTF-8 validity.
// properties / will_properties are v5 property blocks without their length varint (empty for v3/v4).
struct connect_view {
    protocol_version version;
    std::string_view protocol_name;
    bool clean_session; // v5: Clean Start
    uint16_t keepalive;
    std::string_view client_id;
    bool will_flag;
    uint8_t will_qos;
    bool will_retain;
    std::string_view will_topic;
    std::span<const uint8_t> will_payload;
    bool has_username;
    std::string_view username;
    bool has_password;
    std::span<const uint8_t> password;
    std::span<const uint8_t> properties;
    std::span<const uint8_t> will_properties;
};

// A decoded PUBLISH; views into the caller's body buffer. properties is the v5 block without its length varint.
struct publish_view {
    std::string_view topic;
    std::span<const uint8_t> payload;
    uint8_t qos;
    bool retain;
    bool dup;
    uint16_t packet_id; // 0 for QoS 0
    std::span<const uint8_t> properties;
};

// PUBACK/PUBREC/PUBREL/PUBCOMP; reason_code is 0 when absent (always for v3/v4). Views into the caller's buffer.
struct ack_view {
    uint16_t packet_id;
    uint8_t reason_code;
    std::span<const uint8_t> properties;
};

// One SUBSCRIBE entry; filter views into the caller's buffer. The filter is UTF-8 valid but may still be an invalid
// filter ("a/#/b"): the broker checks valid_topic_filter and answers 0x80 (v3.1.1) / 0x8F (v5) for that entry.
// options: v3/v4 = QoS; v5 = the full options byte (bits 0-1 QoS, 2 no local, 3 retain as published,
// 4-5 retain handling).
struct subscription {
    std::string_view filter;
    uint8_t options;
};

// A decoded SUBSCRIBE; entries view into the caller's buffer (the vector itself is owned by the view).
struct subscribe_view {
    uint16_t packet_id;
    std::vector<subscription> entries;
    std::span<const uint8_t> properties;
};

// A decoded UNSUBSCRIBE; filters view into the caller's buffer.
struct unsubscribe_view {
    uint16_t packet_id;
    std::vector<std::string_view> filters;
    std::span<const uint8_t> properties;
};

// A decoded CONNACK (client side: tests and tools). code is the v3/v4 return code or the v5 reason code.
struct connack_view {
    bool session_present;
    uint8_t code;
    std::span<const uint8_t> properties;
};

// A decoded SUBACK or UNSUBACK (client side). UNSUBACK codes are empty for v3/v4.
struct suback_view {
    uint16_t packet_id;
    std::vector<uint8_t> codes;
    std::span<const uint8_t> properties;
};

// A decoded DISCONNECT; reason_code 0 when absent (always for v3/v4).
struct disconnect_view {
    uint8_t reason_code;
    std::span<const uint8_t> properties;
};

// A decoded v5 AUTH; reason_code 0 when absent.
struct auth_view {
    uint8_t reason_code;
    std::span<const uint8_t> properties;
};

// Wire limits shared by the codec and its callers.
inline constexpr uint32_t max_remaining_length = 268'435'455; // largest 4-byte varint
inline constexpr size_t max_string_length = 65'535;
inline constexpr size_t max_v3_client_id_length = 23;

} // namespace ringmq::mqtt
