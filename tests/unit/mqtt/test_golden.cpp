// Golden bytes per packet type and version: hand-written from the specs, decoded field by field, and re-encoded
// to the same bytes.
#include "mqtt/codec.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

namespace ringmq::mqtt::test {
namespace {

constexpr auto v31 = protocol_version::v31;
constexpr auto v311 = protocol_version::v311;
constexpr auto v5 = protocol_version::v5;

// ---- CONNECT ---------------------------------------------------------------------------------------------------

// MQTT 3.1.1 section 3.1.2.10 example variable header (level 4, flags 0xCE, keepalive 10), with a payload.
const bytes connect_v311 = B({0x10, 0x25,                                             // CONNECT, remaining 37
                              0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0xCE, 0x00, 0x0A, // name, level, flags, ka
                              0x00, 0x03, 'c', 'i', 'd',                              // client id
                              0x00, 0x03, 'w', '/', 't',                              // will topic
                              0x00, 0x03, 'b', 'y', 'e',                              // will payload
                              0x00, 0x04, 'u', 's', 'e', 'r',                         // username
                              0x00, 0x04, 'p', 'a', 's', 's'});                       // password

TEST(golden_connect, v311_spec_example_decodes) {
    auto f = frame(connect_v311);
    EXPECT_EQ(f.h.type, packet_type::connect);
    connect_view c{};
    ASSERT_EQ(decode_connect(f.body, f.h.flags, c), error::none);
    EXPECT_EQ(c.version, v311);
    EXPECT_EQ(c.protocol_name, "MQTT");
    EXPECT_TRUE(c.clean_session);
    EXPECT_EQ(c.keepalive, 10);
    EXPECT_EQ(c.client_id, "cid");
    EXPECT_TRUE(c.will_flag);
    EXPECT_EQ(c.will_qos, 1);
    EXPECT_FALSE(c.will_retain);
    EXPECT_EQ(c.will_topic, "w/t");
    EXPECT_EQ(as_string(c.will_payload), "bye");
    EXPECT_TRUE(c.has_username);
    EXPECT_EQ(c.username, "user");
    EXPECT_TRUE(c.has_password);
    EXPECT_EQ(as_string(c.password), "pass");
    EXPECT_TRUE(c.properties.empty());
    EXPECT_TRUE(c.will_properties.empty());
    // Views point into the caller's buffer, not copies.
    EXPECT_EQ(reinterpret_cast<const uint8_t*>(c.client_id.data()), connect_v311.data() + 14);
}

TEST(golden_connect, v311_spec_example_encodes) {
    connect_view c{};
    c.version = v311;
    c.clean_session = true;
    c.keepalive = 10;
    c.client_id = "cid";
    c.will_flag = true;
    c.will_qos = 1;
    c.will_topic = "w/t";
    c.will_payload = span_of("bye");
    c.has_username = true;
    c.username = "user";
    c.has_password = true;
    c.password = span_of("pass");
    bytes out;
    encode_connect(out, c);
    EXPECT_EQ(out, connect_v311);
}

const bytes connect_v31 =
    B({0x10, 0x12, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x04, 't', 'e', 's', 't'});

TEST(golden_connect, v31_decodes_and_encodes) {
    auto f = frame(connect_v31);
    connect_view c{};
    ASSERT_EQ(decode_connect(f.body, f.h.flags, c), error::none);
    EXPECT_EQ(c.version, v31);
    EXPECT_EQ(c.protocol_name, "MQIsdp");
    EXPECT_TRUE(c.clean_session);
    EXPECT_EQ(c.keepalive, 60);
    EXPECT_EQ(c.client_id, "test");
    EXPECT_FALSE(c.will_flag);
    EXPECT_FALSE(c.has_username);
    EXPECT_FALSE(c.has_password);

    bytes out;
    encode_connect(out, c);
    EXPECT_EQ(out, connect_v31);
}

// Level 5 with a property block holding Session Expiry Interval = 10.
const bytes connect_v5 = B({0x10, 0x14, 0x00, 0x04, 'M',  'Q',  'T',  'T',  0x05, 0x02, 0x00,
                            0x3C, 0x05, 0x11, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x02, 'c',  '5'});

TEST(golden_connect, v5_decodes_with_properties) {
    auto f = frame(connect_v5);
    connect_view c{};
    properties p;
    ASSERT_EQ(decode_connect(f.body, f.h.flags, c, &p), error::none);
    EXPECT_EQ(c.version, v5);
    EXPECT_TRUE(c.clean_session);
    EXPECT_EQ(c.keepalive, 60);
    EXPECT_EQ(c.client_id, "c5");
    EXPECT_EQ(c.properties.size(), 5u);
    EXPECT_EQ(c.properties[0], 0x11);
    ASSERT_TRUE(p.session_expiry_interval.has_value());
    EXPECT_EQ(*p.session_expiry_interval, 10u);

    bytes out;
    encode_connect(out, c);
    EXPECT_EQ(out, connect_v5);
}

TEST(golden_connect, v5_will_properties_and_password_only_round_trip) {
    properties will_props;
    will_props.will_delay_interval = 30;
    will_props.content_type = "text/plain";
    bytes will_block;
    encode_properties(will_block, will_props);
    // Strip the length varint: views carry the block only.
    std::span<const uint8_t> wb = std::span<const uint8_t>(will_block).subspan(1);

    connect_view c{};
    c.version = v5;
    c.keepalive = 0;
    c.client_id = "";
    c.will_flag = true;
    c.will_qos = 2;
    c.will_retain = true;
    c.will_topic = "last/will";
    c.will_payload = span_of("gone");
    c.will_properties = wb;
    c.has_password = true; // allowed without username in v5
    c.password = span_of("\x01\x02");
    bytes out;
    encode_connect(out, c);

    auto f = frame(out);
    connect_view d{};
    properties wp;
    ASSERT_EQ(decode_connect(f.body, f.h.flags, d, nullptr, &wp), error::none);
    EXPECT_EQ(d.version, v5);
    EXPECT_FALSE(d.clean_session);
    EXPECT_EQ(d.client_id, "");
    EXPECT_TRUE(d.will_flag);
    EXPECT_EQ(d.will_qos, 2);
    EXPECT_TRUE(d.will_retain);
    EXPECT_EQ(d.will_topic, "last/will");
    EXPECT_EQ(as_string(d.will_payload), "gone");
    EXPECT_FALSE(d.has_username);
    EXPECT_TRUE(d.has_password);
    EXPECT_EQ(as_string(d.password), "\x01\x02");
    EXPECT_EQ(bytes(d.will_properties.begin(), d.will_properties.end()), bytes(wb.begin(), wb.end()));
    EXPECT_EQ(wp.will_delay_interval, 30u);
    EXPECT_EQ(wp.content_type, "text/plain");
    EXPECT_TRUE(d.properties.empty());
}

// ---- CONNACK ---------------------------------------------------------------------------------------------------

TEST(golden_connack, encodes_each_version) {
    bytes out;
    encode_connack(out, v311, true, 0x00);
    EXPECT_EQ(out, B({0x20, 0x02, 0x01, 0x00}));
    out.clear();
    encode_connack(out, v311, false, 0x05);
    EXPECT_EQ(out, B({0x20, 0x02, 0x00, 0x05}));
    out.clear();
    encode_connack(out, v31, true, 0x02); // 3.1 has no session present bit
    EXPECT_EQ(out, B({0x20, 0x02, 0x00, 0x02}));
    out.clear();
    encode_connack(out, v5, false, 0x87);
    EXPECT_EQ(out, B({0x20, 0x03, 0x00, 0x87, 0x00}));
    out.clear();
    bytes props = B({0x24, 0x01, 0x13, 0x00, 0x1E}); // maximum QoS 1, server keep alive 30
    encode_connack(out, v5, true, 0x00, props);
    EXPECT_EQ(out, B({0x20, 0x08, 0x01, 0x00, 0x05, 0x24, 0x01, 0x13, 0x00, 0x1E}));
}

TEST(golden_connack, decodes_each_version) {
    connack_view c{};
    bytes a = B({0x20, 0x02, 0x01, 0x00});
    auto f = frame(a);
    ASSERT_EQ(decode_connack(f.body, f.h.flags, v311, c), error::none);
    EXPECT_TRUE(c.session_present);
    EXPECT_EQ(c.code, 0);

    bytes b = B({0x20, 0x02, 0x00, 0x01});
    f = frame(b);
    ASSERT_EQ(decode_connack(f.body, f.h.flags, v31, c), error::none);
    EXPECT_FALSE(c.session_present);
    EXPECT_EQ(c.code, 1);

    bytes d = B({0x20, 0x08, 0x01, 0x00, 0x05, 0x24, 0x01, 0x13, 0x00, 0x1E});
    f = frame(d);
    ASSERT_EQ(decode_connack(f.body, f.h.flags, v5, c), error::none);
    EXPECT_TRUE(c.session_present);
    EXPECT_EQ(c.code, 0);
    EXPECT_EQ(c.properties.size(), 5u);
    properties p;
    ASSERT_EQ(parse_properties(c.properties, packet_type::connack, false, p), error::none);
    EXPECT_EQ(p.maximum_qos, 1);
    EXPECT_EQ(p.server_keep_alive, 30);
}

// ---- PUBLISH ---------------------------------------------------------------------------------------------------

TEST(golden_publish, v311_qos0) {
    const bytes pkt = B({0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'});
    auto f = frame(pkt);
    EXPECT_EQ(f.h.type, packet_type::publish);
    publish_view p{};
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v311, p), error::none);
    EXPECT_EQ(p.topic, "a/b");
    EXPECT_EQ(as_string(p.payload), "hi");
    EXPECT_EQ(p.qos, 0);
    EXPECT_FALSE(p.retain);
    EXPECT_FALSE(p.dup);
    EXPECT_EQ(p.packet_id, 0);
    bytes out;
    encode_publish(out, v311, p);
    EXPECT_EQ(out, pkt);
}

TEST(golden_publish, v311_qos1_dup_retain) {
    const bytes pkt = B({0x3B, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x0A, 'h', 'i'});
    auto f = frame(pkt);
    publish_view p{};
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v311, p), error::none);
    EXPECT_EQ(p.qos, 1);
    EXPECT_TRUE(p.retain);
    EXPECT_TRUE(p.dup);
    EXPECT_EQ(p.packet_id, 10);
    EXPECT_EQ(as_string(p.payload), "hi");
    bytes out;
    encode_publish(out, v311, p);
    EXPECT_EQ(out, pkt);
}

