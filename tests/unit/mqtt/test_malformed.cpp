// Every malformed or protocol-violating input the codec must report, one case per test.
#include "mqtt/codec.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

#include <random>

namespace ringmq::mqtt::test {
namespace {

constexpr auto v31 = protocol_version::v31;
constexpr auto v311 = protocol_version::v311;
constexpr auto v5 = protocol_version::v5;

// CONNECT body builder: name, level, flags, keepalive 60, then the given tail.
bytes connect_body(std::string_view name, uint8_t level, uint8_t cflags, const bytes& tail) {
    return cat({str(name), B({level, cflags, 0x00, 0x3C}), tail});
}

error connect_err(const bytes& body, uint8_t flags = 0) {
    connect_view c{};
    return decode_connect(body, flags, c);
}

error publish_err(uint8_t flags, const bytes& body, protocol_version v) {
    publish_view p{};
    return decode_publish(body, flags, v, p);
}

error subscribe_err(const bytes& body, protocol_version v, uint8_t flags = 0x2) {
    subscribe_view s{};
    return decode_subscribe(body, flags, v, s);
}

// ---- A topic the caller already checked -------------------------------------------------------------------------

TEST(publish_topic_checked, skips_only_the_topic_checks) {
    // The broker passes topic_checked for a topic its route cache holds as checked: the topic's own checks are not
    // repeated, everything else about the packet still is.
    publish_view p{};
    const bytes body = cat({str("a/+"), B({0x00, 0x01}), str("x")}); // p views into it
    EXPECT_EQ(decode_publish(body, 0x2, v311, p, nullptr, true), error::none);
    EXPECT_EQ(p.topic, "a/+");
    EXPECT_EQ(p.packet_id, 1);
    EXPECT_EQ(decode_publish(cat({str("a/+"), B({0x00, 0x01})}), 0x2, v311, p), error::bad_topic);
    EXPECT_EQ(decode_publish(B({0x00, 0x05, 'a'}), 0x0, v311, p, nullptr, true), error::malformed);
    EXPECT_EQ(decode_publish(cat({str("a"), B({0x00, 0x00})}), 0x2, v311, p, nullptr, true), error::zero_packet_id);
    EXPECT_EQ(decode_publish(cat({str("a")}), 0x2, v311, p, nullptr, true), error::malformed); // no packet id
    EXPECT_EQ(decode_publish(cat({str("a")}), 0x6, v311, p, nullptr, true), error::bad_qos);
}

// ---- Reserved fixed-header flags, per packet type ---------------------------------------------------------------

TEST(reserved_flags, connect) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x02, str("c")), 0x1), error::bad_flags);
}

TEST(reserved_flags, connack) {
    connack_view c{};
    EXPECT_EQ(decode_connack(B({0x00, 0x00}), 0x1, v311, c), error::bad_flags);
}

TEST(reserved_flags, publish_dup_with_qos0) {
    EXPECT_EQ(publish_err(0x08, cat({str("a")}), v311), error::bad_flags);
    EXPECT_EQ(publish_err(0x08, cat({str("a"), B({0x00})}), v5), error::bad_flags);
}

TEST(reserved_flags, puback_pubrec_pubcomp_must_be_zero) {
    for (auto t : {packet_type::puback, packet_type::pubrec, packet_type::pubcomp}) {
        for (uint8_t flags : {0x1, 0x2, 0x8}) {
            ack_view a{};
            EXPECT_EQ(decode_ack(t, B({0x00, 0x01}), flags, v311, a), error::bad_flags) << to_string(t);
        }
    }
}

TEST(reserved_flags, pubrel_must_be_two) {
    for (uint8_t flags : {0x0, 0x3, 0x6}) {
        ack_view a{};
        EXPECT_EQ(decode_ack(packet_type::pubrel, B({0x00, 0x01}), flags, v311, a), error::bad_flags);
        EXPECT_EQ(decode_ack(packet_type::pubrel, B({0x00, 0x01}), flags, v5, a), error::bad_flags);
    }
}

