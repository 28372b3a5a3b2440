#include "mqtt/validate.hpp"

#include <cstdint>
#include <cstring>

namespace ringmq::mqtt {

namespace {

constexpr uint64_t high_bits = 0x8080808080808080ULL;
constexpr uint64_t low_bits = 0x0101010101010101ULL;

// Topics are almost always ASCII, so check 8 bytes at a time for "all ASCII and no NUL" before the slow path.
bool ascii_without_nul(uint64_t w) { return (w & high_bits) == 0 && ((w - low_bits) & ~w & high_bits) == 0; }

bool continuation(uint8_t c) { return (c & 0xC0) == 0x80; }

} // namespace

bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        if (n - i >= 8) {
            uint64_t w;
            std::memcpy(&w, p + i, 8);
            if (ascii_without_nul(w)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c == 0) return false;
            ++i;
            continue;
        }
        // Ranges from Unicode table 3-7 (well-formed byte sequences): they exclude overlong forms, surrogates
        // (ED A0..BF) and code points above U+10FFFF by restricting the second byte.
        size_t len;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return false; // lone continuation byte, C0/C1 overlong lead, or F5..FF
        }
        if (n - i < len) return false;
        if (p[i + 1] < lo || p[i + 1] > hi) return false;
        for (size_t k = 2; k < len; ++k) {
            if (!continuation(p[i + k])) return false;
        }
        i += len;
    }
    return true;
}

bool valid_topic_name(std::string_view s) {
    if (s.empty()) return false;
    if (s.find_first_of("+#") != std::string_view::npos) return false;
    return valid_utf8(s);
}

bool valid_topic_filter(std::string_view s) {
    if (s.empty()) return false;
    size_t start = 0;
    while (true) {
        size_t slash = s.find('/', start);
        bool last = slash == std::string_view::npos;
        std::string_view level = s.substr(start, last ? std::string_view::npos : slash - start);
        if (level.find_first_of("+#") != std::string_view::npos) {
            if (level.size() != 1) return false;
            if (level[0] == '#' && !last) return false;
        }
        if (last) break;
        start = slash + 1;
    }
    return valid_utf8(s);
}

size_t topic_levels(std::string_view s) {
    size_t n = 1;
    for (char c : s)
        n += c == '/';
    return n;
}

namespace {
constexpr std::string_view share_prefix = "$share/";
}

bool is_shared_filter(std::string_view s) { return s.starts_with(share_prefix); }

bool parse_shared_filter(std::string_view s, std::string_view& group, std::string_view& filter) {
    if (!is_shared_filter(s)) return false;
    std::string_view rest = s.substr(share_prefix.size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0) return false;
    std::string_view g = rest.substr(0, slash);
    if (g.find_first_of("+#") != std::string_view::npos) return false;
    std::string_view f = rest.substr(slash + 1);
    if (!valid_topic_filter(f) || !valid_utf8(g)) return false;
    group = g;
    filter = f;
    return true;
}

} // namespace ringmq::mqtt