TEST(golden_publish, packet_size_counts_what_the_encoder_writes) {
    for (const size_t payload : {0, 2, 120, 121, 122, 123, 16376, 16377, 16378, 16379}) {
        for (const uint8_t qos : {0, 1}) {
            const std::string body(payload, 'p');
            publish_view p{};
            p.topic = "a/b";
            p.qos = qos;
            p.packet_id = qos != 0 ? 7 : 0;
            p.payload = {reinterpret_cast<const uint8_t*>(body.data()), body.size()};
            bytes out;
            encode_publish(out, v311, p);
            EXPECT_EQ(publish_packet_size(3, qos, payload), out.size()) << payload << " bytes at QoS " << int{qos};
        }
    }
    // Past what a remaining length can say: more than any mqtt.max_packet_size allows (268435460).
    EXPECT_EQ(publish_packet_size(0, 0, max_remaining_length - 2), uint64_t{max_remaining_length} + 5);
    EXPECT_GT(publish_packet_size(0, 0, max_remaining_length - 1), 268435460u);
}

TEST(golden_publish, v31_qos2_empty_payload) {
    const bytes pkt = B({0x34, 0x05, 0x00, 0x01, 'x', 0x12, 0x34});
    auto f = frame(pkt);
    publish_view p{};
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v31, p), error::none);
    EXPECT_EQ(p.qos, 2);
    EXPECT_EQ(p.packet_id, 0x1234);
    EXPECT_TRUE(p.payload.empty());
    bytes out;
    encode_publish(out, v31, p);
    EXPECT_EQ(out, pkt);
}