TEST(reserved_flags, subscribe_must_be_two) {
    const bytes body = cat({B({0x00, 0x01}), str("a"), B({0x00})});
    EXPECT_EQ(subscribe_err(body, v311, 0x0), error::bad_flags);
    EXPECT_EQ(subscribe_err(body, v311, 0x3), error::bad_flags);
    EXPECT_EQ(subscribe_err(body, v311, 0xA), error::bad_flags);
}

TEST(reserved_flags, v31_tolerates_dup_on_qos1_control_packets) {
    const bytes body = cat({B({0x00, 0x01}), str("a"), B({0x00})});
    EXPECT_EQ(subscribe_err(body, v31, 0xA), error::none);
    EXPECT_EQ(subscribe_err(body, v31, 0x0), error::bad_flags);
    ack_view a{};
    EXPECT_EQ(decode_ack(packet_type::pubrel, B({0x00, 0x01}), 0xA, v31, a), error::none);
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(cat({B({0x00, 0x01}), str("a")}), 0xA, v31, u), error::none);
}

TEST(reserved_flags, suback) {
    suback_view s{};
    EXPECT_EQ(decode_suback(B({0x00, 0x01, 0x00}), 0x2, v311, s), error::bad_flags);
}

TEST(reserved_flags, unsubscribe_must_be_two) {
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(cat({B({0x00, 0x01}), str("a")}), 0x0, v311, u), error::bad_flags);
}

TEST(reserved_flags, unsuback) {
    suback_view s{};
    EXPECT_EQ(decode_unsuback(B({0x00, 0x01}), 0x1, v311, s), error::bad_flags);
}

TEST(reserved_flags, pingreq_pingresp) {
    EXPECT_EQ(decode_empty(packet_type::pingreq, {}, 0x1), error::bad_flags);
    EXPECT_EQ(decode_empty(packet_type::pingresp, {}, 0x8), error::bad_flags);
}

TEST(reserved_flags, disconnect) {
    disconnect_view d{};
    EXPECT_EQ(decode_disconnect({}, 0x1, v311, d), error::bad_flags);
    EXPECT_EQ(decode_disconnect({}, 0x2, v5, d), error::bad_flags);
}

TEST(reserved_flags, auth) {
    auth_view a{};
    EXPECT_EQ(decode_auth({}, 0x1, v5, a), error::bad_flags);
}

// ---- QoS 3 -------------------------------------------------------------------------------------------------------

TEST(qos3, publish) {
    const bytes body = cat({str("a"), B({0x00, 0x01})});
    EXPECT_EQ(publish_err(0x06, body, v311), error::bad_qos);
    EXPECT_EQ(publish_err(0x07, body, v5), error::bad_qos);
}

TEST(qos3, will) {
    // will flag + will QoS 3
    const bytes body = connect_body("MQTT", 4, 0x1C, cat({str("c"), str("w"), str("p")}));
    EXPECT_EQ(connect_err(body), error::bad_qos);
}

TEST(qos3, subscription_v311) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01}), str("a"), B({0x03})}), v311), error::bad_qos);
}

TEST(qos3, subscription_v5) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x00}), str("a"), B({0x03})}), v5), error::bad_qos);
}

// ---- Packet id 0 -------------------------------------------------------------------------------------------------

TEST(zero_packet_id, publish_qos1_and_qos2) {
    const bytes body = cat({str("a"), B({0x00, 0x00})});
    EXPECT_EQ(publish_err(0x02, body, v311), error::zero_packet_id);
    EXPECT_EQ(publish_err(0x04, body, v311), error::zero_packet_id);
}

TEST(zero_packet_id, acks) {
    for (auto t : {packet_type::puback, packet_type::pubrec, packet_type::pubrel, packet_type::pubcomp}) {
        ack_view a{};
        uint8_t flags = t == packet_type::pubrel ? 0x2 : 0x0;
        EXPECT_EQ(decode_ack(t, B({0x00, 0x00}), flags, v311, a), error::zero_packet_id) << to_string(t);
        EXPECT_EQ(decode_ack(t, B({0x00, 0x00}), flags, v5, a), error::zero_packet_id) << to_string(t);
    }
}

