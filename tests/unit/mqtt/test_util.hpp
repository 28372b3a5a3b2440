#pragma once
// Helpers shared by the mqtt unit tests: byte literals, framing a whole packet into header + body, and readable
// gtest output for the codec's enums.
#include "mqtt/codec.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmq::mqtt {
inline void PrintTo(error e, std::ostream* os) { *os << to_string(e); }
inline void PrintTo(packet_type t, std::ostream* os) { *os << to_string(t); }
inline void PrintTo(protocol_version v, std::ostream* os) { *os << to_string(v); }
} // namespace ringmq::mqtt

namespace ringmq::mqtt::test {

using bytes = std::vector<uint8_t>;

inline bytes B(std::initializer_list<int> l) {
    bytes b;
    for (int v : l)
        b.push_back(static_cast<uint8_t>(v));
    return b;
}

// Concatenates byte vectors; lets tests write a packet as named pieces.
inline bytes cat(std::initializer_list<bytes> parts) {
    bytes out;
    for (const auto& p : parts)
        out.insert(out.end(), p.begin(), p.end());
    return out;
}

// Two-byte length prefixed string, as MQTT writes it.
inline bytes str(std::string_view s) {
    bytes b{static_cast<uint8_t>(s.size() >> 8), static_cast<uint8_t>(s.size())};
    b.insert(b.end(), s.begin(), s.end());
    return b;
}

inline std::span<const uint8_t> span_of(std::string_view s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

inline std::string as_string(std::span<const uint8_t> s) { return {s.begin(), s.end()}; }

// A whole packet split into its fixed header and body; the body views into the caller's vector.
struct framed {
    fixed_header h{};
    std::span<const uint8_t> body;
};

inline framed frame(const bytes& b) {
    framed f;
    EXPECT_EQ(parse_fixed_header(b.data(), b.size(), f.h), error::none);
    EXPECT_EQ(size_t{f.h.header_len} + f.h.remaining_length, b.size()) << "remaining length does not match";
    f.body = std::span<const uint8_t>(b).subspan(std::min<size_t>(f.h.header_len, b.size()));
    return f;
}

// Builds a packet from a first byte and a body, computing the remaining length.
inline bytes packet(uint8_t first, const bytes& body) {
    bytes out{first};
    uint8_t len[4];
    size_t n = encode_varint(static_cast<uint32_t>(body.size()), len);
    out.insert(out.end(), len, len + n);
    out.insert(out.end(), body.begin(), body.end());
    return out;
}

} // namespace ringmq::mqtt::test