TEST(golden_publish, v5_qos2_with_topic_alias) {
    const bytes pkt = B({0x34, 0x0C, 0x00, 0x03, 'a', '/', 'b', 0x00, 0x01, 0x03, 0x23, 0x00, 0x05, 'x'});
    auto f = frame(pkt);
    publish_view p{};
    properties props;
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v5, p, &props), error::none);
    EXPECT_EQ(p.topic, "a/b");
    EXPECT_EQ(p.qos, 2);
    EXPECT_EQ(p.packet_id, 1);
    EXPECT_EQ(bytes(p.properties.begin(), p.properties.end()), B({0x23, 0x00, 0x05}));
    EXPECT_EQ(as_string(p.payload), "x");
    EXPECT_EQ(props.topic_alias, 5);
    bytes out;
    encode_publish(out, v5, p);
    EXPECT_EQ(out, pkt);
}

TEST(golden_publish, v5_qos0_no_properties) {
    const bytes pkt = B({0x31, 0x06, 0x00, 0x01, 't', 0x00, 'o', 'k'});
    auto f = frame(pkt);
    publish_view p{};
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v5, p), error::none);
    EXPECT_TRUE(p.retain);
    EXPECT_EQ(p.topic, "t");
    EXPECT_TRUE(p.properties.empty());
    EXPECT_EQ(as_string(p.payload), "ok");
    bytes out;
    encode_publish(out, v5, p);
    EXPECT_EQ(out, pkt);
}