TEST(zero_packet_id, subscribe) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x00}), str("a"), B({0x00})}), v311), error::zero_packet_id);
}

TEST(zero_packet_id, unsubscribe) {
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(cat({B({0x00, 0x00}), str("a")}), 0x2, v311, u), error::zero_packet_id);
}

TEST(zero_packet_id, suback_and_unsuback) {
    suback_view s{};
    EXPECT_EQ(decode_suback(B({0x00, 0x00, 0x00}), 0, v311, s), error::zero_packet_id);
    EXPECT_EQ(decode_unsuback(B({0x00, 0x00}), 0, v311, s), error::zero_packet_id);
}

// ---- Invalid UTF-8 -----------------------------------------------------------------------------------------------

struct utf8_case {
    const char* name;
    bytes seq;
};

class bad_utf8_topic : public ::testing::TestWithParam<utf8_case> {};

bytes topic_with(const bytes& seq) {
    bytes t = cat({B({'a', '/'}), seq, B({'/', 'b'})});
    return cat({B({0x00, static_cast<int>(t.size())}), t});
}

TEST_P(bad_utf8_topic, publish_topic) {
    EXPECT_EQ(publish_err(0x00, topic_with(GetParam().seq), v311), error::bad_utf8);
    EXPECT_EQ(publish_err(0x00, cat({topic_with(GetParam().seq), B({0x00})}), v5), error::bad_utf8);
}

TEST_P(bad_utf8_topic, subscribe_filter_fails_the_packet) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01}), topic_with(GetParam().seq), B({0x00})}), v311), error::bad_utf8);
}

TEST_P(bad_utf8_topic, unsubscribe_filter) {
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(cat({B({0x00, 0x01}), topic_with(GetParam().seq)}), 0x2, v311, u), error::bad_utf8);
}

TEST_P(bad_utf8_topic, connect_client_id) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x02, topic_with(GetParam().seq))), error::bad_utf8);
}

INSTANTIATE_TEST_SUITE_P(
    sequences, bad_utf8_topic,
    ::testing::Values(utf8_case{"overlong_slash", B({0xE0, 0x80, 0xAF})}, utf8_case{"overlong_nul", B({0xC0, 0x80})},
                      utf8_case{"overlong_c1", B({0xC1, 0xBF})}, utf8_case{"lone_continuation", B({0x80})},
                      utf8_case{"surrogate", B({0xED, 0xA0, 0x80})}, utf8_case{"low_surrogate", B({0xED, 0xBF, 0xBF})},
                      utf8_case{"nul", B({0x00})}, utf8_case{"truncated_3byte", B({0xE2, 0x82})},
                      utf8_case{"above_10ffff", B({0xF4, 0x90, 0x80, 0x80})},
                      utf8_case{"f5_lead", B({0xF5, 0x80, 0x80, 0x80})}, utf8_case{"ff", B({0xFF})}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(bad_utf8, connect_username) {
    // username flag + clean session
    const bytes body = connect_body("MQTT", 4, 0x82, cat({str("c"), B({0x00, 0x02, 0xC0, 0x80})}));
    EXPECT_EQ(connect_err(body), error::bad_utf8);
}

TEST(bad_utf8, connect_will_topic) {
    const bytes body = connect_body("MQTT", 4, 0x06, cat({str("c"), B({0x00, 0x01, 0x80}), str("p")}));
    EXPECT_EQ(connect_err(body), error::bad_utf8);
}

TEST(bad_utf8, v5_user_property) {
    // PUBLISH with a user property whose value holds U+0000.
    const bytes body = cat({str("t"), B({0x07, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 0x00})});
    EXPECT_EQ(publish_err(0x00, body, v5), error::bad_utf8);
}

// ---- Topics ------------------------------------------------------------------------------------------------------

TEST(bad_topic, wildcards_in_publish_topic) {
    for (std::string_view t : {"+", "#", "a/+", "a/#", "a+b", "sport/tennis#"}) {
        EXPECT_EQ(publish_err(0x00, str(t), v311), error::bad_topic) << t;
        EXPECT_EQ(publish_err(0x00, cat({str(t), B({0x00})}), v5), error::bad_topic) << t;
    }
}

TEST(bad_topic, empty_publish_topic_v3_v4) {
    EXPECT_EQ(publish_err(0x00, str(""), v311), error::bad_topic);
    EXPECT_EQ(publish_err(0x00, str(""), v31), error::bad_topic);
}

TEST(bad_topic, will_topic_wildcard_and_empty) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x06, cat({str("c"), str("a/#"), str("p")}))), error::bad_topic);
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x06, cat({str("c"), str(""), str("p")}))), error::bad_topic);
}

