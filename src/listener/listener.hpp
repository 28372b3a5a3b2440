#pragma once
// Listening sockets: one SO_REUSEPORT socket per shard on the same address, so the kernel spreads accepted
// connections over the shards. Created on the main thread before the shards start; each shard then owns its socket
// (multishot accept on its own ring) and the main thread closes them all after the shards have stopped.
#include "config/config.hpp"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace ringmq::listener {

struct bound {
    std::vector<int> fds; // one per shard
    uint16_t port = 0;    // the actual port (resolved when the configured one is 0)
};

// With defer_accept the kernel hands a connection over only with its first bytes (TCP_DEFER_ACCEPT, for protocols
// where the client speaks first): the shard then wakes once for the handshake and the CONNECT instead of once for
// each, and a client that connects and sends nothing costs the broker nothing until the kernel gives up waiting:
// the kernel counts the wait in SYN-ACK resends (1 s: one, after which the client's ACK hands the connection over;
// 2-3 s would be two, at about 3 s). While the listener's SYN queue is full, or with net.ipv4.tcp_syncookies = 2,
// the kernel answers with SYN cookies, which know nothing of the deferral: those connections come at the handshake.
inline constexpr int defer_accept_s = 1;

// The listening sockets' options, which the sockets they accept inherit (no system call per accept).
struct listen_options {
    int backlog = 128;
    bool defer_accept = false;
    // TCP_NOTSENT_LOWAT (0: the kernel's net.ipv4.tcp_notsent_lowat): a send to a socket holding this many bytes not
    // yet sent waits until they are half gone, rather than until a third of its buffer (up to tcp_wmem's 4 MiB) is.
    // A subscriber reading slowly is then seen taking in steps of half this size, and what waits for it waits in
    // its session's queue, under its limits, rather than in the kernel. (A small mark costs sends: a large message
    // goes in several.)
    int notsent_lowat = 0;
};

// Binds `count` sockets to ep. With port 0 the first bind picks the port and the others share it. A fixed port is
// first bound once without SO_REUSEPORT, so that an address another process listens on is refused. On failure
// closes what it opened and returns false with a reason naming the address.
bool bind_reuseport(const config::endpoint& ep, unsigned count, const listen_options& opt, bound& out,
                    std::string& why);

void close_all(bound& b);

// How an accept loop answers a failed accept; one per accepting ring (each MQTT shard's, the admin shard's), owned
// and used on that ring's thread. Out of descriptors or memory, the kernel fails every accept at once while the
// connection waits in the backlog: re-arming at once would spin the core and write a warning per attempt. So on those
// errors the loop waits (`pause_ms`) before it accepts again, and the log says so once per episode and once when
// accepting works again.
class accept_pacer {
public:
    static constexpr uint32_t pause_ms = 200;

    explicit accept_pacer(std::string what) : what_(std::move(what)) {}
    // An accept completion's error (res < 0, not -ECANCELED). True if the loop should wait pause_ms before it
    // accepts again; false if the error concerned one connection only and the loop can go on at once.
    bool failed(int res);
    // A connection was accepted: logs the end of an episode of failures.
    void accepted();
    uint64_t paused() const { return paused_; } // waits so far, for tests and counters

private:
    std::string what_;
    uint64_t episode_failures_ = 0;
    uint64_t paused_ = 0;
};

// Raises the soft RLIMIT_NOFILE to the hard limit (each connection is a descriptor) and returns the soft limit in
// force afterwards. Logs what it did; never fails the start-up (the hard limit is what it is).
uint64_t raise_fd_limit();

} // namespace ringmq::listener