TEST(golden_publish, v5_empty_topic_is_left_to_the_broker) {
    const bytes pkt = B({0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01, 'z'});
    auto f = frame(pkt);
    publish_view p{};
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v5, p), error::none);
    EXPECT_TRUE(p.topic.empty());
    EXPECT_EQ(as_string(p.payload), "z");
}

TEST(golden_publish, large_payload_round_trip_uses_three_length_bytes) {
    std::string payload(20000, 'q');
    publish_view p{};
    p.topic = "big";
    p.payload = span_of(payload);
    bytes out;
    encode_publish(out, v311, p);
    ASSERT_EQ(out.size(), 1 + 3 + 2 + 3 + 20000u);
    auto f = frame(out);
    EXPECT_EQ(f.h.remaining_length, 20005u);
    publish_view d{};
    ASSERT_EQ(decode_publish(f.body, f.h.flags, v311, d), error::none);
    EXPECT_EQ(d.topic, "big");
    EXPECT_EQ(d.payload.size(), 20000u);
}

// ---- PUBACK / PUBREC / PUBREL / PUBCOMP -------------------------------------------------------------------------

struct ack_case {
    packet_type t;
    uint8_t first;
};

class golden_acks : public ::testing::TestWithParam<ack_case> {};

TEST_P(golden_acks, v311_and_v31) {
    const auto c = GetParam();
    const bytes pkt = B({c.first, 0x02, 0x00, 0x0A});
    for (auto v : {v31, v311}) {
        bytes out;
        encode_ack(out, c.t, v, 10);
        EXPECT_EQ(out, pkt);
        auto f = frame(pkt);
        EXPECT_EQ(f.h.type, c.t);
        ack_view a{};
        ASSERT_EQ(decode_ack(c.t, f.body, f.h.flags, v, a), error::none);
        EXPECT_EQ(a.packet_id, 10);
        EXPECT_EQ(a.reason_code, 0);
    }
}

TEST_P(golden_acks, v5_success_omits_reason) {
    const auto c = GetParam();
    bytes out;
    encode_ack(out, c.t, v5, 0xBEEF);
    EXPECT_EQ(out, B({c.first, 0x02, 0xBE, 0xEF}));
    auto f = frame(out);
    ack_view a{};
    ASSERT_EQ(decode_ack(c.t, f.body, f.h.flags, v5, a), error::none);
    EXPECT_EQ(a.packet_id, 0xBEEF);
    EXPECT_EQ(a.reason_code, 0);
}

