#pragma once
// MQTT 5 properties (MQTT 5.0 section 2.2.2): the identifiers, a parsed value type and the parser/encoder.
// A properties value is a plain local of whoever parses it; its string and binary members are views into the
// caller's property block, so it must not outlive that buffer.
#include "mqtt/types.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace ringmq::mqtt {

enum class property_id : uint8_t {
    payload_format_indicator = 0x01,
    message_expiry_interval = 0x02,
    content_type = 0x03,
    response_topic = 0x08,
    correlation_data = 0x09,
    subscription_identifier = 0x0B,
    session_expiry_interval = 0x11,
    assigned_client_identifier = 0x12,
    server_keep_alive = 0x13,
    authentication_method = 0x15,
    authentication_data = 0x16,
    request_problem_information = 0x17,
    will_delay_interval = 0x18,
    request_response_information = 0x19,
    response_information = 0x1A,
    server_reference = 0x1C,
    reason_string = 0x1F,
    receive_maximum = 0x21,
    topic_alias_maximum = 0x22,
    topic_alias = 0x23,
    maximum_qos = 0x24,
    retain_available = 0x25,
    user_property = 0x26,
    maximum_packet_size = 0x27,
    wildcard_subscription_available = 0x28,
    subscription_identifier_available = 0x29,
    shared_subscription_available = 0x2A,
};

// The parsed content of one property block (absent properties are nullopt / empty).
struct properties {
    std::optional<uint32_t> session_expiry_interval, message_expiry_interval, will_delay_interval, maximum_packet_size;
    std::optional<uint16_t> receive_maximum, topic_alias_maximum, topic_alias, server_keep_alive;
    std::optional<uint8_t> payload_format_indicator, request_problem_information, request_response_information,
        maximum_qos, retain_available, wildcard_subscription_available, subscription_identifier_available,
        shared_subscription_available;
    std::optional<std::string_view> content_type, response_topic, assigned_client_identifier, authentication_method,
        response_information, server_reference, reason_string;
    std::optional<std::span<const uint8_t>> correlation_data, authentication_data;
    std::vector<uint32_t> subscription_identifiers;
    std::vector<std::pair<std::string_view, std::string_view>> user_properties;
};

// Parses a property block (the bytes after the length varint) of a packet of type t, or of the CONNECT will
// properties when for_will. Resets out first. Errors:
//   malformed    truncated value or bad identifier varint
//   bad_property identifier unknown or not allowed for the packet, duplicated (only user property, and subscription
//                identifier in PUBLISH, may repeat), or a forbidden value (e.g. receive maximum 0, a 0/1 flag > 1,
//                subscription identifier 0, topic alias 0)
//   bad_utf8     a string or user property that is not valid MQTT UTF-8
//   bad_topic    a response topic containing wildcards
error parse_properties(std::span<const uint8_t> block, packet_type t, bool for_will, properties& out);

// Size of the block encode_properties writes, excluding its length varint.
size_t properties_size(const properties& p);

// Appends the length varint followed by the block, properties in identifier order.
void encode_properties(std::vector<uint8_t>& out, const properties& p);

} // namespace ringmq::mqtt
