#pragma once
// Internal to src/mqtt: a bounds-checked cursor over a caller-owned byte span, and append helpers for encoders.
// A reader is a short-lived local of one decode call; it never owns bytes. Failed reads leave the cursor unspecified
// and callers stop at the first failure.
#include "mqtt/types.hpp"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace ringmq::mqtt::detail {

class reader {
public:
    explicit reader(std::span<const uint8_t> b) : p_(b.data()), end_(b.data() + b.size()) {}

    size_t remaining() const { return static_cast<size_t>(end_ - p_); }
    bool empty() const { return p_ == end_; }
    std::span<const uint8_t> rest() const { return {p_, remaining()}; }

    bool u8(uint8_t& v) {
        if (p_ == end_) return false;
        v = *p_++;
        return true;
    }
    bool u16(uint16_t& v) {
        if (remaining() < 2) return false;
        v = static_cast<uint16_t>((p_[0] << 8) | p_[1]);
        p_ += 2;
        return true;
    }
    bool u32(uint32_t& v) {
        if (remaining() < 4) return false;
        v = (uint32_t{p_[0]} << 24) | (uint32_t{p_[1]} << 16) | (uint32_t{p_[2]} << 8) | uint32_t{p_[3]};
        p_ += 4;
        return true;
    }
    // Variable byte integer inside a body: anything wrong with it (truncated, >4 bytes, non-minimal) is malformed.
    bool varint(uint32_t& v) {
        uint32_t value = 0;
        for (int i = 0; i < 4; ++i) {
            if (p_ == end_) return false;
            uint8_t c = *p_++;
            value |= uint32_t{c & 0x7Fu} << (7 * i);
            if ((c & 0x80) == 0) {
                if (i > 0 && c == 0) return false; // non-minimal encoding (MQTT-1.5.5-1)
                v = value;
                return true;
            }
        }
        return false;
    }
    bool bytes(size_t n, std::span<const uint8_t>& out) {
        if (remaining() < n) return false;
        out = {p_, n};
        p_ += n;
        return true;
    }
    // Two-byte length prefixed binary data.
    bool binary(std::span<const uint8_t>& out) {
        uint16_t len;
        return u16(len) && bytes(len, out);
    }
    // Two-byte length prefixed string; UTF-8 validity is the caller's check.
    bool string(std::string_view& out) {
        std::span<const uint8_t> b;
        if (!binary(b)) return false;
        out = {reinterpret_cast<const char*>(b.data()), b.size()};
        return true;
    }
    // A v5 property block: length varint then that many bytes.
    bool property_block(std::span<const uint8_t>& out) {
        uint32_t len;
        return varint(len) && bytes(len, out);
    }

private:
    const uint8_t* p_;
    const uint8_t* end_;
};

inline void put_u8(std::vector<uint8_t>& out, uint8_t v) { out.push_back(v); }
inline void put_u16(std::vector<uint8_t>& out, uint16_t v) {
    out.push_back(static_cast<uint8_t>(v >> 8));
    out.push_back(static_cast<uint8_t>(v));
}
inline void put_u32(std::vector<uint8_t>& out, uint32_t v) {
    put_u16(out, static_cast<uint16_t>(v >> 16));
    put_u16(out, static_cast<uint16_t>(v));
}
inline void put_bytes(std::vector<uint8_t>& out, std::span<const uint8_t> b) {
    out.insert(out.end(), b.begin(), b.end());
}
inline void put_bytes(std::vector<uint8_t>& out, std::string_view s) { out.insert(out.end(), s.begin(), s.end()); }
void put_varint(std::vector<uint8_t>& out, uint32_t v);
// Two-byte length prefix + bytes; asserts the length fits (a caller bug, never peer input: decoded strings fit).
void put_binary(std::vector<uint8_t>& out, std::span<const uint8_t> b);
void put_string(std::vector<uint8_t>& out, std::string_view s);

} // namespace ringmq::mqtt::detail