TEST_P(golden_acks, v5_reason_and_reason_string) {
    const auto c = GetParam();
    // 0x92 (packet identifier not found) is valid for PUBREL/PUBCOMP, 0x80 for PUBACK/PUBREC.
    uint8_t reason = (c.t == packet_type::pubrel || c.t == packet_type::pubcomp) ? 0x92 : 0x80;
    bytes out;
    encode_ack(out, c.t, v5, 10, reason);
    EXPECT_EQ(out, B({c.first, 0x03, 0x00, 0x0A, reason}));

    out.clear();
    const bytes props = B({0x1F, 0x00, 0x01, 'x'});
    encode_ack(out, c.t, v5, 10, reason, props);
    const bytes pkt = B({c.first, 0x08, 0x00, 0x0A, reason, 0x04, 0x1F, 0x00, 0x01, 'x'});
    EXPECT_EQ(out, pkt);
    auto f = frame(pkt);
    ack_view a{};
    ASSERT_EQ(decode_ack(c.t, f.body, f.h.flags, v5, a), error::none);
    EXPECT_EQ(a.packet_id, 10);
    EXPECT_EQ(a.reason_code, reason);
    EXPECT_EQ(bytes(a.properties.begin(), a.properties.end()), props);
}

TEST_P(golden_acks, v5_reason_with_empty_property_length) {
    const auto c = GetParam();
    const bytes pkt = B({c.first, 0x04, 0x00, 0x0A, 0x00, 0x00});
    auto f = frame(pkt);
    ack_view a{};
    ASSERT_EQ(decode_ack(c.t, f.body, f.h.flags, v5, a), error::none);
    EXPECT_EQ(a.packet_id, 10);
    EXPECT_EQ(a.reason_code, 0);
    EXPECT_TRUE(a.properties.empty());
}

INSTANTIATE_TEST_SUITE_P(all, golden_acks,
                         ::testing::Values(ack_case{packet_type::puback, 0x40}, ack_case{packet_type::pubrec, 0x50},
                                           ack_case{packet_type::pubrel, 0x62}, ack_case{packet_type::pubcomp, 0x70}),
                         [](const auto& info) { return std::string(to_string(info.param.t)); });

// ---- SUBSCRIBE / SUBACK ----------------------------------------------------------------------------------------

TEST(golden_subscribe, v311_two_filters) {
    const bytes pkt = B({0x82, 0x0C, 0x00, 0x01, 0x00, 0x03, 'a', '/', 'b', 0x01, 0x00, 0x01, '#', 0x02});
    auto f = frame(pkt);
    EXPECT_EQ(f.h.type, packet_type::subscribe);
    subscribe_view s{};
    ASSERT_EQ(decode_subscribe(f.body, f.h.flags, v311, s), error::none);
    EXPECT_EQ(s.packet_id, 1);
    ASSERT_EQ(s.entries.size(), 2u);
    EXPECT_EQ(s.entries[0].filter, "a/b");
    EXPECT_EQ(s.entries[0].options, 1);
    EXPECT_EQ(s.entries[1].filter, "#");
    EXPECT_EQ(s.entries[1].options, 2);
    bytes out;
    encode_subscribe(out, v311, 1, s.entries);
    EXPECT_EQ(out, pkt);
}

TEST(golden_subscribe, v31_same_layout) {
    const bytes pkt = B({0x82, 0x06, 0x12, 0x34, 0x00, 0x01, 'x', 0x00});
    auto f = frame(pkt);
    subscribe_view s{};
    ASSERT_EQ(decode_subscribe(f.body, f.h.flags, v31, s), error::none);
    EXPECT_EQ(s.packet_id, 0x1234);
    ASSERT_EQ(s.entries.size(), 1u);
    EXPECT_EQ(s.entries[0].filter, "x");
    EXPECT_EQ(s.entries[0].options, 0);
    bytes out;
    encode_subscribe(out, v31, 0x1234, s.entries);
    EXPECT_EQ(out, pkt);
}

TEST(golden_subscribe, v5_options_and_subscription_identifier) {
    // options 0x2D: QoS 1, no local, retain as published, retain handling 2
    const bytes pkt = B({0x82, 0x0B, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x03, 'a', '/', 'b', 0x2D});
    auto f = frame(pkt);
    subscribe_view s{};
    properties p;
    ASSERT_EQ(decode_subscribe(f.body, f.h.flags, v5, s, &p), error::none);
    EXPECT_EQ(s.packet_id, 1);
    ASSERT_EQ(s.entries.size(), 1u);
    EXPECT_EQ(s.entries[0].filter, "a/b");
    EXPECT_EQ(s.entries[0].options, 0x2D);
    EXPECT_EQ(p.subscription_identifiers, std::vector<uint32_t>{5});
    bytes out;
    encode_subscribe(out, v5, 1, s.entries, s.properties);
    EXPECT_EQ(out, pkt);
}

