#include "admin/json.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <string_view>

namespace ringmq::admin {
namespace {

std::string esc(std::string_view s) {
    std::string out;
    json_escape(out, s);
    return out;
}

// Independent of json.cpp: decodes by computing each code point and checking its range, so a bug in the table
// driven decoder of the writer cannot hide behind the same bug here.
bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        int n;
        uint32_t cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n >= s.size()) return false;
        for (int k = 1; k <= n; ++k) {
            const auto b = static_cast<unsigned char>(s[i + k]);
            if ((b & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (b & 0x3F);
        }
        const uint32_t min[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

std::string encode_utf8(uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else if (cp < 0x800) {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += static_cast<char>(0xE0 | (cp >> 12));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        s += static_cast<char>(0xF0 | (cp >> 18));
        s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

const std::string fffd = "\xEF\xBF\xBD";

// --- escaping ------------------------------------------------------------------------------------------------------

TEST(json_escape, plain_and_empty) {
    EXPECT_EQ(esc(""), "\"\"");
    EXPECT_EQ(esc("hello world/topic #+"), "\"hello world/topic #+\"") << "'/' needs no escape";
}

TEST(json_escape, quote_and_backslash) {
    // python: json.dumps('a"b\\c') == '"a\\"b\\\\c"'
    EXPECT_EQ(esc("a\"b\\c"), "\"a\\\"b\\\\c\"");
    EXPECT_EQ(esc("\\\\\"\""), "\"\\\\\\\\\\\"\\\"\"");
}

TEST(json_escape, every_control_character) {
    for (int c = 0; c < 0x20; ++c) {
        const std::string in(1, static_cast<char>(c));
        std::string want;
        switch (c) {
        case '\b':
            want = "\\b";
            break;
        case '\f':
            want = "\\f";
            break;
        case '\n':
            want = "\\n";
            break;
        case '\r':
            want = "\\r";
            break;
        case '\t':
            want = "\\t";
            break;
        default: {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            want = buf;
        }
        }
        EXPECT_EQ(esc(in), "\"" + want + "\"") << "control character " << c;
    }
    EXPECT_EQ(esc(std::string("a\0b", 3)), "\"a\\u0000b\"") << "embedded NUL is kept, escaped";
    EXPECT_EQ(esc("\x1f\x7f"), "\"\\u001f\x7f\"") << "DEL is not a JSON control character";
}

TEST(json_escape, valid_utf8_is_copied) {
    const std::string s = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xEF\xBF\xBF \xF4\x8F\xBF\xBF";
    EXPECT_EQ(esc(s), "\"" + s + "\"");
}

TEST(json_escape, invalid_utf8_becomes_replacement) {
    EXPECT_EQ(esc("\xFF"), "\"" + fffd + "\"");
    EXPECT_EQ(esc("a\x80z"), "\"a" + fffd + "z\"") << "lone continuation byte";
    EXPECT_EQ(esc("\xC0\xAF"), "\"" + fffd + fffd + "\"") << "overlong '/'";
    EXPECT_EQ(esc("\xE0\x80\xAF"), "\"" + fffd + fffd + fffd + "\"") << "overlong 3-byte";
    EXPECT_EQ(esc("\xED\xA0\x80"), "\"" + fffd + fffd + fffd + "\"") << "UTF-16 surrogate";
    EXPECT_EQ(esc("\xF4\x90\x80\x80"), "\"" + fffd + fffd + fffd + fffd + "\"") << "above U+10FFFF";
    EXPECT_EQ(esc("\xE2\x82"), "\"" + fffd + "\"") << "truncated sequence is one maximal subpart";
    EXPECT_EQ(esc("\xE2\x82x"), "\"" + fffd + "x\"");
    EXPECT_EQ(esc("\xF0\x9F\x98"), "\"" + fffd + "\"");
    EXPECT_EQ(esc("\xE2\x82\""), "\"" + fffd + "\\\"\"") << "the byte that broke the sequence is still escaped";
    EXPECT_EQ(esc("\xC3"), "\"" + fffd + "\"") << "truncated at the end of the input";
}

TEST(json_escape, every_code_point_round_trips) {
    for (uint32_t cp = 0x20; cp <= 0x10FFFF; cp += (cp < 0x3000 ? 1 : 97)) {
        if (cp == '"' || cp == '\\' || (cp >= 0xD800 && cp <= 0xDFFF)) continue;
        const std::string s = encode_utf8(cp);
        ASSERT_EQ(esc(s), "\"" + s + "\"") << "code point " << cp;
    }
}

TEST(json_escape, random_bytes_always_give_valid_utf8_and_no_raw_controls) {
    std::mt19937 rng(12345);
    for (int round = 0; round < 20000; ++round) {
        std::string s(rng() % 12, '\0');
        for (char& c : s)
            c = static_cast<char>(rng() % 256);
        const std::string out = esc(s);
        ASSERT_TRUE(valid_utf8(out)) << "round " << round;
        ASSERT_GE(out.size(), 2u);
        for (size_t i = 1; i + 1 < out.size(); ++i) {
            ASSERT_GE(static_cast<unsigned char>(out[i]), 0x20u) << "raw control character in output";
            if (out[i] == '\\') {
                ++i; // skip the escaped character
                continue;
            }
            ASSERT_NE(out[i], '"') << "unescaped quote inside the string";
        }
        if (valid_utf8(s) && s.find_first_of(std::string("\"\\\0", 3)) == std::string::npos) {
            bool has_control = false;
            for (const char c : s)
                has_control |= static_cast<unsigned char>(c) < 0x20;
            if (!has_control) {
                ASSERT_EQ(out, "\"" + s + "\"") << "valid text must pass unchanged";
            }
        }
    }
}

TEST(json_escape, appends) {
    std::string out = "x=";
    json_escape(out, "y");
    EXPECT_EQ(out, "x=\"y\"");
}

// --- writer --------------------------------------------------------------------------------------------------------

TEST(json_writer, empty_containers) {
    EXPECT_EQ(json_writer().begin_object().end_object().str(), "{}");
    EXPECT_EQ(json_writer().begin_array().end_array().str(), "[]");
    json_writer w;
    w.begin_object().key("a").begin_array().end_array().key("o").begin_object().end_object().end_object();
    EXPECT_EQ(w.str(), R"({"a":[],"o":{}})");
}

TEST(json_writer, object_members_and_commas) {
    json_writer w;
    w.begin_object().key("code").value(0).key("message").value("ok").key("flag").value(true).end_object();
    EXPECT_EQ(w.str(), R"({"code":0,"message":"ok","flag":true})");
}

TEST(json_writer, nesting) {
    // python: json.dumps({"data":[{"a":1,"b":[1,2,{}]},[],[[null]]],"meta":{"page":1}}, separators=(',',':'))
    json_writer w;
    w.begin_object().key("data").begin_array();
    w.begin_object().key("a").value(1).key("b").begin_array().value(1).value(2).begin_object().end_object();
    w.end_array().end_object();
    w.begin_array().end_array();
    w.begin_array().begin_array().null().end_array().end_array();
    w.end_array().key("meta").begin_object().key("page").value(1).end_object().end_object();
    EXPECT_EQ(w.str(), R"({"data":[{"a":1,"b":[1,2,{}]},[],[[null]]],"meta":{"page":1}})");
}

TEST(json_writer, top_level_scalars) {
    EXPECT_EQ(json_writer().value("s").str(), "\"s\"");
    EXPECT_EQ(json_writer().value(false).str(), "false");
    EXPECT_EQ(json_writer().null().str(), "null");
}

TEST(json_writer, integers_of_every_width) {
    json_writer w;
    w.begin_array()
        .value(std::numeric_limits<int>::min())
        .value(std::numeric_limits<unsigned>::max())
        .value(std::numeric_limits<long>::min())
        .value(std::numeric_limits<unsigned long>::max())
        .value(std::numeric_limits<long long>::min())
        .value(std::numeric_limits<unsigned long long>::max())
        .value(static_cast<uint16_t>(65535))
        .value(static_cast<int8_t>(-5))
        .value(0)
        .end_array();
    EXPECT_EQ(w.str(), "[-2147483648,4294967295,-9223372036854775808,18446744073709551615,"
                       "-9223372036854775808,18446744073709551615,65535,-5,0]");
}

TEST(json_writer, doubles) {
    json_writer w;
    w.begin_array().value(0.5).value(-1.25).value(3.0).value(0.1).value(1e300).value(2.5e-8).end_array();
    EXPECT_EQ(w.str(), "[0.5,-1.25,3,0.1,1e+300,2.5e-08]");
    json_writer n;
    n.begin_array()
        .value(std::nan(""))
        .value(std::numeric_limits<double>::infinity())
        .value(-std::numeric_limits<double>::infinity())
        .end_array();
    EXPECT_EQ(n.str(), "[null,null,null]") << "no JSON form for NaN/inf";
}

TEST(json_writer, strings_are_escaped_in_keys_and_values) {
    json_writer w;
    w.begin_object().key("k\"\n").value("v\\\x01").key("bad").value(std::string_view("\xFF", 1)).end_object();
    EXPECT_EQ(w.str(), "{\"k\\\"\\n\":\"v\\\\\\u0001\",\"bad\":\"" + fffd + "\"}");
}

TEST(json_writer, const_char_and_string_overloads) {
    const char* null_str = nullptr;
    std::string s = "str";
    json_writer w;
    w.begin_array().value("lit").value(s).value(null_str).value(std::string_view("sv")).end_array();
    EXPECT_EQ(w.str(), R"(["lit","str",null,"sv"])");
}

TEST(json_writer, raw_fragments_get_separators) {
    json_writer w;
    w.begin_object().key("a").raw(R"({"x":1})").key("b").raw("[1,2]").end_object();
    EXPECT_EQ(w.str(), R"({"a":{"x":1},"b":[1,2]})");
    json_writer a;
    a.begin_array().raw("1").raw("{}").value(2).end_array();
    EXPECT_EQ(a.str(), "[1,{},2]");
}

TEST(json_writer, take_moves_out_and_resets) {
    json_writer w;
    w.begin_array().value(1);
    std::string first = w.take();
    EXPECT_EQ(first, "[1");
    EXPECT_EQ(w.str(), "");
    w.begin_object().key("a").value(1).end_object();
    EXPECT_EQ(w.take(), R"({"a":1})") << "no stale comma or open container after take()";
}

TEST(json_writer, emq_style_response) {
    // The shape the handlers emit: {"code":0,"result":{"objects":[...],"meta":{...}}}
    json_writer w;
    w.begin_object().key("code").value(0).key("result").begin_object().key("objects").begin_array();
    for (int i = 0; i < 3; ++i)
        w.begin_object()
            .key("client_id")
            .value("c" + std::to_string(i))
            .key("clean_sess")
            .value(i % 2 == 0)
            .end_object();
    w.end_array();
    w.key("meta").begin_object().key("page").value(1).key("limit").value(10u).key("count").value(3ul).end_object();
    w.end_object().end_object();
    EXPECT_EQ(w.str(), R"({"code":0,"result":{"objects":[{"client_id":"c0","clean_sess":true},)"
                       R"({"client_id":"c1","clean_sess":false},{"client_id":"c2","clean_sess":true}],)"
                       R"("meta":{"page":1,"limit":10,"count":3}}})");
}

} // namespace
} // namespace ringmq::admin
