#pragma once
// MQTT's variable byte integer (the remaining length and property lengths), header-only so that the codec and the
// session's stored frames (session::message) write it the same way without a call per message. Pure functions.
#include <cstddef>
#include <cstdint>

namespace ringmq::mqtt {

// Bytes the varint of v takes: 1..4 for what MQTT allows (up to max_remaining_length), 5 past it. The fifth size
// exists for one caller: session::message stores a QoS 0 message as a frame with a packet-id slot, which for the
// largest QoS 0 PUBLISH MQTT allows is 2 bytes past what 4 bytes can say (that frame is never sent).
inline constexpr size_t varint_size(uint32_t v) {
    return v < 128 ? 1 : v < 16'384 ? 2 : v < 2'097'152 ? 3 : v < 268'435'456 ? 4 : 5;
}

// Writes v (any uint32_t, varint_size(v) bytes) and returns the bytes written. No bound check: encoders that put
// the result on the wire go through encode_varint, which asserts MQTT's maximum.
inline size_t write_varint(uint32_t v, uint8_t* out) {
    for (size_t i = 0;; v >>= 7) {
        if (v < 128) {
            out[i] = static_cast<uint8_t>(v);
            return i + 1;
        }
        out[i++] = static_cast<uint8_t>(v | 0x80);
    }
}

} // namespace ringmq::mqtt