TEST(bad_topic, v5_response_topic_wildcard) {
    const bytes body = cat({str("t"), B({0x05, 0x08, 0x00, 0x02, 'a', '#'})});
    EXPECT_EQ(publish_err(0x00, body, v5), error::bad_topic);
}

// ---- CONNECT ------------------------------------------------------------------------------------------------------

TEST(connect, password_without_username_v311) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x42, cat({str("c"), str("pw")}))), error::bad_connect_flags);
}

TEST(connect, password_without_username_v31) {
    EXPECT_EQ(connect_err(connect_body("MQIsdp", 3, 0x42, cat({str("c"), str("pw")}))), error::bad_connect_flags);
}

TEST(connect, will_qos_without_will_flag) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x0A, str("c"))), error::bad_connect_flags); // QoS 1
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x12, str("c"))), error::bad_connect_flags); // QoS 2
}

TEST(connect, will_retain_without_will_flag) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x22, str("c"))), error::bad_connect_flags);
}

TEST(connect, reserved_flag_bit) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x03, str("c"))), error::bad_connect_flags);
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x03, cat({B({0x00}), str("c")}))), error::bad_connect_flags);
}

TEST(connect, bad_protocol_name) {
    EXPECT_EQ(connect_err(connect_body("MQTX", 4, 0x02, str("c"))), error::bad_protocol_name);
    EXPECT_EQ(connect_err(connect_body("mqtt", 4, 0x02, str("c"))), error::bad_protocol_name);
    EXPECT_EQ(connect_err(connect_body("", 4, 0x02, str("c"))), error::bad_protocol_name);
}

TEST(connect, name_and_level_mismatch_is_unsupported_version) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 3, 0x02, str("c"))), error::unsupported_protocol_version);
    EXPECT_EQ(connect_err(connect_body("MQIsdp", 4, 0x02, str("c"))), error::unsupported_protocol_version);
}

TEST(connect, level_6_is_unsupported_and_reports_v311_framing) {
    connect_view c{};
    const bytes body = connect_body("MQTT", 6, 0x02, str("c")); // outlives the view
    EXPECT_EQ(decode_connect(body, 0, c), error::unsupported_protocol_version);
    EXPECT_EQ(c.version, v311);
    EXPECT_EQ(c.protocol_name, "MQTT");
}

TEST(connect, level_checked_before_other_fields) {
    // Reserved bit, will QoS 3, bad flags and a missing payload: the level still wins so the broker can
    // answer CONNACK 0x01.
    connect_view c{};
    const bytes body = cat({str("MQTT"), B({0x06, 0x1D})});
    EXPECT_EQ(decode_connect(body, 0x0F, c), error::unsupported_protocol_version);
    EXPECT_EQ(connect_err(cat({str("MQTT"), B({0x00})})), error::unsupported_protocol_version);
    EXPECT_EQ(connect_err(cat({str("MQTT"), B({0xFF})})), error::unsupported_protocol_version);
}

