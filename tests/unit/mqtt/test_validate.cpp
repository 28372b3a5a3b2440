#include "mqtt/validate.hpp"
#include "test_util.hpp"

#include <gtest/gtest.h>

#include <string>

namespace ringmq::mqtt::test {
namespace {

std::string S(std::initializer_list<int> l) {
    std::string s;
    for (int c : l)
        s.push_back(static_cast<char>(c));
    return s;
}

TEST(valid_utf8, accepts_well_formed) {
    EXPECT_TRUE(valid_utf8(""));
    EXPECT_TRUE(valid_utf8("plain ascii topic/with/levels"));
    EXPECT_TRUE(valid_utf8("\xC2\xA9"));               // U+00A9
    EXPECT_TRUE(valid_utf8("\xE2\x82\xAC"));           // U+20AC
    EXPECT_TRUE(valid_utf8("\xED\x9F\xBF"));           // U+D7FF, just below the surrogates
    EXPECT_TRUE(valid_utf8("\xEE\x80\x80"));           // U+E000, just above
    EXPECT_TRUE(valid_utf8("\xEF\xBB\xBF"));           // BOM: allowed, not stripped (MQTT-1.5.3-3)
    EXPECT_TRUE(valid_utf8("\xF0\x9F\x98\x80"));       // U+1F600
    EXPECT_TRUE(valid_utf8("\xF4\x8F\xBF\xBF"));       // U+10FFFF
    EXPECT_TRUE(valid_utf8("\x01\x1F\x7F"));           // control characters are SHOULD NOT, not MUST NOT
    EXPECT_TRUE(valid_utf8("abcdefgh\xC3\xA9ijklmn")); // multi-byte after the 8-byte fast path
}

TEST(valid_utf8, rejects_ill_formed) {
    EXPECT_FALSE(valid_utf8(S({0xC0, 0x80})));             // overlong U+0000
    EXPECT_FALSE(valid_utf8(S({0xC1, 0xBF})));             // overlong 2-byte
    EXPECT_FALSE(valid_utf8(S({0xE0, 0x80, 0xAF})));       // overlong '/'
    EXPECT_FALSE(valid_utf8(S({0xF0, 0x80, 0x80, 0xAF}))); // overlong 4-byte
    EXPECT_FALSE(valid_utf8(S({0x80})));                   // lone continuation
    EXPECT_FALSE(valid_utf8(S({'a', 0xBF, 'b'})));         // lone continuation mid-string
    EXPECT_FALSE(valid_utf8(S({0xED, 0xA0, 0x80})));       // U+D800
    EXPECT_FALSE(valid_utf8(S({0xED, 0xBF, 0xBF})));       // U+DFFF
    EXPECT_FALSE(valid_utf8(S({'a', 0x00, 'b'})));         // U+0000
    EXPECT_FALSE(valid_utf8(S({0xE2, 0x82})));             // truncated 3-byte
    EXPECT_FALSE(valid_utf8(S({0xF0, 0x9F, 0x98})));       // truncated 4-byte
    EXPECT_FALSE(valid_utf8(S({0xC3, 'a'})));              // lead without continuation
    EXPECT_FALSE(valid_utf8(S({0xF4, 0x90, 0x80, 0x80}))); // above U+10FFFF
    EXPECT_FALSE(valid_utf8(S({0xF8, 0x88, 0x80, 0x80, 0x80})));
    EXPECT_FALSE(valid_utf8(S({0xFE})));
}

TEST(valid_utf8, nul_or_high_bit_anywhere_in_long_ascii) {
    std::string s(64, 'x');
    EXPECT_TRUE(valid_utf8(s));
    for (size_t i = 0; i < s.size(); ++i) {
        std::string t = s;
        t[i] = '\0';
        EXPECT_FALSE(valid_utf8(t)) << "NUL at " << i;
        t[i] = static_cast<char>(0x80);
        EXPECT_FALSE(valid_utf8(t)) << "continuation at " << i;
    }
}

TEST(topic_filter, valid_table) {
    for (std::string_view f : {"#", "+", "a/+/b", "/", "+/+", "a/#", "$SYS/#", "a", "a/b/c", "+/#", "/+", "a//b",
                               "sport/tennis/+", "$share/g/a/#"}) {
        EXPECT_TRUE(valid_topic_filter(f)) << f;
    }
}

TEST(topic_filter, invalid_table) {
    for (std::string_view f : {"a#", "a/#/b", "a+", "", "#/a", "+a", "a/b+", "##", "++", "a/#b", "#/"}) {
        EXPECT_FALSE(valid_topic_filter(f)) << f;
    }
    EXPECT_FALSE(valid_topic_filter(S({'a', '/', 0xC0, 0x80})));
}

TEST(topic_name, table) {
    for (std::string_view t : {"a", "/", "a/b", "$SYS/broker", "a//b", " "})
        EXPECT_TRUE(valid_topic_name(t)) << t;
    for (std::string_view t : {"", "#", "+", "a/+", "a/#", "a+b"})
        EXPECT_FALSE(valid_topic_name(t)) << t;
    EXPECT_FALSE(valid_topic_name(S({'a', 0x00})));
}

TEST(topic_levels, counts) {
    EXPECT_EQ(topic_levels("a/b"), 2u);
    EXPECT_EQ(topic_levels("a"), 1u);
    EXPECT_EQ(topic_levels("/"), 2u);
    EXPECT_EQ(topic_levels("//"), 3u);
    EXPECT_EQ(topic_levels("a/b/c/"), 4u);
    EXPECT_EQ(topic_levels(""), 1u);
}

TEST(shared_filter, detection_and_split) {
    EXPECT_TRUE(is_shared_filter("$share/group/a/b"));
    EXPECT_TRUE(is_shared_filter("$share/"));
    EXPECT_FALSE(is_shared_filter("$share"));
    EXPECT_FALSE(is_shared_filter("$SHARE/g/a"));
    EXPECT_FALSE(is_shared_filter("a/$share/g"));

    std::string_view group, filter;
    ASSERT_TRUE(parse_shared_filter("$share/group/a/+/#", group, filter));
    EXPECT_EQ(group, "group");
    EXPECT_EQ(filter, "a/+/#");
    ASSERT_TRUE(parse_shared_filter("$share/g//", group, filter));
    EXPECT_EQ(filter, "/");

    for (std::string_view bad :
         {"$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/#/a", "$share/g/a/#/b", "a/b"}) {
        EXPECT_FALSE(parse_shared_filter(bad, group, filter)) << bad;
    }
}

} // namespace
} // namespace ringmq::mqtt::test
