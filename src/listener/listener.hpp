#pragma once
// Listening sockets: one SO_REUSEPORT socket per shard on the same address, so the kernel spreads accepted
// connections over the shards. Created on the main thread before the shards start; each shard then owns its socket
// (multishot accept on its own ring) and the main thread closes them all after the shards have stopped.
#include "config/config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ringmq::listener {

struct bound {
    std::vector<int> fds; // one per shard
    uint16_t port = 0;    // the actual port (resolved when the configured one is 0)
};

// Binds `count` sockets to ep. With port 0 the first bind picks the port and the others share it. On failure
// closes what it opened and returns false with a reason naming the address.
bool bind_reuseport(const config::endpoint& ep, unsigned count, int backlog, bound& out, std::string& why);

void close_all(bound& b);

} // namespace ringmq::listener