TEST(connect, trailing_bytes) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x02, cat({str("c"), B({0x00})}))), error::malformed);
}

TEST(connect, truncated_client_id) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x02, B({0x00, 0x05, 'a', 'b', 'c'}))), error::malformed);
}

TEST(connect, missing_client_id) { EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x02, {})), error::malformed); }

TEST(connect, truncated_protocol_name) {
    EXPECT_EQ(connect_err(B({0x00, 0x04, 'M', 'Q'})), error::malformed);
    EXPECT_EQ(connect_err({}), error::malformed);
}

TEST(connect, missing_will_payload) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x06, cat({str("c"), str("w")}))), error::malformed);
}

TEST(connect, missing_username_v311) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x82, str("c"))), error::malformed);
}

TEST(connect, truncated_password) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0xC2, cat({str("c"), str("u"), B({0x00, 0x04, 'p'})}))),
              error::malformed);
}

TEST(connect, v31_flags_without_credentials_are_tolerated) {
    connect_view c{};
    ASSERT_EQ(decode_connect(connect_body("MQIsdp", 3, 0xC2, str("c")), 0, c), error::none);
    EXPECT_FALSE(c.has_username);
    EXPECT_FALSE(c.has_password);
}

TEST(connect, empty_client_id_is_for_the_broker_in_v311_and_v5) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 4, 0x00, str(""))), error::none);
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x00, cat({B({0x00}), str("")}))), error::none);
}

TEST(connect, v31_client_id_length) {
    connect_view c{};
    EXPECT_EQ(decode_connect(connect_body("MQIsdp", 3, 0x02, str(std::string(23, 'x'))), 0, c), error::none);
    const bytes long_id = connect_body("MQIsdp", 3, 0x02, str(std::string(24, 'x')));
    EXPECT_EQ(decode_connect(long_id, 0, c), error::client_id_rejected);
    EXPECT_EQ(c.version, v31); // the broker needs it to frame CONNACK 0x02
    EXPECT_EQ(c.client_id, std::string(24, 'x'));
    EXPECT_EQ(decode_connect(connect_body("MQIsdp", 3, 0x02, str("")), 0, c), error::client_id_rejected);
    // 3.1 counts characters: 23 two-byte ones (46 bytes) are taken, 24 are not.
    std::string e23;
    for (int i = 0; i < 23; ++i)
        e23 += "\xc3\xa9";
    EXPECT_EQ(decode_connect(connect_body("MQIsdp", 3, 0x02, str(e23)), 0, c), error::none);
    EXPECT_EQ(decode_connect(connect_body("MQIsdp", 3, 0x02, str(e23 + "x")), 0, c), error::client_id_rejected);
    // v3.1.1 has no 23-byte limit in the codec.
    EXPECT_EQ(decode_connect(connect_body("MQTT", 4, 0x02, str(std::string(100, 'x'))), 0, c), error::none);
}

TEST(connect, structural_error_wins_over_client_id_policy) {
    EXPECT_EQ(connect_err(connect_body("MQIsdp", 3, 0x02, cat({str(""), B({0x01})}))), error::malformed);
}

TEST(connect, v5_missing_property_length) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, {})), error::malformed);
}

TEST(connect, v5_property_length_past_end) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, B({0x09, 0x11, 0x00}))), error::malformed);
}

TEST(connect, v5_duplicate_property) {
    const bytes props = B({0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2});
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, cat({props, str("c")}))), error::bad_property);
}

TEST(connect, v5_unknown_property) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, cat({B({0x02, 0x7F, 0x00}), str("c")}))), error::bad_property);
}

TEST(connect, v5_property_not_allowed_in_connect) {
    // Topic Alias belongs to PUBLISH.
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, cat({B({0x03, 0x23, 0x00, 0x01}), str("c")}))),
              error::bad_property);
    // Will Delay Interval belongs to the will properties, not the CONNECT ones.
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, cat({B({0x05, 0x18, 0, 0, 0, 1}), str("c")}))),
              error::bad_property);
}