TEST(golden_subscribe, invalid_filter_is_kept_for_the_broker) {
    const bytes pkt = B({0x82, 0x0A, 0x00, 0x07, 0x00, 0x05, 'a', '/', '#', '/', 'b', 0x00});
    auto f = frame(pkt);
    subscribe_view s{};
    ASSERT_EQ(decode_subscribe(f.body, f.h.flags, v311, s), error::none);
    ASSERT_EQ(s.entries.size(), 1u);
    EXPECT_EQ(s.entries[0].filter, "a/#/b");
}

TEST(golden_suback, each_version) {
    const bytes codes = B({0x01, 0x80});
    bytes out;
    encode_suback(out, v311, 1, codes);
    EXPECT_EQ(out, B({0x90, 0x04, 0x00, 0x01, 0x01, 0x80}));
    auto f = frame(out);
    suback_view s{};
    ASSERT_EQ(decode_suback(f.body, f.h.flags, v311, s), error::none);
    EXPECT_EQ(s.packet_id, 1);
    EXPECT_EQ(s.codes, codes);

    out.clear();
    const bytes v5codes = B({0x01, 0x8F});
    encode_suback(out, v5, 1, v5codes);
    EXPECT_EQ(out, B({0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x8F}));
    f = frame(out);
    ASSERT_EQ(decode_suback(f.body, f.h.flags, v5, s), error::none);
    EXPECT_EQ(s.codes, v5codes);
    EXPECT_TRUE(s.properties.empty());
}

// ---- UNSUBSCRIBE / UNSUBACK ------------------------------------------------------------------------------------

TEST(golden_unsubscribe, v311_and_v5) {
    const std::string_view filters[] = {"a/b"};
    bytes out;
    encode_unsubscribe(out, v311, 2, filters);
    const bytes pkt4 = B({0xA2, 0x07, 0x00, 0x02, 0x00, 0x03, 'a', '/', 'b'});
    EXPECT_EQ(out, pkt4);
    auto f = frame(pkt4);
    unsubscribe_view u{};
    ASSERT_EQ(decode_unsubscribe(f.body, f.h.flags, v311, u), error::none);
    EXPECT_EQ(u.packet_id, 2);
    ASSERT_EQ(u.filters.size(), 1u);
    EXPECT_EQ(u.filters[0], "a/b");

    out.clear();
    encode_unsubscribe(out, v5, 2, filters);
    const bytes pkt5 = B({0xA2, 0x08, 0x00, 0x02, 0x00, 0x00, 0x03, 'a', '/', 'b'});
    EXPECT_EQ(out, pkt5);
    f = frame(pkt5);
    ASSERT_EQ(decode_unsubscribe(f.body, f.h.flags, v5, u), error::none);
    EXPECT_EQ(u.packet_id, 2);
    ASSERT_EQ(u.filters.size(), 1u);
    EXPECT_EQ(u.filters[0], "a/b");
}

TEST(golden_unsuback, v311_has_no_codes) {
    bytes out;
    const bytes codes = B({0x00});
    encode_unsuback(out, v311, 2, codes);
    EXPECT_EQ(out, B({0xB0, 0x02, 0x00, 0x02}));
    auto f = frame(out);
    suback_view s{};
    ASSERT_EQ(decode_unsuback(f.body, f.h.flags, v311, s), error::none);
    EXPECT_EQ(s.packet_id, 2);
    EXPECT_TRUE(s.codes.empty());
}

TEST(golden_unsuback, v5_carries_codes) {
    bytes out;
    const bytes codes = B({0x00, 0x11});
    encode_unsuback(out, v5, 2, codes);
    EXPECT_EQ(out, B({0xB0, 0x05, 0x00, 0x02, 0x00, 0x00, 0x11}));
    auto f = frame(out);
    suback_view s{};
    ASSERT_EQ(decode_unsuback(f.body, f.h.flags, v5, s), error::none);
    EXPECT_EQ(s.packet_id, 2);
    EXPECT_EQ(s.codes, codes);
}

