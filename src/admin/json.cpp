#include "admin/json.hpp"

#include <charconv>
#include <cmath>
#include <cstdint>

namespace ringmq::admin {

namespace {

constexpr std::string_view replacement = "\xEF\xBF\xBD"; // U+FFFD

bool is_plain_ascii(unsigned char c) { return c >= 0x20 && c < 0x80 && c != '"' && c != '\\'; }

// Length of the well-formed UTF-8 sequence starting at s[i] (lead byte >= 0x80), or 0 if it is ill-formed. `bad`
// is then the length of its maximal ill-formed prefix (Unicode 15, 3.9 "U+FFFD substitution of maximal subparts"),
// so a truncated multi-byte sequence becomes one U+FFFD rather than one per byte.
size_t utf8_sequence(std::string_view s, size_t i, size_t& bad) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF; // allowed range of the second byte (Table 3-7)
    if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0; // overlong
        if (c == 0xED) hi = 0x9F; // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90; // overlong
        if (c == 0xF4) hi = 0x8F; // above U+10FFFF
    } else {
        bad = 1; // continuation byte without a lead, C0/C1 overlong leads, F5..FF
        return 0;
    }
    for (size_t k = 1; k <= need; ++k) {
        if (i + k >= s.size()) {
            bad = k;
            return 0;
        }
        const auto b = static_cast<unsigned char>(s[i + k]);
        const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
        if (!ok) {
            bad = k;
            return 0;
        }
    }
    return need + 1;
}

} // namespace

void json_escape(std::string& out, std::string_view s) {
    static constexpr char hex[] = "0123456789abcdef";
    out.reserve(out.size() + s.size() + 2);
    out += '"';
    size_t i = 0;
    while (i < s.size()) {
        // Copy runs of plain ASCII in one append: almost every string the API emits is entirely such a run.
        size_t j = i;
        while (j < s.size() && is_plain_ascii(static_cast<unsigned char>(s[j])))
            ++j;
        out.append(s.data() + i, j - i);
        i = j;
        if (i == s.size()) break;
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                out += "\\u00";
                out += hex[c >> 4];
                out += hex[c & 0xF];
            }
            ++i;
            continue;
        }
        size_t bad = 0;
        const size_t len = utf8_sequence(s, i, bad);
        if (len != 0) {
            out.append(s.data() + i, len);
            i += len;
        } else {
            out += replacement;
            i += bad;
        }
    }
    out += '"';
}

void json_writer::separate() {
    if (after_key_) {
        after_key_ = false;
        return;
    }
    if (first_.empty()) return;
    if (first_.back()) {
        first_.back() = false;
    } else {
        out_ += ',';
    }
}

json_writer& json_writer::begin_object() {
    separate();
    out_ += '{';
    first_.push_back(true);
    return *this;
}

json_writer& json_writer::end_object() {
    out_ += '}';
    if (!first_.empty()) first_.pop_back();
    return *this;
}

json_writer& json_writer::begin_array() {
    separate();
    out_ += '[';
    first_.push_back(true);
    return *this;
}

json_writer& json_writer::end_array() {
    out_ += ']';
    if (!first_.empty()) first_.pop_back();
    return *this;
}

json_writer& json_writer::key(std::string_view k) {
    separate();
    json_escape(out_, k);
    out_ += ':';
    after_key_ = true;
    return *this;
}

json_writer& json_writer::value(std::string_view s) {
    separate();
    json_escape(out_, s);
    return *this;
}

json_writer& json_writer::value(const char* s) {
    if (s == nullptr) return null();
    return value(std::string_view(s));
}

json_writer& json_writer::value(bool b) {
    separate();
    out_ += b ? "true" : "false";
    return *this;
}

template <typename T> json_writer& json_writer::integer(T v) {
    separate();
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, r.ptr);
    return *this;
}

json_writer& json_writer::value(int v) { return integer(v); }
json_writer& json_writer::value(unsigned v) { return integer(v); }
json_writer& json_writer::value(long v) { return integer(v); }
json_writer& json_writer::value(unsigned long v) { return integer(v); }
json_writer& json_writer::value(long long v) { return integer(v); }
json_writer& json_writer::value(unsigned long long v) { return integer(v); }

json_writer& json_writer::value(double v) {
    if (!std::isfinite(v)) return null();
    separate();
    // Shortest form that reads back as the same double; to_chars never emits a locale decimal comma.
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out_.append(buf, r.ptr);
    return *this;
}

json_writer& json_writer::null() {
    separate();
    out_ += "null";
    return *this;
}

json_writer& json_writer::raw(std::string_view json) {
    separate();
    out_ += json;
    return *this;
}

std::string json_writer::take() {
    std::string s = std::move(out_);
    out_.clear();
    first_.clear();
    after_key_ = false;
    return s;
}

} // namespace ringmq::admin