TEST(connect, v5_will_property_not_allowed) {
    // Session Expiry Interval in the will properties.
    const bytes tail = cat({B({0x00}), str("c"), B({0x05, 0x11, 0, 0, 0, 1}), str("w"), str("p")});
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x06, tail)), error::bad_property);
}

TEST(connect, v5_authentication_data_without_method) {
    EXPECT_EQ(connect_err(connect_body("MQTT", 5, 0x02, cat({B({0x04, 0x16, 0x00, 0x01, 'x'}), str("c")}))),
              error::bad_property);
}

// ---- PUBLISH ------------------------------------------------------------------------------------------------------

TEST(publish, truncated_topic) {
    EXPECT_EQ(publish_err(0x00, B({0x00, 0x05, 'a', 'b'}), v311), error::malformed);
    EXPECT_EQ(publish_err(0x00, B({0x00}), v311), error::malformed);
    EXPECT_EQ(publish_err(0x00, {}, v311), error::malformed);
}

TEST(publish, truncated_packet_id) { EXPECT_EQ(publish_err(0x02, cat({str("a"), B({0x01})}), v311), error::malformed); }

TEST(publish, v5_missing_property_length) { EXPECT_EQ(publish_err(0x00, str("a"), v5), error::malformed); }

TEST(publish, v5_duplicate_property) {
    EXPECT_EQ(publish_err(0x00, cat({str("a"), B({0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02})}), v5),
              error::bad_property);
}

TEST(publish, v5_unknown_property) {
    EXPECT_EQ(publish_err(0x00, cat({str("a"), B({0x02, 0x04, 0x00})}), v5), error::bad_property);
}

TEST(publish, v5_property_not_allowed) {
    // Session Expiry Interval belongs to CONNECT/CONNACK/DISCONNECT.
    EXPECT_EQ(publish_err(0x00, cat({str("a"), B({0x05, 0x11, 0, 0, 0, 1})}), v5), error::bad_property);
}

TEST(publish, v5_topic_alias_zero) {
    EXPECT_EQ(publish_err(0x00, cat({str("a"), B({0x03, 0x23, 0x00, 0x00})}), v5), error::bad_property);
}

// ---- Acks ---------------------------------------------------------------------------------------------------------

TEST(acks, v311_trailing_bytes) {
    ack_view a{};
    EXPECT_EQ(decode_ack(packet_type::puback, B({0x00, 0x01, 0x00}), 0, v311, a), error::malformed);
}

TEST(acks, truncated_packet_id) {
    ack_view a{};
    EXPECT_EQ(decode_ack(packet_type::puback, B({0x00}), 0, v311, a), error::malformed);
    EXPECT_EQ(decode_ack(packet_type::puback, {}, 0, v5, a), error::malformed);
}

TEST(acks, v5_invalid_reason_code) {
    ack_view a{};
    EXPECT_EQ(decode_ack(packet_type::puback, B({0x00, 0x01, 0x92}), 0, v5, a), error::malformed);
    EXPECT_EQ(decode_ack(packet_type::pubrel, B({0x00, 0x01, 0x80}), 0x2, v5, a), error::malformed);
}

TEST(acks, v5_property_block_overruns) {
    ack_view a{};
    EXPECT_EQ(decode_ack(packet_type::puback, B({0x00, 0x01, 0x00, 0x05, 0x1F}), 0, v5, a), error::malformed);
}

TEST(acks, v5_property_not_allowed) {
    ack_view a{};
    // Topic Alias in a PUBACK.
    EXPECT_EQ(decode_ack(packet_type::puback, B({0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01}), 0, v5, a),
              error::bad_property);
}

