#pragma once
// The route cache's slot hash (shard::route_slot): a pure function of the topic, in its own header so that its spread
// is unit-tested. Used on every shard's thread; holds no state.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace ringmq::broker {

// Route cache index: the whole topic, a word at a time (the full topic is compared anyway). Topics that share a
// long prefix and suffix (sensors/<id>/temperature) must still spread over the slots.
inline size_t route_hash(std::string_view t) {
    uint64_t h = t.size() * 0x9E3779B97F4A7C15ULL;
    size_t i = 0;
    for (; i + 8 <= t.size(); i += 8) {
        uint64_t w;
        std::memcpy(&w, t.data() + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 29;
    }
    // The last 1-7 bytes: loads that overlap what came before (or each other) rather than a byte at a time.
    uint64_t w = 0;
    const size_t rest = t.size() - i;
    if (rest != 0 && t.size() >= 8) {
        std::memcpy(&w, t.data() + t.size() - 8, 8);
    } else if (rest >= 4) {
        uint32_t a, b;
        std::memcpy(&a, t.data(), 4);
        std::memcpy(&b, t.data() + rest - 4, 4);
        w = uint64_t{a} << 32 | b;
    } else if (rest != 0) {
        w = uint64_t{static_cast<uint8_t>(t[0])} << 16 | uint64_t{static_cast<uint8_t>(t[rest / 2])} << 8 |
            static_cast<uint8_t>(t[rest - 1]);
    }
    // A multiplication carries a bit only upwards, and an overlapping load puts a topic's last bytes in the word's
    // top: the finish folds the high half down and multiplies again, so that the slot (the low bits) depends on every
    // byte. Without it, topics differing only in their last byte (sensor/1, sensor/2, ...) shared one slot.
    h = (h ^ w) * 0x94D049BB133111EBULL;
    h ^= h >> 32;
    h *= 0xBF58476D1CE4E5B9ULL;
    return static_cast<size_t>(h ^ (h >> 29));
}

} // namespace ringmq::broker