// ---- PINGREQ / PINGRESP / DISCONNECT / AUTH --------------------------------------------------------------------

TEST(golden_empty, ping_and_disconnect) {
    bytes out;
    encode_pingreq(out);
    EXPECT_EQ(out, B({0xC0, 0x00}));
    auto f = frame(out);
    EXPECT_EQ(f.h.type, packet_type::pingreq);
    EXPECT_EQ(decode_empty(packet_type::pingreq, f.body, f.h.flags), error::none);

    out.clear();
    encode_pingresp(out);
    EXPECT_EQ(out, B({0xD0, 0x00}));
    f = frame(out);
    EXPECT_EQ(f.h.type, packet_type::pingresp);
    EXPECT_EQ(decode_empty(packet_type::pingresp, f.body, f.h.flags), error::none);

    for (auto v : {v31, v311}) {
        out.clear();
        encode_disconnect(out, v, 0x04); // reason is a v5 concept: dropped
        EXPECT_EQ(out, B({0xE0, 0x00}));
        f = frame(out);
        disconnect_view d{};
        EXPECT_EQ(decode_disconnect(f.body, f.h.flags, v, d), error::none);
        EXPECT_EQ(d.reason_code, 0);
        EXPECT_EQ(decode_empty(packet_type::disconnect, f.body, f.h.flags), error::none);
    }
}

TEST(golden_disconnect, v5_forms) {
    bytes out;
    encode_disconnect(out, v5);
    EXPECT_EQ(out, B({0xE0, 0x00}));
    disconnect_view d{};
    auto f = frame(out);
    ASSERT_EQ(decode_disconnect(f.body, f.h.flags, v5, d), error::none);
    EXPECT_EQ(d.reason_code, 0);

    out.clear();
    encode_disconnect(out, v5, 0x04);
    EXPECT_EQ(out, B({0xE0, 0x01, 0x04}));
    f = frame(out);
    ASSERT_EQ(decode_disconnect(f.body, f.h.flags, v5, d), error::none);
    EXPECT_EQ(d.reason_code, 0x04);

    out.clear();
    const bytes props = B({0x11, 0x00, 0x00, 0x00, 0x00}); // session expiry 0
    encode_disconnect(out, v5, 0x00, props);
    const bytes pkt = B({0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00});
    EXPECT_EQ(out, pkt);
    f = frame(pkt);
    ASSERT_EQ(decode_disconnect(f.body, f.h.flags, v5, d), error::none);
    EXPECT_EQ(d.reason_code, 0);
    EXPECT_EQ(bytes(d.properties.begin(), d.properties.end()), props);
}

TEST(golden_auth, v5_continue_authentication) {
    bytes out;
    const bytes props = B({0x15, 0x00, 0x01, 'x'});
    encode_auth(out, 0x18, props);
    const bytes pkt = B({0xF0, 0x06, 0x18, 0x04, 0x15, 0x00, 0x01, 'x'});
    EXPECT_EQ(out, pkt);
    auto f = frame(pkt);
    EXPECT_EQ(f.h.type, packet_type::auth);
    auth_view a{};
    ASSERT_EQ(decode_auth(f.body, f.h.flags, v5, a), error::none);
    EXPECT_EQ(a.reason_code, 0x18);
    EXPECT_EQ(bytes(a.properties.begin(), a.properties.end()), props);
    EXPECT_EQ(decode_auth(f.body, f.h.flags, v311, a), error::malformed);
}

// ---- Encoders append -------------------------------------------------------------------------------------------

TEST(encoders, append_without_touching_existing_bytes) {
    bytes out = B({0xAA});
    encode_pingreq(out);
    encode_ack(out, packet_type::puback, v311, 1);
    EXPECT_EQ(out, B({0xAA, 0xC0, 0x00, 0x40, 0x02, 0x00, 0x01}));
}

} // namespace
} // namespace ringmq::mqtt::test
