#include "mqtt/properties.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

namespace ringmq::mqtt::test {
namespace {

// encode_properties writes the length varint; parse_properties wants the block after it.
std::span<const uint8_t> block_of(const bytes& encoded) {
    uint32_t len = 0;
    size_t n = 0;
    EXPECT_EQ(decode_varint(encoded.data(), encoded.size(), len, n), error::none);
    EXPECT_EQ(n + len, encoded.size());
    return std::span<const uint8_t>(encoded).subspan(n);
}

TEST(properties, golden_connack_encoding) {
    properties p;
    p.maximum_qos = 1;
    p.receive_maximum = 100;
    p.assigned_client_identifier = "auto-1";
    p.user_properties.emplace_back("k", "v");
    bytes out;
    encode_properties(out, p);
    // identifier order: 0x12, 0x21, 0x24, 0x26
    EXPECT_EQ(out, B({0x15, 0x12, 0x00, 0x06, 'a',  'u',  't',  'o', '-',  '1',  0x21,
                      0x00, 0x64, 0x24, 0x01, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v'}));
    EXPECT_EQ(properties_size(p), 0x15u);
}

TEST(properties, empty_encodes_to_zero_length) {
    bytes out;
    encode_properties(out, properties{});
    EXPECT_EQ(out, B({0x00}));
    properties back;
    back.topic_alias = 3;
    ASSERT_EQ(parse_properties({}, packet_type::publish, false, back), error::none);
    EXPECT_FALSE(back.topic_alias.has_value()); // parse resets its output
}

TEST(properties, publish_round_trip_every_publish_property) {
    const bytes corr = B({0xDE, 0xAD});
    properties p;
    p.payload_format_indicator = 1;
    p.message_expiry_interval = 3600;
    p.content_type = "application/json";
    p.response_topic = "reply/here";
    p.correlation_data = std::span<const uint8_t>(corr);
    p.subscription_identifiers = {1, 268435455};
    p.topic_alias = 7;
    p.user_properties = {{"a", "1"}, {"a", "2"}};
    bytes out;
    encode_properties(out, p);

    properties q;
    ASSERT_EQ(parse_properties(block_of(out), packet_type::publish, false, q), error::none);
    EXPECT_EQ(q.payload_format_indicator, 1);
    EXPECT_EQ(q.message_expiry_interval, 3600u);
    EXPECT_EQ(q.content_type, "application/json");
    EXPECT_EQ(q.response_topic, "reply/here");
    ASSERT_TRUE(q.correlation_data.has_value());
    EXPECT_EQ(bytes(q.correlation_data->begin(), q.correlation_data->end()), corr);
    EXPECT_EQ(q.subscription_identifiers, (std::vector<uint32_t>{1, 268435455}));
    EXPECT_EQ(q.topic_alias, 7);
    ASSERT_EQ(q.user_properties.size(), 2u);
    EXPECT_EQ(q.user_properties[1].first, "a");
    EXPECT_EQ(q.user_properties[1].second, "2");
    EXPECT_FALSE(q.session_expiry_interval.has_value());
}

TEST(properties, connack_round_trip_every_connack_property) {
    const bytes auth = B({0x01});
    properties p;
    p.session_expiry_interval = 0xFFFFFFFF;
    p.assigned_client_identifier = "id";
    p.server_keep_alive = 20;
    p.authentication_method = "SCRAM";
    p.authentication_data = std::span<const uint8_t>(auth);
    p.response_information = "info";
    p.server_reference = "other:1883";
    p.reason_string = "why";
    p.receive_maximum = 10;
    p.topic_alias_maximum = 0;
    p.maximum_qos = 0;
    p.retain_available = 1;
    p.maximum_packet_size = 1024;
    p.wildcard_subscription_available = 1;
    p.subscription_identifier_available = 0;
    p.shared_subscription_available = 0;
    bytes out;
    encode_properties(out, p);
    properties q;
    ASSERT_EQ(parse_properties(block_of(out), packet_type::connack, false, q), error::none);
    EXPECT_EQ(q.session_expiry_interval, 0xFFFFFFFFu);
    EXPECT_EQ(q.assigned_client_identifier, "id");
    EXPECT_EQ(q.server_keep_alive, 20);
    EXPECT_EQ(q.authentication_method, "SCRAM");
    EXPECT_EQ(q.response_information, "info");
    EXPECT_EQ(q.server_reference, "other:1883");
    EXPECT_EQ(q.reason_string, "why");
    EXPECT_EQ(q.receive_maximum, 10);
    EXPECT_EQ(q.topic_alias_maximum, 0);
    EXPECT_EQ(q.maximum_qos, 0);
    EXPECT_EQ(q.retain_available, 1);
    EXPECT_EQ(q.maximum_packet_size, 1024u);
    EXPECT_EQ(q.wildcard_subscription_available, 1);
    EXPECT_EQ(q.subscription_identifier_available, 0);
    EXPECT_EQ(q.shared_subscription_available, 0);
}

TEST(properties, connect_and_will_sets) {
    properties p;
    p.request_problem_information = 0;
    p.request_response_information = 1;
    p.receive_maximum = 5;
    bytes out;
    encode_properties(out, p);
    properties q;
    EXPECT_EQ(parse_properties(block_of(out), packet_type::connect, false, q), error::none);
    EXPECT_EQ(q.request_response_information, 1);
    EXPECT_EQ(parse_properties(block_of(out), packet_type::connect, true, q), error::bad_property);

    properties w;
    w.will_delay_interval = 10;
    w.payload_format_indicator = 0;
    out.clear();
    encode_properties(out, w);
    EXPECT_EQ(parse_properties(block_of(out), packet_type::connect, true, q), error::none);
    EXPECT_EQ(q.will_delay_interval, 10u);
    EXPECT_EQ(parse_properties(block_of(out), packet_type::connect, false, q), error::bad_property);
}

TEST(properties, duplicates_rejected_except_repeatable) {
    properties q;
    EXPECT_EQ(parse_properties(B({0x24, 0x01, 0x24, 0x01}), packet_type::connack, false, q), error::bad_property);
    EXPECT_EQ(parse_properties(B({0x1F, 0x00, 0x00, 0x1F, 0x00, 0x00}), packet_type::puback, false, q),
              error::bad_property);
    EXPECT_EQ(parse_properties(B({0x26, 0, 1, 'k', 0, 0, 0x26, 0, 1, 'k', 0, 0}), packet_type::puback, false, q),
              error::none);
    EXPECT_EQ(q.user_properties.size(), 2u);
    EXPECT_EQ(parse_properties(B({0x0B, 0x01, 0x0B, 0x02}), packet_type::publish, false, q), error::none);
    EXPECT_EQ(parse_properties(B({0x0B, 0x01, 0x0B, 0x02}), packet_type::subscribe, false, q), error::bad_property);
}

TEST(properties, unknown_identifiers) {
    properties q;
    for (int id : {0x00, 0x04, 0x0A, 0x10, 0x14, 0x1B, 0x1D, 0x20, 0x2B, 0x7F}) {
        EXPECT_EQ(parse_properties(B({id, 0x00, 0x00, 0x00, 0x00}), packet_type::connect, false, q),
                  error::bad_property)
            << id;
    }
    // A multi-byte identifier varint decodes to an unknown id.
    EXPECT_EQ(parse_properties(B({0x81, 0x01, 0x00}), packet_type::connect, false, q), error::bad_property);
}

TEST(properties, forbidden_values) {
    properties q;
    EXPECT_EQ(parse_properties(B({0x21, 0x00, 0x00}), packet_type::connect, false, q), error::bad_property);
    EXPECT_EQ(parse_properties(B({0x27, 0, 0, 0, 0}), packet_type::connect, false, q), error::bad_property);
    EXPECT_EQ(parse_properties(B({0x17, 0x02}), packet_type::connect, false, q), error::bad_property);
    EXPECT_EQ(parse_properties(B({0x19, 0x02}), packet_type::connect, false, q), error::bad_property);
    EXPECT_EQ(parse_properties(B({0x01, 0x02}), packet_type::publish, false, q), error::bad_property);
    EXPECT_EQ(parse_properties(B({0x24, 0x02}), packet_type::connack, false, q), error::bad_property);
}

TEST(properties, truncated_values_are_malformed) {
    properties q;
    EXPECT_EQ(parse_properties(B({0x11, 0x00, 0x00}), packet_type::connect, false, q), error::malformed);
    EXPECT_EQ(parse_properties(B({0x21, 0x00}), packet_type::connect, false, q), error::malformed);
    EXPECT_EQ(parse_properties(B({0x17}), packet_type::connect, false, q), error::malformed);
    EXPECT_EQ(parse_properties(B({0x15, 0x00, 0x03, 'a'}), packet_type::connect, false, q), error::malformed);
    EXPECT_EQ(parse_properties(B({0x26, 0x00, 0x01, 'k'}), packet_type::connect, false, q), error::malformed);
    EXPECT_EQ(parse_properties(B({0x0B, 0x80}), packet_type::publish, false, q), error::malformed);
    EXPECT_EQ(parse_properties(B({0x0B, 0x80, 0x80, 0x80, 0x80, 0x01}), packet_type::publish, false, q),
              error::malformed);
}

TEST(properties, strings_must_be_utf8) {
    properties q;
    EXPECT_EQ(parse_properties(B({0x03, 0x00, 0x02, 0xC0, 0x80}), packet_type::publish, false, q), error::bad_utf8);
    EXPECT_EQ(parse_properties(B({0x26, 0x00, 0x01, 0xFF, 0x00, 0x00}), packet_type::publish, false, q),
              error::bad_utf8);
    // Binary data is not checked.
    EXPECT_EQ(parse_properties(B({0x09, 0x00, 0x02, 0xC0, 0x80}), packet_type::publish, false, q), error::none);
}

} // namespace
} // namespace ringmq::mqtt::test
