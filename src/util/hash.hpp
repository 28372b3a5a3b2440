#pragma once
// Stable hashes used to place client sessions and retained topics on shards. FNV-1a 64 is part of the
// external contract (tests and operators can compute a client id's home shard), so it must not change.
#include <cstdint>
#include <string_view>

namespace ringmq {

constexpr uint64_t fnv1a64(std::string_view s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : s) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    return h;
}

inline unsigned home_shard(std::string_view key, unsigned shards) {
    return shards <= 1 ? 0u : static_cast<unsigned>(fnv1a64(key) % shards);
}

} // namespace ringmq