TEST(acks, wrong_packet_type_is_refused) {
    ack_view a{};
    EXPECT_EQ(decode_ack(packet_type::publish, B({0x00, 0x01}), 0, v311, a), error::malformed);
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------------------------------------------

TEST(subscribe, empty_v311) { EXPECT_EQ(subscribe_err(B({0x00, 0x01}), v311), error::empty_subscribe); }

TEST(subscribe, empty_v5) { EXPECT_EQ(subscribe_err(B({0x00, 0x01, 0x00}), v5), error::empty_subscribe); }

TEST(subscribe, truncated_filter) {
    EXPECT_EQ(subscribe_err(B({0x00, 0x01, 0x00, 0x05, 'a'}), v311), error::malformed);
}

TEST(subscribe, missing_options_byte) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01}), str("a/b")}), v311), error::malformed);
}

TEST(subscribe, truncated_packet_id) { EXPECT_EQ(subscribe_err(B({0x00}), v311), error::malformed); }

TEST(subscribe, v311_reserved_option_bits) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01}), str("a"), B({0x04})}), v311), error::malformed);
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01}), str("a"), B({0x81})}), v311), error::malformed);
}

TEST(subscribe, v5_reserved_option_bits) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x00}), str("a"), B({0x40})}), v5), error::malformed);
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x00}), str("a"), B({0x80})}), v5), error::malformed);
}

TEST(subscribe, v5_retain_handling_3) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x00}), str("a"), B({0x30})}), v5), error::malformed);
}

TEST(subscribe, v5_duplicate_subscription_identifier) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02}), str("a"), B({0x00})}), v5),
              error::bad_property);
}

TEST(subscribe, v5_subscription_identifier_zero) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x02, 0x0B, 0x00}), str("a"), B({0x00})}), v5), error::bad_property);
}

TEST(subscribe, v5_unknown_property) {
    EXPECT_EQ(subscribe_err(cat({B({0x00, 0x01, 0x02, 0x00, 0x00}), str("a"), B({0x00})}), v5), error::bad_property);
}

TEST(unsubscribe, empty) {
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(B({0x00, 0x01}), 0x2, v311, u), error::empty_subscribe);
    EXPECT_EQ(decode_unsubscribe(B({0x00, 0x01, 0x00}), 0x2, v5, u), error::empty_subscribe);
}

TEST(unsubscribe, truncated_filter) {
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(B({0x00, 0x01, 0x00, 0x03, 'a'}), 0x2, v311, u), error::malformed);
}

TEST(unsubscribe, v5_property_not_allowed) {
    unsubscribe_view u{};
    EXPECT_EQ(decode_unsubscribe(cat({B({0x00, 0x01, 0x02, 0x0B, 0x01}), str("a")}), 0x2, v5, u), error::bad_property);
}

// ---- Client-side acks, DISCONNECT, PING ----------------------------------------------------------------------------

TEST(connack, wrong_length) {
    connack_view c{};
    EXPECT_EQ(decode_connack(B({0x00}), 0, v311, c), error::malformed);
    EXPECT_EQ(decode_connack(B({0x00, 0x00, 0x00}), 0, v311, c), error::malformed);
    EXPECT_EQ(decode_connack(B({0x00, 0x00}), 0, v5, c), error::malformed); // v5 needs the property length
}

TEST(connack, reserved_ack_flags_and_codes) {
    connack_view c{};
    EXPECT_EQ(decode_connack(B({0x02, 0x00}), 0, v311, c), error::malformed);
    EXPECT_EQ(decode_connack(B({0x00, 0x06}), 0, v311, c), error::malformed);
    EXPECT_EQ(decode_connack(B({0x01, 0x05}), 0, v311, c), error::malformed); // session present with refusal
    EXPECT_EQ(decode_connack(B({0x00, 0x01, 0x00}), 0, v5, c), error::malformed);
}

TEST(suback, bad_codes_and_empty) {
    suback_view s{};
    EXPECT_EQ(decode_suback(B({0x00, 0x01}), 0, v311, s), error::malformed);
    EXPECT_EQ(decode_suback(B({0x00, 0x01, 0x03}), 0, v311, s), error::malformed);
    EXPECT_EQ(decode_suback(B({0x00, 0x01, 0x00, 0x03}), 0, v5, s), error::malformed);
}

