#include "mqtt/codec.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

namespace ringmq::mqtt::test {
namespace {

struct length_case {
    uint32_t value;
    bytes encoded;
};

class remaining_length_boundaries : public ::testing::TestWithParam<length_case> {};

TEST_P(remaining_length_boundaries, encodes_minimally) {
    const auto& c = GetParam();
    uint8_t buf[4] = {};
    size_t n = encode_varint(c.value, buf);
    EXPECT_EQ(bytes(buf, buf + n), c.encoded);
    EXPECT_EQ(varint_size(c.value), c.encoded.size());
}

TEST_P(remaining_length_boundaries, parses_in_fixed_header) {
    const auto& c = GetParam();
    bytes pkt = cat({B({0x30}), c.encoded});
    fixed_header h{};
    ASSERT_EQ(parse_fixed_header(pkt.data(), pkt.size(), h), error::none);
    EXPECT_EQ(h.type, packet_type::publish);
    EXPECT_EQ(h.flags, 0);
    EXPECT_EQ(h.remaining_length, c.value);
    EXPECT_EQ(h.header_len, 1 + c.encoded.size());
}

TEST_P(remaining_length_boundaries, every_proper_prefix_needs_more) {
    const auto& c = GetParam();
    bytes pkt = cat({B({0x30}), c.encoded});
    for (size_t n = 0; n < pkt.size(); ++n) {
        fixed_header h{};
        EXPECT_EQ(parse_fixed_header(pkt.data(), n, h), error::need_more) << "prefix " << n;
    }
}

INSTANTIATE_TEST_SUITE_P(spec_table, remaining_length_boundaries,
                         ::testing::Values(length_case{0, B({0x00})}, length_case{127, B({0x7F})},
                                           length_case{128, B({0x80, 0x01})}, length_case{16383, B({0xFF, 0x7F})},
                                           length_case{16384, B({0x80, 0x80, 0x01})},
                                           length_case{2097151, B({0xFF, 0xFF, 0x7F})},
                                           length_case{2097152, B({0x80, 0x80, 0x80, 0x01})},
                                           length_case{268435455, B({0xFF, 0xFF, 0xFF, 0x7F})}));

TEST(fixed_header, five_length_bytes_is_malformed) {
    bytes pkt = B({0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F});
    fixed_header h{};
    EXPECT_EQ(parse_fixed_header(pkt.data(), pkt.size(), h), error::malformed_remaining_length);
}

TEST(fixed_header, fourth_continuation_byte_is_malformed_before_fifth_arrives) {
    bytes pkt = B({0x30, 0x80, 0x80, 0x80, 0x80});
    fixed_header h{};
    EXPECT_EQ(parse_fixed_header(pkt.data(), pkt.size(), h), error::malformed_remaining_length);
}

TEST(fixed_header, non_minimal_length_is_malformed) {
    bytes pkt = B({0x30, 0x80, 0x00});
    fixed_header h{};
    EXPECT_EQ(parse_fixed_header(pkt.data(), pkt.size(), h), error::malformed_remaining_length);
}

TEST(fixed_header, empty_input_needs_more) {
    fixed_header h{};
    EXPECT_EQ(parse_fixed_header(nullptr, 0, h), error::need_more);
}

TEST(fixed_header, type_and_flags_split) {
    bytes pkt = B({0x62, 0x02, 0x00, 0x01});
    fixed_header h{};
    ASSERT_EQ(parse_fixed_header(pkt.data(), pkt.size(), h), error::none);
    EXPECT_EQ(h.type, packet_type::pubrel);
    EXPECT_EQ(h.flags, 0x2);
    EXPECT_EQ(h.remaining_length, 2u);
    EXPECT_EQ(h.header_len, 2);
}

TEST(fixed_header, ignores_bytes_after_the_header) {
    bytes pkt = B({0xC0, 0x00, 0xDE, 0xAD});
    fixed_header h{};
    ASSERT_EQ(parse_fixed_header(pkt.data(), pkt.size(), h), error::none);
    EXPECT_EQ(h.type, packet_type::pingreq);
    EXPECT_EQ(h.remaining_length, 0u);
}

TEST(fixed_header, packet_size_limit_counts_the_header) {
    fixed_header h{packet_type::publish, 0, 98, 2};
    EXPECT_EQ(check_packet_size(h, 100), error::none);
    EXPECT_EQ(check_packet_size(h, 99), error::packet_too_large);
    fixed_header big{packet_type::publish, 0, max_remaining_length, 5};
    EXPECT_EQ(check_packet_size(big, 0xFFFFFFFFu), error::none);
    EXPECT_EQ(check_packet_size(big, max_remaining_length), error::packet_too_large);
}

TEST(varint, decode_reports_consumed_length) {
    bytes b = B({0x80, 0x01, 0x55});
    uint32_t v = 0;
    size_t len = 0;
    ASSERT_EQ(decode_varint(b.data(), b.size(), v, len), error::none);
    EXPECT_EQ(v, 128u);
    EXPECT_EQ(len, 2u);
}

TEST(varint, round_trips_every_size_class) {
    for (uint32_t v : {0u, 1u, 127u, 128u, 300u, 16383u, 16384u, 2097151u, 2097152u, 268435455u}) {
        uint8_t buf[4];
        size_t n = encode_varint(v, buf);
        uint32_t back = 0;
        size_t len = 0;
        ASSERT_EQ(decode_varint(buf, n, back, len), error::none) << v;
        EXPECT_EQ(back, v);
        EXPECT_EQ(len, n);
    }
}

// Past MQTT's maximum only session::message's never-sent QoS 0 frame goes: 5 bytes, which decode_varint refuses
// (a 5th byte is malformed on the wire) while the sizes agree with what was written.
TEST(varint, write_varint_takes_five_bytes_past_the_maximum) {
    for (uint32_t v : {268435455u, 268435456u, 268435457u, 0xFFFFFFFFu}) {
        uint8_t buf[5] = {};
        const size_t n = write_varint(v, buf);
        EXPECT_EQ(n, varint_size(v)) << v;
        EXPECT_EQ(n, v <= max_remaining_length ? 4u : 5u) << v;
        uint32_t back = 0;
        for (size_t i = 0; i < n; ++i)
            back |= uint32_t{buf[i] & 0x7Fu} << (7 * i);
        EXPECT_EQ(back, v);
        EXPECT_EQ(buf[n - 1] & 0x80, 0);
        size_t len = 0;
        uint32_t dec = 0;
        EXPECT_EQ(decode_varint(buf, n, dec, len), n == 4 ? error::none : error::malformed_remaining_length) << v;
    }
}

TEST(encode_publish_prefix, matches_full_encoder) {
    const std::string payload(200, 'p');
    publish_view p{};
    p.topic = "sensors/t";
    p.payload = span_of(payload);
    p.qos = 1;
    p.retain = true;
    p.dup = false;
    p.packet_id = 7;
    bytes full;
    encode_publish(full, protocol_version::v311, p);

    uint8_t prefix[max_publish_prefix];
    uint32_t rl = 2 + 9 + 2 + 200;
    size_t n = encode_publish_prefix(prefix, 1, true, false, rl, 9);
    ASSERT_EQ(n, 5u); // 1 type byte, 2 length bytes (213), 2 topic length bytes
    EXPECT_EQ(bytes(prefix, prefix + n), bytes(full.begin(), full.begin() + n));
    EXPECT_EQ(bytes(prefix, prefix + n), B({0x33, 0xD5, 0x01, 0x00, 0x09}));
}

TEST(encode_publish_prefix, largest_fits_seven_bytes) {
    uint8_t prefix[max_publish_prefix];
    size_t n = encode_publish_prefix(prefix, 2, false, true, max_remaining_length, 0xFFFF);
    EXPECT_EQ(n, 7u);
    EXPECT_EQ(bytes(prefix, prefix + n), B({0x3C, 0xFF, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF}));
}

// Three QoS 0 PUBLISH frames of 10, 200 and 10 bytes (the second has a 2-byte remaining length).
bytes three_frames() {
    bytes out;
    for (size_t payload : {3u, 192u, 3u}) {
        publish_view p{};
        p.topic = "a/b";
        std::vector<uint8_t> body(payload, 0x55);
        p.payload = body;
        encode_publish(out, protocol_version::v311, p);
    }
    return out;
}

TEST(frames_starting_within, takes_the_frames_that_start_within_the_room) {
    const bytes f = three_frames();
    ASSERT_EQ(f.size(), 220u);
    uint64_t count = 99;
    // One at a time, each frame is allowed while what went before it is within the room.
    EXPECT_EQ(frames_starting_within(f, 0, count), 10u);
    EXPECT_EQ(count, 1u);
    EXPECT_EQ(frames_starting_within(f, 9, count), 10u);
    EXPECT_EQ(count, 1u);
    EXPECT_EQ(frames_starting_within(f, 10, count), 210u);
    EXPECT_EQ(count, 2u);
    EXPECT_EQ(frames_starting_within(f, 209, count), 210u);
    EXPECT_EQ(count, 2u);
    EXPECT_EQ(frames_starting_within(f, 210, count), 220u);
    EXPECT_EQ(count, 3u);
    EXPECT_EQ(frames_starting_within(f, 1u << 20, count), 220u);
    EXPECT_EQ(count, 3u);
}

TEST(frames_starting_within, stops_at_bytes_that_do_not_frame) {
    bytes f = three_frames();
    f.resize(215); // the third frame is cut short
    uint64_t count = 0;
    EXPECT_EQ(frames_starting_within(f, 1000, count), 210u);
    EXPECT_EQ(count, 2u);
    EXPECT_EQ(frames_starting_within({}, 1000, count), 0u);
    EXPECT_EQ(count, 0u);
}

TEST(to_string, names) {
    EXPECT_STREQ(to_string(packet_type::connect), "CONNECT");
    EXPECT_STREQ(to_string(packet_type::auth), "AUTH");
    EXPECT_STREQ(to_string(error::bad_utf8), "bad_utf8");
    EXPECT_STREQ(to_string(error::packet_too_large), "packet_too_large");
    EXPECT_STREQ(to_string(protocol_version::v311), "3.1.1");
}

} // namespace
} // namespace ringmq::mqtt::test