TEST(unsuback, v311_trailing_bytes) {
    suback_view s{};
    EXPECT_EQ(decode_unsuback(B({0x00, 0x01, 0x00}), 0, v311, s), error::malformed);
}

TEST(disconnect, v311_body_must_be_empty) {
    disconnect_view d{};
    EXPECT_EQ(decode_disconnect(B({0x00}), 0, v311, d), error::malformed);
}

TEST(disconnect, v5_invalid_reason_and_overrun) {
    disconnect_view d{};
    EXPECT_EQ(decode_disconnect(B({0x01}), 0, v5, d), error::malformed);
    EXPECT_EQ(decode_disconnect(B({0x00, 0x05, 0x11}), 0, v5, d), error::malformed);
}

TEST(disconnect, v5_property_not_allowed) {
    disconnect_view d{};
    EXPECT_EQ(decode_disconnect(B({0x00, 0x02, 0x17, 0x01}), 0, v5, d), error::bad_property);
}

TEST(ping, body_must_be_empty) {
    EXPECT_EQ(decode_empty(packet_type::pingreq, B({0x00}), 0), error::malformed);
    EXPECT_EQ(decode_empty(packet_type::pingresp, B({0x00}), 0), error::malformed);
}

// ---- Robustness ----------------------------------------------------------------------------------------------------

// Every strict prefix of a valid body must fail cleanly: nothing may read past the span.
TEST(robustness, every_truncated_connect_fails) {
    properties wp;
    wp.will_delay_interval = 5;
    bytes will_block;
    encode_properties(will_block, wp);
    connect_view c{};
    c.version = v5;
    c.clean_session = true;
    c.client_id = "client";
    c.will_flag = true;
    c.will_topic = "w";
    c.will_payload = span_of("payload");
    c.will_properties = std::span<const uint8_t>(will_block).subspan(1);
    c.has_username = true;
    c.username = "u";
    c.has_password = true;
    c.password = span_of("p");
    bytes pkt;
    encode_connect(pkt, c);
    auto f = frame(pkt);
    connect_view d{};
    ASSERT_EQ(decode_connect(f.body, 0, d), error::none);
    for (size_t n = 0; n < f.body.size(); ++n) {
        bytes prefix(f.body.begin(), f.body.begin() + n); // own allocation so ASan would see an overrun
        EXPECT_NE(decode_connect(prefix, 0, d), error::none) << "prefix " << n;
    }
}

TEST(robustness, random_bodies_never_crash) {
    std::mt19937 rng(12345);
    for (int i = 0; i < 20000; ++i) {
        bytes body(rng() % 40);
        for (auto& b : body)
            b = static_cast<uint8_t>(rng());
        auto v = static_cast<protocol_version>(3 + rng() % 3);
        auto flags = static_cast<uint8_t>(rng() % 16);
        connect_view c{};
        publish_view p{};
        ack_view a{};
        subscribe_view s{};
        unsubscribe_view u{};
        connack_view ca{};
        suback_view sa{};
        disconnect_view d{};
        auth_view au{};
        properties props;
        (void)decode_connect(body, flags, c);
        (void)decode_publish(body, flags, v, p);
        (void)decode_ack(packet_type::puback, body, flags, v, a);
        (void)decode_subscribe(body, flags, v, s);
        (void)decode_unsubscribe(body, flags, v, u);
        (void)decode_connack(body, flags, v, ca);
        (void)decode_suback(body, flags, v, sa);
        (void)decode_unsuback(body, flags, v, sa);
        (void)decode_disconnect(body, flags, v, d);
        (void)decode_auth(body, flags, v, au);
        (void)parse_properties(body, static_cast<packet_type>(rng() % 16), rng() % 2, props);
        fixed_header h{};
        (void)parse_fixed_header(body.data(), body.size(), h);
    }
    SUCCEED();
}

} // namespace
} // namespace ringmq::mqtt::test
