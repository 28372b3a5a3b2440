// ringmq load generator: drives an MQTT 3.1.1 broker on loopback with publishers, subscribers and idle connections,
// and reports delivered messages per second, latency percentiles, loss and reordering, plus the broker's CPU time and
// memory from /proc when given its pid. Its MQTT client code (mqtt_codec.hpp) is its own; see perf/loadgen/README.md.

#include "histogram.hpp"
#include "mqtt_codec.hpp"
#include "proc_stats.hpp"

#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

namespace {

using loadgen::histogram;
namespace mqtt = loadgen::mqtt;

constexpr std::int64_t ns_per_ms = 1'000'000;
constexpr std::int64_t ns_per_s = 1'000'000'000;
// Unsent bytes on one connection beyond which its publisher stops producing until the socket drains.
constexpr std::size_t out_limit = std::size_t{1} << 20;
// Connections between connect() and CONNACK (or SUBACK) during set-up: Mosquitto listens with a backlog of 100,
// and an overflowing backlog drops SYNs that are only retried a second later.
constexpr std::uint32_t setup_concurrency = 64;
// A closed-loop window that has not moved for this long is written off (QoS 0 may lose a whole window).
constexpr std::int64_t stall_timeout_ns = 1000 * ns_per_ms;
// After the measured window: wait for in-flight messages at most this long, or until nothing arrived for drain_quiet.
constexpr std::int64_t drain_timeout_ns = 2000 * ns_per_ms;
constexpr std::int64_t drain_quiet_ns = 300 * ns_per_ms;
// Payload layout: send timestamp (CLOCK_MONOTONIC ns) then a word of the sequence number (low 40 bits) and, at a fixed
// rate, how late the send was on its schedule in microseconds (high 24 bits, saturating); both 8 bytes, native byte
// order. The lateness rides in the message because a 16-byte payload has no room for a third field, and the receiver
// must know it to measure from the scheduled time (coordinated omission); 2^40 messages outlast any bounded run.
constexpr std::uint32_t payload_header = 16;
constexpr unsigned seq_bits = 40;
constexpr std::uint64_t seq_mask = (std::uint64_t{1} << seq_bits) - 1;
constexpr std::uint64_t max_lag_us = (std::uint64_t{1} << (64 - seq_bits)) - 1;
// Connections per IPv4 source address. The kernel looks for a free ephemeral port per (source, destination) pair,
// and that search slows sharply as the range fills: at 16k connections from 127.0.0.1 to one port it took nearly all
// of the generator's core (__inet_hash_connect) and connecting stalled. Connection i comes from
// 127.0.0.(first_source + i / conns_per_source) instead (--first-source, 1 by default); loopback all the same.
constexpr std::uint32_t conns_per_source = 8192;
// Most PUBLISHes one fixed-rate loop turn may emit before it goes back to reading sockets.
constexpr std::uint32_t rate_burst_limit = 4096;

std::int64_t ns_of(const timespec& ts) { return static_cast<std::int64_t>(ts.tv_sec) * ns_per_s + ts.tv_nsec; }

std::int64_t mono_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ns_of(ts);
}

void sleep_until(std::int64_t t) {
    timespec ts{static_cast<time_t>(t / ns_per_s), static_cast<long>(t % ns_per_s)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string strf(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

enum class scenario_kind { one_to_one, pairs, fanout, fanin, idle, connect_storm, retained };

// Command-line settings, filled once by main() and then only read (by every thread).
struct options {
    std::string host = "127.0.0.1";
    std::uint32_t first_source = 1; // connection i comes from 127.0.0.(first_source + i / conns_per_source)
    std::uint16_t port = 1883;
    std::string scenario = "one-to-one";
    scenario_kind kind = scenario_kind::one_to_one;
    std::uint32_t publishers = 0;
    std::uint32_t subscribers = 0;
    std::uint32_t idle = 0;
    int qos = 0;
    std::uint32_t payload = 16;
    double rate = 0;
    std::uint32_t inflight = 64;
    double duration = 10;
    double warmup = 2;
    int broker_pid = 0;
    bool json = false;
    std::string topic_prefix;
    std::string
        client_prefix; // client ids <prefix>-<thread>-<index>: a fixed one puts them on the same shards each run
    std::uint32_t threads = 1;
    std::uint16_t keepalive = 60;
    std::uint32_t spin_us = 0;
    bool poll = false;
    bool catch_up = false; // fixed rate: a slot that cannot go is sent late rather than skipped
    bool kernel_stamps = false;
    std::uint32_t retained = 100000; // retained scenario: topics stored before the run
};

// One independent set of publishers and subscribers: every subscriber of a group receives every publisher of the
// group, and nothing else. Groups never span workers, so the closed-loop bookkeeping needs no synchronisation.
struct group_spec {
    std::uint32_t first_topic = 0;
    std::uint32_t publishers = 0;
    std::uint32_t subscribers = 0;
    std::uint32_t first_global_pub = 0;
    bool wildcard = false;
};

// What one worker measured; filled at the end of worker::run, read by the controller after join().
struct worker_result {
    histogram latency;
    histogram kernel_latency;           // --kernel-stamps: to the kernel's receive time instead of the worker's
    histogram schedule_latency;         // fixed rate: from the scheduled send time, so the generator's lateness counts
    std::uint64_t delivered_window = 0; // PUBLISHes received while the measured window was open
    std::uint64_t sent_measured = 0;    // PUBLISHes sent while the measured window was open
    std::uint64_t expected = 0;         // sent_measured times the subscribers of each publisher
    std::uint64_t received_measured = 0;
    std::uint64_t reordered = 0;
    std::uint64_t duplicates = 0;
    std::uint64_t send_skipped = 0;
    std::uint64_t window_stalls = 0;
    std::uint64_t rate_lag_resets = 0;
    std::uint64_t connacks_window = 0;
    std::uint64_t storm_connects = 0;
};

// Run-wide state shared by the controller (main thread) and the workers. Times are CLOCK_MONOTONIC ns; the
// controller stores measure_start and measure_end before t0 (release), workers read t0 (acquire) and then the rest.
struct shared_state {
    std::atomic<std::int64_t> t0{0};
    std::atomic<std::int64_t> measure_start{0};
    std::atomic<std::int64_t> measure_end{0};
    std::atomic<std::uint32_t> ready_workers{0};
    std::atomic<std::uint32_t> connected{0};
    std::atomic<bool> failed{false};

    std::mutex mu; // guards everything below
    std::string error;
    histogram interval_latency; // merged by workers once a second, taken by the controller for the progress line
    std::uint64_t interval_delivered = 0;
    std::uint64_t interval_connacks = 0;

    void fail(const std::string& why) {
        std::lock_guard lock(mu);
        if (error.empty()) error = why;
        failed.store(true);
    }
};

// retained scenario: the topic of retained message i, and (with "/#" for "/s") the filter that asks for it.
std::string retained_topic_name(const options& o, std::uint32_t i) {
    return strf("%s/r/%u/s", o.topic_prefix.c_str(), i);
}

enum class role : std::uint8_t { idle, publisher, subscriber, storm, querier };
enum class conn_state : std::uint8_t { unopened, connecting, wait_connack, wait_suback, ready, closed };

// One MQTT client connection. Owned by its worker (worker::conns_, stable indices), used only by that worker's thread.
struct connection {
    int fd = -1;
    std::uint32_t gen = 0; // bumped on close, so that events already fetched for a recycled storm slot are ignored
    role kind = role::idle;
    conn_state state = conn_state::unopened;
    bool dirty = false;      // listed in worker::dirty_, i.e. has bytes queued this loop turn
    bool want_out = false;   // EPOLLOUT registered (connect in progress, or the socket buffer was full)
    std::uint32_t owner = 0; // index in worker::pubs_ or worker::subs_
    std::int64_t last_send_ns = 0;
    mqtt::byte_buffer out;
    // Offsets in `out` (from its data()) of the send stamps queued this turn while the socket took everything: flush()
    // writes the time of its send() there, so a message does not carry the generator's own wait for the sends queued
    // before it in the turn. Not kept behind a full socket, where the wait is the broker's.
    std::vector<std::uint32_t> stamps;
    std::vector<std::uint8_t> carry; // start of a packet whose end has not arrived yet
};

// A publishing client: sequence numbers, the closed-loop window and packet ids. Owned by its worker, worker thread.
struct publisher {
    std::uint32_t conn = 0;
    std::uint32_t group = 0;
    std::uint32_t local = 0;  // index within its group; its topic is prefix/(group first_topic + local)
    std::uint32_t global = 0; // index over the whole run, to stagger fixed-rate schedules
    std::uint8_t prefix[512]; // fixed header and topic, the same for every PUBLISH of this publisher
    std::size_t prefix_size = 0;
    std::uint64_t next_seq = 0; // messages sent so far
    std::uint64_t done_seq = 0; // closed loop: every message below this reached every subscriber (or was written off)
    std::vector<std::uint32_t> ring; // closed loop: subscribers that reached seq, at ring[seq % window]
    std::uint64_t sent_measured = 0;
    std::uint32_t unacked = 0; // QoS 1/2 packet ids in use
    std::uint16_t next_id = 1;
    std::vector<std::uint8_t> id_used; // 65536 flags, only for QoS > 0
    std::int64_t last_progress_ns = 0;
    std::uint64_t rate_k = 0; // fixed rate: index of the next scheduled message
    // --catch-up: the run of scheduled slots from owed_k on that could not go yet (window full, socket backed up)
    std::uint64_t owed = 0;
    std::uint64_t owed_k = 0;
    bool owing = false; // listed in worker::owing_
    std::uint64_t window_stalls = 0;
    bool woken = false; // listed in worker::wake_
};

// A subscribing client: its connection and its place in its group. Owned by its worker, worker thread only.
struct subscriber {
    std::uint32_t conn = 0;
    std::uint32_t group = 0;
    std::uint32_t local = 0;
};

// retained scenario: a client that keeps `inflight` SUBSCRIBEs outstanding, each to the subtree of one retained
// topic, and answers each with the retained message it brings with an UNSUBSCRIBE and the next SUBSCRIBE. A broker
// answers one connection's SUBSCRIBEs in order, so the answers come back in the order of `pending`. Owned by its
// worker, worker thread only.
struct querier {
    struct request {
        std::uint32_t topic_no;
        std::int64_t sent_ns;
    };
    std::uint32_t conn = 0;
    std::deque<request> pending;
    std::uint64_t next_k = 0; // requests made so far, which picks the next topic
    std::uint16_t next_id = 1;
    std::uint64_t sent_measured = 0;     // SUBSCRIBEs sent inside the measured window
    std::uint64_t received_measured = 0; // of those, answered with their retained message
};

// How many runs of missing sequence numbers each pair remembers (pair_state::gaps): 4096, but no more than 2^20
// runs over all of a worker's pairs (about 64 MiB of map nodes), so that a lossy run with 10k subscribers does not
// grow the generator by gigabytes; at least 16.
std::size_t gap_runs_per_pair(std::size_t pairs) {
    return std::clamp<std::size_t>((std::size_t{1} << 20) / std::max<std::size_t>(pairs, 1), 16, 4096);
}

// Per publisher -> subscriber pair: what arrived, to count loss, reordering and duplicates.
struct pair_state {
    std::int64_t max_seq = -1;
    std::uint64_t received_measured = 0; // non-duplicate arrivals whose send timestamp lies in the measured window
    std::uint64_t reordered = 0;         // of those, arrivals below a sequence number already seen
    std::uint64_t duplicates = 0;        // arrivals of a sequence number that already arrived, in the window
    // The sequence numbers below max_seq that have not arrived (the runs max_seq skipped), so that an arrival below
    // it is told apart: one that fills a gap came late (reordered), any other is a copy (duplicate) and is not
    // counted as received, where it would hide a loss. Allocated on the first gap (a run without loss never makes
    // one); at most gap_runs_per_pair(pairs) runs (see there), the oldest forgotten beyond that: an arrival at or
    // below forgotten_to then counts as reordered, as if it filled a gap, and is counted as received.
    std::unique_ptr<std::map<std::int64_t, std::int64_t>> gaps; // first -> last of each run, inclusive
    std::int64_t forgotten_to = -1;

    // A sequence number above max_seq arrived: the ones it skipped become a gap.
    void skipped_to(std::int64_t seq, std::size_t max_runs) {
        if (seq <= max_seq + 1) return;
        if (!gaps) gaps = std::make_unique<std::map<std::int64_t, std::int64_t>>();
        gaps->emplace(max_seq + 1, seq - 1);
        trim(max_runs);
    }
    // A sequence number below max_seq arrived: true when it fills a gap (it is then no longer missing) or is too old
    // to tell, false when it arrived before.
    bool fills_gap(std::int64_t seq, std::size_t max_runs) {
        if (gaps && !gaps->empty()) {
            auto it = gaps->upper_bound(seq);
            if (it != gaps->begin() && seq <= (--it)->second) {
                const std::int64_t first = it->first, last = it->second;
                if (first == last) {
                    gaps->erase(it);
                } else if (seq == last) {
                    --it->second;
                } else if (seq == first) { // the run now starts one later: its node is re-keyed, not reallocated
                    auto node = gaps->extract(it);
                    node.key() = seq + 1;
                    gaps->insert(std::move(node));
                } else { // a late arrival inside a run splits it
                    it->second = seq - 1;
                    gaps->emplace(seq + 1, last);
                    trim(max_runs);
                }
                return true;
            }
        }
        return seq <= forgotten_to;
    }

private:
    void trim(std::size_t max_runs) {
        while (gaps->size() > max_runs) {
            forgotten_to = std::max(forgotten_to, gaps->begin()->second);
            gaps->erase(gaps->begin());
        }
    }
};

// Runtime state of one group_spec: its filter, members and pair table. Owned by its worker, worker thread only.
struct group {
    std::uint32_t first_topic = 0;
    std::string filter;
    std::vector<std::uint32_t> pubs; // indices in worker::pubs_
    std::vector<std::uint32_t> subs; // indices in worker::subs_
    std::vector<pair_state> pairs;   // [publisher local * subs.size() + subscriber local]
};

// One event loop (epoll, non-blocking sockets) with its connections, groups and measurements. Created by the
// controller, run on its own std::thread; it touches shared_state only through atomics and, once a second, its mutex.
class worker {
public:
    worker(const options& opt, shared_state& shared, std::uint32_t id, const sockaddr_storage& addr, socklen_t addr_len,
           const std::vector<group_spec>& groups, std::uint32_t idle_count, std::uint32_t total_pubs,
           std::uint32_t querier_count)
        : opt_(opt), shared_(shared), id_(id), addr_(addr), addr_len_(addr_len), total_pubs_(total_pubs) {
        closed_loop_ = opt.rate <= 0;
        if (!closed_loop_) interval_ns_ = static_cast<double>(ns_per_s) / opt.rate;
        for (std::uint32_t i = 0; i < idle_count; ++i)
            setup_order_.push_back(add_conn(role::idle, 0));
        std::size_t pairs = 0;
        for (const group_spec& gs : groups) {
            add_group(gs);
            pairs += groups_.back().pairs.size();
        }
        gap_runs_ = gap_runs_per_pair(pairs);
        for (std::uint32_t i = 0; i < querier_count; ++i) {
            queriers_.emplace_back().conn = add_conn(role::querier, i);
            queriers_.back().next_k = static_cast<std::uint64_t>(id) * 1000003u + i * 7919u;
            setup_order_.push_back(queriers_.back().conn);
        }
        if (opt.kind == scenario_kind::connect_storm)
            for (std::uint32_t i = 0; i < opt.inflight; ++i)
                storm_free_.push_back(add_conn(role::storm, 0));
    }

    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    void run();

    worker_result result; // valid once run() has returned

private:
    struct due_entry {
        std::int64_t due;
        std::uint32_t pub;
        bool operator>(const due_entry& o) const { return due > o.due; }
    };

    std::uint32_t add_conn(role kind, std::uint32_t owner) {
        connection& c = conns_.emplace_back();
        c.kind = kind;
        c.owner = owner;
        return static_cast<std::uint32_t>(conns_.size() - 1);
    }

    void add_group(const group_spec& gs) {
        const auto gi = static_cast<std::uint32_t>(groups_.size());
        group& g = groups_.emplace_back();
        g.first_topic = gs.first_topic;
        g.filter = gs.wildcard ? opt_.topic_prefix + "/#" : opt_.topic_prefix + "/" + std::to_string(gs.first_topic);
        for (std::uint32_t s = 0; s < gs.subscribers; ++s) {
            const auto si = static_cast<std::uint32_t>(subs_.size());
            const std::uint32_t ci = add_conn(role::subscriber, si);
            subs_.push_back({ci, gi, s});
            g.subs.push_back(si);
            setup_order_.push_back(ci);
        }
        for (std::uint32_t p = 0; p < gs.publishers; ++p) {
            const auto pi = static_cast<std::uint32_t>(pubs_.size());
            const std::uint32_t ci = add_conn(role::publisher, pi);
            publisher& pub = pubs_.emplace_back();
            pub.conn = ci;
            pub.group = gi;
            pub.local = p;
            pub.global = gs.first_global_pub + p;
            const std::string topic = opt_.topic_prefix + "/" + std::to_string(gs.first_topic + p);
            pub.prefix_size =
                mqtt::encode_publish_prefix(pub.prefix, topic, static_cast<std::uint8_t>(opt_.qos), opt_.payload);
            if (closed_loop_) pub.ring.assign(opt_.inflight, 0);
            if (opt_.qos > 0) pub.id_used.assign(65536, 0);
            g.pubs.push_back(pi);
            setup_order_.push_back(ci);
        }
        g.pairs.resize(static_cast<std::size_t>(gs.publishers) * gs.subscribers);
    }

    void fail(const std::string& why) { shared_.fail(why); }

    // A connection broke. During shutdown (and for a storm slot already closed) that is expected; otherwise the run
    // is void: the numbers would describe fewer clients than asked for.
    void conn_failed(connection& c, const std::string& why) {
        if (shutting_down_ || c.state == conn_state::closed) return;
        fail(strf("connection %s (%s) failed: %s", client_id(c).c_str(), role_name(c.kind), why.c_str()));
    }

    static const char* role_name(role r) {
        switch (r) {
        case role::idle:
            return "idle";
        case role::publisher:
            return "publisher";
        case role::subscriber:
            return "subscriber";
        case role::storm:
            return "connect-storm";
        case role::querier:
            return "retained querier";
        }
        return "?";
    }

    std::string client_id(const connection& c) const {
        const auto idx = static_cast<std::size_t>(&c - conns_.data());
        if (c.kind == role::storm) return strf("%s-%u-s%" PRIu64, opt_.client_prefix.c_str(), id_, storm_serial_);
        return strf("%s-%u-%zu", opt_.client_prefix.c_str(), id_, idx);
    }

    void epoll_set(connection& c, int op, std::uint32_t events) {
        epoll_event ev{};
        ev.events = events;
        ev.data.u64 = (static_cast<std::uint64_t>(c.gen) << 32) | static_cast<std::uint64_t>(&c - conns_.data());
        if (epoll_ctl(ep_, op, c.fd, &ev) != 0) fail(strf("epoll_ctl: %s", std::strerror(errno)));
    }

    void mark_dirty(std::uint32_t ci) {
        connection& c = conns_[ci];
        if (!c.dirty) {
            c.dirty = true;
            dirty_.push_back(ci);
        }
    }

    void open_conn(std::uint32_t ci, std::int64_t now) {
        connection& c = conns_[ci];
        if (c.kind == role::storm) ++storm_serial_;
        const int fd = socket(addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            fail(strf("socket(): %s%s", std::strerror(errno), errno == EMFILE ? " (raise ulimit -n)" : ""));
            return;
        }
        const int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (opt_.kernel_stamps) setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
        c.fd = fd;
        if (addr_.ss_family == AF_INET && (ci >= conns_per_source || opt_.first_source != 1)) {
            const std::uint32_t host = opt_.first_source + ci / conns_per_source;
            sockaddr_in src{};
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl((127u << 24) | host);
            // The port is picked at connect() time, unique per 4-tuple, not reserved by bind().
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            if (::bind(fd, reinterpret_cast<const sockaddr*>(&src), sizeof src) != 0) {
                c.state = conn_state::connecting;
                conn_failed(c, strf("bind to source 127.0.0.%u: %s", host, std::strerror(errno)));
                return;
            }
        }
        c.out.clear();
        c.stamps.clear();
        c.carry.clear();
        mqtt::encode_connect(c.out, client_id(c), opt_.keepalive, true);
        c.last_send_ns = now;
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr_), addr_len_) == 0) {
            c.state = conn_state::wait_connack;
            c.want_out = false;
            epoll_set(c, EPOLL_CTL_ADD, EPOLLIN);
            mark_dirty(ci);
        } else if (errno == EINPROGRESS) {
            c.state = conn_state::connecting;
            c.want_out = true;
            epoll_set(c, EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT);
        } else {
            c.state = conn_state::connecting;
            conn_failed(c, strf("connect to %s port %u: %s", opt_.host.c_str(), opt_.port, std::strerror(errno)));
        }
    }

    void close_conn(connection& c) {
        if (c.fd >= 0) ::close(c.fd);
        c.fd = -1;
        ++c.gen;
        c.state = conn_state::closed;
        c.want_out = false;
        c.out.clear();
        c.stamps.clear();
        c.carry.clear();
    }

    // Moves the send stamps queued this turn to now, adding the move to each message's lateness on its schedule. A
    // stamp that would cross the measured window's start or end keeps its time: the message was counted as sent in
    // the window (or not) by it.
    void restamp(connection& c) {
        const std::int64_t now = mono_ns();
        for (const std::uint32_t at : c.stamps) {
            std::uint8_t* w = const_cast<std::uint8_t*>(c.out.data()) + at;
            std::int64_t was;
            std::memcpy(&was, w, 8);
            if ((was < ms_) != (now < ms_) || (was < me_) != (now < me_)) continue;
            std::memcpy(w, &now, 8);
            if (closed_loop_) continue;
            std::uint64_t word;
            std::memcpy(&word, w + 8, 8);
            const std::uint64_t late_us = std::min<std::uint64_t>(
                (word >> seq_bits) + static_cast<std::uint64_t>(now - was + 500) / 1000, max_lag_us);
            word = (word & seq_mask) | (late_us << seq_bits);
            std::memcpy(w + 8, &word, 8);
        }
        c.stamps.clear();
    }

    // Writes what is queued; on a full socket buffer waits for EPOLLOUT instead of spinning.
    void flush(std::uint32_t ci) {
        connection& c = conns_[ci];
        if (c.fd < 0 || c.state == conn_state::connecting) return;
        if (!c.stamps.empty()) restamp(c);
        while (!c.out.empty()) {
            const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
            if (n > 0) {
                c.out.consume(static_cast<std::size_t>(n));
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (!c.want_out) {
                    c.want_out = true;
                    epoll_set(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                }
                return;
            }
            conn_failed(c, strf("send(): %s", std::strerror(errno)));
            return;
        }
        if (c.want_out) {
            c.want_out = false;
            epoll_set(c, EPOLL_CTL_MOD, EPOLLIN);
        }
        if (c.kind == role::publisher) wake(c.owner);
    }

    void flush_dirty() {
        // flush() may wake publishers but never queues bytes, so dirty_ does not grow while we walk it.
        for (const std::uint32_t ci : dirty_) {
            conns_[ci].dirty = false;
            flush(ci);
        }
        dirty_.clear();
    }

    void wake(std::uint32_t pi) {
        publisher& p = pubs_[pi];
        if (!p.woken && closed_loop_) {
            p.woken = true;
            wake_.push_back(pi);
        }
    }

    void handle_event(std::uint64_t data, std::uint32_t events) {
        const auto ci = static_cast<std::uint32_t>(data);
        if (ci >= conns_.size()) return;
        connection& c = conns_[ci];
        if (c.gen != static_cast<std::uint32_t>(data >> 32) || c.fd < 0) return;
        if (c.state == conn_state::connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                conn_failed(c, strf("connect to %s port %u: %s", opt_.host.c_str(), opt_.port, std::strerror(err)));
                return;
            }
            if (!(events & EPOLLOUT)) return;
            c.state = conn_state::wait_connack;
            flush(ci);
            return;
        }
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) read_conn(ci);
        if ((events & EPOLLOUT) && c.fd >= 0 && c.want_out) flush(ci);
    }

    // recv() that also takes the SO_TIMESTAMPNS stamp (CLOCK_REALTIME) into kernel_rx_ns_.
    ssize_t recv_stamped(int fd, void* buf, std::size_t len) {
        iovec iov{buf, len};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(timespec))];
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t n = ::recvmsg(fd, &msg, 0);
        kernel_rx_ns_ = 0;
        for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); n > 0 && cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                timespec ts{};
                std::memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                kernel_rx_ns_ = ns_of(ts) - realtime_offset_ns_;
            }
        }
        return n;
    }

    void read_conn(std::uint32_t ci) {
        connection& c = conns_[ci];
        // A few reads per readiness report: a full buffer means more is waiting, and another epoll_wait round trip
        // would cost more than the read.
        for (int round = 0; round < 4; ++round) {
            const std::size_t carry = c.carry.size();
            if (scratch_.size() < carry + 65536) scratch_.resize(carry + 262144);
            if (carry) std::memcpy(scratch_.data(), c.carry.data(), carry);
            const std::size_t room = scratch_.size() - carry;
            const ssize_t n = opt_.kernel_stamps ? recv_stamped(c.fd, scratch_.data() + carry, room)
                                                 : ::recv(c.fd, scratch_.data() + carry, room, 0);
            if (n == 0) {
                conn_failed(c, "closed by the broker");
                close_conn(c);
                return;
            }
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) return;
                conn_failed(c, strf("recv(): %s", std::strerror(errno)));
                close_conn(c);
                return;
            }
            const std::int64_t now = mono_ns();
            const std::size_t total = carry + static_cast<std::size_t>(n);
            std::size_t pos = 0;
            for (;;) {
                mqtt::packet_view pv;
                const long used = mqtt::parse_packet(scratch_.data() + pos, total - pos, pv);
                if (used == 0) break;
                if (used < 0) {
                    conn_failed(c, "malformed Remaining Length from the broker");
                    close_conn(c);
                    return;
                }
                handle_packet(ci, pv, now);
                if (c.fd < 0 || shared_.failed.load(std::memory_order_relaxed)) return;
                pos += static_cast<std::size_t>(used);
            }
            c.carry.assign(scratch_.data() + pos, scratch_.data() + total);
            if (static_cast<std::size_t>(n) < room) return;
        }
    }

    void became_ready(connection& c) {
        c.state = conn_state::ready;
        --in_progress_;
        ++ready_count_;
        shared_.connected.fetch_add(1, std::memory_order_relaxed);
    }

    void handle_packet(std::uint32_t ci, const mqtt::packet_view& pv, std::int64_t now) {
        connection& c = conns_[ci];
        switch (pv.type) {
        case mqtt::connack: {
            if (c.state != conn_state::wait_connack || pv.size < 2) {
                conn_failed(c, "unexpected CONNACK");
                return;
            }
            if (pv.body[1] != 0) {
                conn_failed(c, strf("CONNACK refused the connection, return code %u", pv.body[1]));
                return;
            }
            if (c.kind == role::subscriber) {
                const subscriber& s = subs_[c.owner];
                mqtt::encode_subscribe(c.out, 1, groups_[s.group].filter, static_cast<std::uint8_t>(opt_.qos));
                c.last_send_ns = now;
                c.state = conn_state::wait_suback;
                mark_dirty(ci);
            } else if (c.kind == role::storm) {
                storm_connack(ci, now);
            } else {
                became_ready(c);
            }
            return;
        }
        case mqtt::suback:
            if (c.kind == role::querier && c.state == conn_state::ready && pv.size >= 3) {
                if (pv.body[2] == 0x80) conn_failed(c, "SUBACK refused the subscription");
                return;
            }
            if (c.state != conn_state::wait_suback || pv.size < 3) {
                conn_failed(c, "unexpected SUBACK");
                return;
            }
            if (pv.body[2] == 0x80) {
                conn_failed(c, "SUBACK refused the subscription");
                return;
            }
            became_ready(c);
            return;
        case mqtt::publish:
            on_publish(ci, pv, now);
            return;
        case mqtt::puback:
        case mqtt::pubcomp:
            if (pv.size >= 2 && c.kind == role::publisher) release_id(c.owner, mqtt::get_u16(pv.body));
            return;
        case mqtt::pubrec:
            if (pv.size >= 2) {
                mqtt::encode_ack(c.out, mqtt::pubrel, mqtt::get_u16(pv.body));
                mark_dirty(ci);
            }
            return;
        case mqtt::pubrel:
            if (pv.size >= 2) {
                mqtt::encode_ack(c.out, mqtt::pubcomp, mqtt::get_u16(pv.body));
                mark_dirty(ci);
            }
            return;
        case mqtt::pingresp:
            return;
        case mqtt::unsuback:
            if (c.kind != role::querier) conn_failed(c, "unexpected UNSUBACK");
            return;
        default:
            conn_failed(c, strf("unexpected packet type %u from the broker", pv.type));
            return;
        }
    }

    // connect-storm: a CONNACK is one accepted connection; say goodbye, reset (no TIME_WAIT eating the ephemeral
    // ports) and let the loop reopen the slot.
    void storm_connack(std::uint32_t ci, std::int64_t now) {
        connection& c = conns_[ci];
        ++result.storm_connects;
        if (now >= ms_ && now < me_) ++result.connacks_window;
        ++interval_connacks_;
        const std::uint8_t bye[2] = {mqtt::disconnect << 4, 0};
        [[maybe_unused]] const ssize_t n = ::send(c.fd, bye, sizeof bye, MSG_NOSIGNAL | MSG_DONTWAIT);
        const linger lg{1, 0};
        setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close_conn(c);
        storm_free_.push_back(ci);
    }

    void on_publish(std::uint32_t ci, const mqtt::packet_view& pv, std::int64_t now) {
        connection& c = conns_[ci];
        mqtt::publish_view pub;
        if (!mqtt::decode_publish(pv, pub)) {
            conn_failed(c, "malformed PUBLISH from the broker");
            return;
        }
        if (pub.qos == 1) {
            mqtt::encode_ack(c.out, mqtt::puback, pub.id);
            mark_dirty(ci);
        } else if (pub.qos == 2) {
            mqtt::encode_ack(c.out, mqtt::pubrec, pub.id);
            mark_dirty(ci);
        }
        if (c.kind == role::querier) {
            querier_answer(queriers_[c.owner], pub, now);
            return;
        }
        if (c.kind != role::subscriber || pub.payload_size < payload_header) return;
        std::int64_t ts = 0;
        std::uint64_t word = 0;
        std::memcpy(&ts, pub.payload, 8);
        std::memcpy(&word, pub.payload + 8, 8);
        const std::uint64_t seq = word & seq_mask;

        const subscriber& s = subs_[c.owner];
        group& g = groups_[s.group];
        // The publisher is the number after the topic's last '/'.
        const auto slash = pub.topic.rfind('/');
        std::uint64_t topic_no = 0;
        for (std::size_t i = slash == std::string_view::npos ? 0 : slash + 1; i < pub.topic.size(); ++i) {
            const char ch = pub.topic[i];
            if (ch < '0' || ch > '9') return; // not one of ours
            topic_no = topic_no * 10 + static_cast<std::uint64_t>(ch - '0');
        }
        if (topic_no < g.first_topic || topic_no - g.first_topic >= g.pubs.size()) return;
        const auto local = static_cast<std::uint32_t>(topic_no - g.first_topic);
        publisher& p = pubs_[g.pubs[local]];
        if (seq >= p.next_seq) return; // not sent by this run's publisher
        pair_state& ps = g.pairs[static_cast<std::size_t>(local) * g.subs.size() + s.local];

        const bool measured = ts >= ms_ && ts < me_;
        if (static_cast<std::int64_t>(seq) <= ps.max_seq) {
            if (!ps.fills_gap(static_cast<std::int64_t>(seq), gap_runs_)) {
                if (measured) ++ps.duplicates;
                return;
            }
            if (measured) ++ps.reordered;
        } else {
            if (closed_loop_) advance_window(p, ps, seq, g.subs.size(), now);
            ps.skipped_to(static_cast<std::int64_t>(seq), gap_runs_);
            ps.max_seq = static_cast<std::int64_t>(seq);
        }
        ++received_total_;
        last_receive_ns_ = now;
        const auto latency = static_cast<std::uint64_t>(now > ts ? now - ts : 0);
        if (now >= ms_ && now < me_) ++result.delivered_window;
        if (measured) {
            ++ps.received_measured;
            result.latency.record(latency);
            if (!closed_loop_) result.schedule_latency.record(latency + (word >> seq_bits) * 1000);
            if (kernel_rx_ns_ != 0)
                result.kernel_latency.record(static_cast<std::uint64_t>(kernel_rx_ns_ > ts ? kernel_rx_ns_ - ts : 0));
        }
        ++interval_delivered_;
        interval_latency_.record(latency);
    }

    std::string retained_topic(std::uint32_t topic_no) const { return retained_topic_name(opt_, topic_no); }
    std::string retained_filter(std::uint32_t topic_no) const {
        return strf("%s/r/%u/#", opt_.topic_prefix.c_str(), topic_no);
    }

    std::uint16_t next_packet_id(querier& q) {
        const std::uint16_t id = q.next_id;
        q.next_id = static_cast<std::uint16_t>(id == 65535 ? 1 : id + 1);
        return id;
    }

    void querier_request(querier& q, std::int64_t now) {
        const auto topic_no = static_cast<std::uint32_t>(q.next_k++ * 7919u % opt_.retained);
        connection& c = conns_[q.conn];
        mqtt::encode_subscribe(c.out, next_packet_id(q), retained_filter(topic_no),
                               static_cast<std::uint8_t>(opt_.qos));
        q.pending.push_back({topic_no, now});
        if (now >= ms_ && now < me_) ++q.sent_measured;
        ++expected_total_;
        c.last_send_ns = now;
        mark_dirty(q.conn);
    }

    // The retained message that answers the oldest outstanding SUBSCRIBE: its latency is SUBSCRIBE to message.
    void querier_answer(querier& q, const mqtt::publish_view& pub, std::int64_t now) {
        connection& c = conns_[q.conn];
        if (q.pending.empty()) {
            conn_failed(c, strf("a PUBLISH on %.*s that no SUBSCRIBE asked for", static_cast<int>(pub.topic.size()),
                                pub.topic.data()));
            return;
        }
        const querier::request r = q.pending.front();
        q.pending.pop_front();
        const std::string want = retained_topic(r.topic_no);
        if (pub.topic != want || !pub.retain) {
            conn_failed(c, strf("expected the retained message on %s, got %s%.*s", want.c_str(),
                                pub.retain ? "" : "a live message on ", static_cast<int>(pub.topic.size()),
                                pub.topic.data()));
            return;
        }
        ++received_total_;
        last_receive_ns_ = now;
        const auto latency = static_cast<std::uint64_t>(now - r.sent_ns);
        if (now >= ms_ && now < me_) ++result.delivered_window;
        if (r.sent_ns >= ms_ && r.sent_ns < me_) {
            ++q.received_measured;
            result.latency.record(latency);
        }
        ++interval_delivered_;
        interval_latency_.record(latency);
        mqtt::encode_unsubscribe(c.out, next_packet_id(q), retained_filter(r.topic_no));
        mark_dirty(q.conn);
        if (publishing_) querier_request(q, now);
    }

    // Closed loop: subscriber `ps` has now seen everything up to `seq` (a gap is a loss, not a wait), so each message
    // from just after what it had seen up to seq gains one receiver; the window slides over messages every
    // subscriber has reached.
    void advance_window(publisher& p, const pair_state& ps, std::uint64_t seq, std::size_t subscribers,
                        std::int64_t now) {
        const std::uint64_t w = opt_.inflight;
        for (std::uint64_t q = std::max(static_cast<std::uint64_t>(ps.max_seq + 1), p.done_seq); q <= seq; ++q)
            ++p.ring[q % w];
        const std::uint64_t before = p.done_seq;
        while (p.done_seq < p.next_seq && p.ring[p.done_seq % w] >= subscribers)
            p.ring[p.done_seq++ % w] = 0;
        if (p.done_seq != before) {
            p.last_progress_ns = now;
            wake(static_cast<std::uint32_t>(&p - pubs_.data()));
        }
    }

    void release_id(std::uint32_t pi, std::uint16_t id) {
        publisher& p = pubs_[pi];
        if (p.id_used.empty() || !p.id_used[id]) return;
        p.id_used[id] = 0;
        --p.unacked;
        --unacked_total_;
        wake(pi);
    }

    std::uint16_t alloc_id(publisher& p) {
        for (;;) {
            const std::uint16_t id = p.next_id;
            p.next_id = p.next_id == 65535 ? 1 : static_cast<std::uint16_t>(p.next_id + 1);
            if (!p.id_used[id]) {
                p.id_used[id] = 1;
                return id;
            }
        }
    }

    bool can_send(const publisher& p) const {
        const connection& c = conns_[p.conn];
        if (c.state != conn_state::ready || c.out.size() >= out_limit) return false;
        if (opt_.qos > 0 && p.unacked >= opt_.inflight) return false;
        return !closed_loop_ || p.next_seq - p.done_seq < opt_.inflight;
    }

    // `late_ns`: how long after its scheduled time this send goes (fixed rate; 0 in a closed loop).
    void send_publish(std::uint32_t pi, std::int64_t now, std::int64_t late_ns = 0) {
        publisher& p = pubs_[pi];
        connection& c = conns_[p.conn];
        const std::size_t size = p.prefix_size + (opt_.qos ? 2 : 0) + opt_.payload;
        std::uint8_t* w = c.out.append(size);
        std::memcpy(w, p.prefix, p.prefix_size);
        w += p.prefix_size;
        if (opt_.qos) {
            w = mqtt::put_u16(w, alloc_id(p));
            ++p.unacked;
            ++unacked_total_;
        }
        const std::uint64_t seq = p.next_seq++;
        if (seq > seq_mask) fail("sequence numbers exhausted"); // 2^40 messages: never within a bounded run
        const std::uint64_t late_us =
            std::min<std::uint64_t>(static_cast<std::uint64_t>(late_ns + 500) / 1000, max_lag_us);
        const std::uint64_t word = seq | (late_us << seq_bits);
        std::memcpy(w, &now, 8);
        std::memcpy(w + 8, &word, 8);
        if (!c.want_out) c.stamps.push_back(static_cast<std::uint32_t>(w - c.out.data()));
        if (opt_.payload > payload_header) std::memset(w + payload_header, 0, opt_.payload - payload_header);
        if (now >= ms_ && now < me_) ++p.sent_measured;
        expected_total_ += groups_[p.group].subs.size();
        c.last_send_ns = now;
        mark_dirty(p.conn);
    }

    void start_run(std::int64_t now) {
        started_ = true;
        ms_ = shared_.measure_start.load(std::memory_order_relaxed);
        me_ = shared_.measure_end.load(std::memory_order_relaxed);
        publishing_ = now < me_;
        next_tick_ = t0_ + ns_per_s;
        for (std::uint32_t pi = 0; pi < pubs_.size(); ++pi) {
            pubs_[pi].last_progress_ns = now;
            if (closed_loop_) {
                wake(pi);
            } else {
                // Spread the publishers' schedules evenly over one interval so they do not fire in lockstep.
                due_.push({slot_due(pubs_[pi], 0), pi});
            }
        }
        if (publishing_)
            for (querier& q : queriers_)
                for (std::uint32_t i = 0; i < opt_.inflight; ++i)
                    querier_request(q, now);
    }

    // The scheduled time of publisher p's k-th message.
    std::int64_t slot_due(const publisher& p, std::uint64_t k) const {
        return t0_ +
               static_cast<std::int64_t>(interval_ns_ * p.global / total_pubs_ + interval_ns_ * static_cast<double>(k));
    }

    // --catch-up: what could not go on time goes now, oldest first, as far as each publisher can send. A slot more
    // than a second late is forgotten and counted as skipped, as the schedule forgets a backlog that old (so a broker
    // that stalls for long gets no burst of everything it missed).
    void pay_owed(std::int64_t now) {
        std::size_t keep = 0;
        for (const std::uint32_t pi : owing_) {
            publisher& p = pubs_[pi];
            while (p.owed > 0 && slot_due(p, p.owed_k) < now - ns_per_s) {
                skip_slot(slot_due(p, p.owed_k));
                ++p.owed_k;
                --p.owed;
            }
            while (p.owed > 0 && can_send(p)) {
                send_publish(pi, now, now - slot_due(p, p.owed_k));
                ++p.owed_k;
                --p.owed;
            }
            if (p.owed > 0)
                owing_[keep++] = pi;
            else
                p.owing = false;
        }
        owing_.resize(keep);
    }

    // Publishing has ended: slots still owed never went, and count as skipped.
    void drop_owed() {
        for (const std::uint32_t pi : owing_) {
            publisher& p = pubs_[pi];
            for (; p.owed > 0; --p.owed, ++p.owed_k)
                skip_slot(slot_due(p, p.owed_k));
            p.owing = false;
        }
        owing_.clear();
    }

    // A slot that never went counts as skipped where it was due inside the measured window (as sends count where
    // they went inside it): a stall in the warm-up is not the window's.
    void skip_slot(std::int64_t due) {
        if (due >= ms_ && due < me_) ++result.send_skipped;
    }

    void send_due(std::int64_t now) {
        if (closed_loop_) {
            // Sending only queues bytes (no wake), so the list does not change while we walk it.
            for (const std::uint32_t pi : wake_) {
                pubs_[pi].woken = false;
                while (can_send(pubs_[pi]))
                    send_publish(pi, now);
            }
            wake_.clear();
            return;
        }
        if (!owing_.empty()) pay_owed(now);
        for (std::uint32_t burst = 0; burst < rate_burst_limit && !due_.empty() && due_.top().due <= now; ++burst) {
            const due_entry e = due_.top();
            due_.pop();
            publisher& p = pubs_[e.pub];
            if (p.owed == 0 && can_send(p)) {
                send_publish(e.pub, now, now - e.due);
            } else if (opt_.catch_up) {
                // Behind the slots already owed, in order.
                if (p.owed++ == 0) p.owed_k = p.rate_k;
                if (!p.owing) {
                    p.owing = true;
                    owing_.push_back(e.pub);
                }
            } else {
                skip_slot(e.due);
            }
            ++p.rate_k;
            std::int64_t next = slot_due(p, p.rate_k);
            if (next < now - ns_per_s) {
                // More than a second behind: forget the backlog rather than fire it in one burst. The slots jumped
                // over never went: they count as skipped (where due in the window) as any other.
                ++result.rate_lag_resets;
                const std::uint64_t jumped = static_cast<std::uint64_t>((now - next) / interval_ns_);
                const std::int64_t from = std::max(next, ms_);
                const std::int64_t to = std::min(next + static_cast<std::int64_t>(interval_ns_ * double(jumped)), me_);
                if (to > from) result.send_skipped += static_cast<std::uint64_t>(double(to - from) / interval_ns_);
                p.rate_k += jumped;
                next = now;
                // The owed run must stay contiguous with the slots after it: what it held is forgotten too.
                for (; p.owed > 0; --p.owed, ++p.owed_k)
                    skip_slot(slot_due(p, p.owed_k));
            }
            due_.push({next, e.pub});
        }
    }

    void periodic(std::int64_t now) {
        if (now >= next_sweep_) {
            next_sweep_ = now + 100 * ns_per_ms;
            if (publishing_ && closed_loop_) {
                for (std::uint32_t pi = 0; pi < pubs_.size(); ++pi) {
                    publisher& p = pubs_[pi];
                    if (p.next_seq - p.done_seq < opt_.inflight || now - p.last_progress_ns < stall_timeout_ns)
                        continue;
                    // Nobody will ever complete this window (QoS 0 loss): write it off and carry on.
                    for (std::uint64_t q = p.done_seq; q < p.next_seq; ++q)
                        p.ring[q % opt_.inflight] = 0;
                    p.done_seq = p.next_seq;
                    p.last_progress_ns = now;
                    ++p.window_stalls;
                    wake(pi);
                }
            }
            if (now >= next_keepalive_) {
                next_keepalive_ = now + ns_per_s;
                const std::int64_t half = static_cast<std::int64_t>(opt_.keepalive) * ns_per_s / 2;
                for (std::uint32_t ci = 0; ci < conns_.size(); ++ci) {
                    connection& c = conns_[ci];
                    if (c.state != conn_state::ready || now - c.last_send_ns < half) continue;
                    mqtt::encode_empty(c.out, mqtt::pingreq);
                    c.last_send_ns = now;
                    mark_dirty(ci);
                }
            }
        }
        if (started_ && now >= next_tick_) {
            next_tick_ += ns_per_s;
            std::lock_guard lock(shared_.mu);
            shared_.interval_latency.merge(interval_latency_);
            shared_.interval_delivered += interval_delivered_;
            shared_.interval_connacks += interval_connacks_;
            interval_latency_.reset();
            interval_delivered_ = 0;
            interval_connacks_ = 0;
        }
    }

    bool finished(std::int64_t now) const {
        if (!started_ || publishing_) return false;
        if (opt_.kind == scenario_kind::idle || opt_.kind == scenario_kind::connect_storm) return true;
        if (received_total_ >= expected_total_ && unacked_total_ == 0) return true;
        if (now - stopped_at_ >= drain_timeout_ns) return true;
        return now - stopped_at_ >= drain_quiet_ns && now - last_receive_ns_ >= drain_quiet_ns;
    }

    std::int64_t next_wake(std::int64_t now) const {
        if (publishing_ && (!wake_.empty() || !storm_free_.empty())) return now;
        std::int64_t t = std::min(now + 10 * ns_per_ms, next_sweep_);
        if (!started_) {
            const std::int64_t t0 = shared_.t0.load(std::memory_order_acquire);
            if (t0 != 0) t = std::min(t, t0);
            return t;
        }
        t = std::min(t, next_tick_);
        if (publishing_) {
            t = std::min(t, me_);
            if (!due_.empty()) t = std::min(t, due_.top().due);
        }
        return t;
    }

    void shutdown() {
        shutting_down_ = true;
        const std::uint8_t bye[2] = {mqtt::disconnect << 4, 0};
        for (connection& c : conns_) {
            if (c.fd < 0) continue;
            if (c.state == conn_state::ready) {
                [[maybe_unused]] const ssize_t n = ::send(c.fd, bye, sizeof bye, MSG_NOSIGNAL | MSG_DONTWAIT);
            }
            close_conn(c);
        }
        if (ep_ >= 0) ::close(ep_);
        ep_ = -1;
    }

    void collect() {
        for (const publisher& p : pubs_) {
            result.sent_measured += p.sent_measured;
            result.expected += p.sent_measured * groups_[p.group].subs.size();
            result.window_stalls += p.window_stalls;
        }
        for (const querier& q : queriers_) {
            result.sent_measured += q.sent_measured;
            result.expected += q.sent_measured;
            result.received_measured += q.received_measured;
        }
        for (const group& g : groups_) {
            for (const pair_state& ps : g.pairs) {
                result.received_measured += ps.received_measured;
                result.reordered += ps.reordered;
                result.duplicates += ps.duplicates;
            }
        }
    }

    const options& opt_;
    shared_state& shared_;
    const std::uint32_t id_;
    const sockaddr_storage addr_;
    const socklen_t addr_len_;
    const std::uint32_t total_pubs_;
    bool closed_loop_ = true;
    double interval_ns_ = 0;

    std::vector<connection> conns_;
    std::vector<publisher> pubs_;
    std::vector<subscriber> subs_;
    std::vector<group> groups_;
    std::vector<querier> queriers_;
    std::vector<std::uint32_t> setup_order_; // connections to open before the run, idle ones first
    std::vector<std::uint32_t> storm_free_;  // connect-storm slots waiting to be (re)opened
    std::vector<std::uint32_t> dirty_;
    std::vector<std::uint32_t> wake_;  // closed loop: publishers whose window may have opened
    std::vector<std::uint32_t> owing_; // --catch-up: publishers with slots owed
    std::priority_queue<due_entry, std::vector<due_entry>, std::greater<>> due_; // fixed rate: next send per publisher
    std::vector<std::uint8_t> scratch_;

    int ep_ = -1;
    std::size_t next_open_ = 0;
    std::uint32_t in_progress_ = 0;
    std::uint32_t ready_count_ = 0;
    bool ready_reported_ = false;
    bool started_ = false;
    bool publishing_ = false;
    bool shutting_down_ = false;
    std::int64_t t0_ = 0, ms_ = 0, me_ = 0, stopped_at_ = 0;
    std::int64_t next_tick_ = 0, next_sweep_ = 0, next_keepalive_ = 0, last_receive_ns_ = 0;
    std::uint64_t received_total_ = 0, expected_total_ = 0, unacked_total_ = 0;
    std::size_t gap_runs_ = 4096; // per pair: gap_runs_per_pair() of this worker's pairs
    std::uint64_t storm_serial_ = 0;
    histogram interval_latency_;
    // --kernel-stamps: the kernel's receive time of the bytes the last recv() returned (the newest segment's, so an
    // older message read with it is stamped late, never early), on the monotonic clock; 0 when there is none.
    std::int64_t kernel_rx_ns_ = 0;
    std::int64_t realtime_offset_ns_ = 0; // CLOCK_REALTIME minus CLOCK_MONOTONIC, taken at the run's start

    std::uint64_t interval_delivered_ = 0, interval_connacks_ = 0;
};

void worker::run() {
    // Fixed-rate schedules need wake-ups well under the default 50 us timer slack.
    prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    if (opt_.kernel_stamps) {
        // The offset between the stamps' clock and the payloads' one, from the closest of a few readings.
        std::int64_t best = INT64_MAX;
        for (int i = 0; i < 5; ++i) {
            timespec rt{};
            const std::int64_t ma = mono_ns();
            clock_gettime(CLOCK_REALTIME, &rt);
            const std::int64_t mb = mono_ns();
            if (mb - ma < best) {
                best = mb - ma;
                realtime_offset_ns_ = ns_of(rt) - (ma + (mb - ma) / 2);
            }
        }
    }
    ep_ = epoll_create1(EPOLL_CLOEXEC);
    if (ep_ < 0) {
        fail(strf("epoll_create1: %s", std::strerror(errno)));
        return;
    }
    std::vector<epoll_event> events(1024);
    while (!shared_.failed.load(std::memory_order_relaxed)) {
        std::int64_t now = mono_ns();
        if (!started_) {
            const std::int64_t t0 = shared_.t0.load(std::memory_order_acquire);
            if (t0 != 0 && now >= t0) {
                t0_ = t0;
                start_run(now);
            }
        }
        if (publishing_ && now >= me_) {
            publishing_ = false;
            drop_owed();
            stopped_at_ = now;
            storm_free_.clear();
        }
        while (in_progress_ < setup_concurrency && next_open_ < setup_order_.size()) {
            ++in_progress_;
            open_conn(setup_order_[next_open_++], now);
        }
        if (!ready_reported_ && ready_count_ == setup_order_.size()) {
            ready_reported_ = true;
            shared_.ready_workers.fetch_add(1);
        }
        if (publishing_) {
            for (const std::uint32_t ci : storm_free_)
                open_conn(ci, now);
            storm_free_.clear();
            now = mono_ns(); // the send timestamps should be as late as possible
            send_due(now);
        }
        periodic(now);
        flush_dirty();
        // A flush that drained a backed-up socket lets owed slots go now, not at the next event or due slot.
        if (publishing_ && !owing_.empty()) {
            pay_owed(now);
            flush_dirty();
        }
        if (shared_.failed.load(std::memory_order_relaxed) || finished(now)) break;

        std::int64_t wait = std::max<std::int64_t>(0, next_wake(now) - mono_ns());
        // A send due within the spin budget is waited for by polling, not by a timer: arming a high-resolution
        // timer and sleeping costs more than the gap between sends at tens of thousands of messages per second,
        // and a saturated generator would report its own queueing as broker latency.
        if (wait <= std::int64_t{opt_.spin_us} * 1000 || opt_.poll) wait = 0;
        const timespec ts{static_cast<time_t>(wait / ns_per_s), static_cast<long>(wait % ns_per_s)};
        const int n = epoll_pwait2(ep_, events.data(), static_cast<int>(events.size()), &ts, nullptr);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail(strf("epoll_pwait2: %s", std::strerror(errno)));
            break;
        }
        for (int i = 0; i < n; ++i)
            handle_event(events[i].data.u64, events[i].events);
    }
    shutdown();
    collect();
}

// ---------------------------------------------------------------------------------------------------------------
// Controller (main thread): options, plan, start/measure/stop, /proc sampling, progress and the report.

const char* scenario_names[] = {"one-to-one", "pairs", "fanout", "fanin", "idle", "connect-storm", "retained"};

void hard_stop(int) {
    static const char msg[] = "loadgen: hard stop (duration + warm-up + 10 s, and any retained set-up, passed)\n";
    [[maybe_unused]] const ssize_t n = ::write(2, msg, sizeof msg - 1);
    _exit(3);
}

// Only loopback targets: this tool opens thousands of connections as fast as it can and must never aim that at
// another machine by accident.
bool resolve_loopback(const std::string& host, std::uint16_t port, sockaddr_storage& out, socklen_t& len,
                      std::string& why) {
    std::memset(&out, 0, sizeof out);
    const std::string h = host == "localhost" ? "127.0.0.1" : host;
    in_addr a4{};
    in6_addr a6{};
    if (inet_pton(AF_INET, h.c_str(), &a4) == 1) {
        if ((ntohl(a4.s_addr) >> 24) != 127) {
            why = host + " is not a loopback address (127.0.0.0/8 or ::1 only)";
            return false;
        }
        auto* sin = reinterpret_cast<sockaddr_in*>(&out);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        sin->sin_addr = a4;
        len = sizeof(sockaddr_in);
        return true;
    }
    if (inet_pton(AF_INET6, h.c_str(), &a6) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6)) {
            why = host + " is not a loopback address (127.0.0.0/8 or ::1 only)";
            return false;
        }
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&out);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        sin6->sin6_addr = a6;
        len = sizeof(sockaddr_in6);
        return true;
    }
    why = "--host must be a numeric loopback address (or localhost), got " + host;
    return false;
}

// retained scenario: stores o.retained topics <prefix>/r/<i>/s (QoS 0, 16-byte payload) from one connection, then
// one QoS 1 retained PUBLISH whose PUBACK says every store before it has been made (MQTT 4.6: a broker handles one
// client's PUBLISHes in order). Blocking, with a 30 s limit on each read and write.
bool seed_retained(const options& o, const sockaddr_storage& addr, socklen_t addr_len, std::string& why) {
    const int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        why = strf("socket(): %s", std::strerror(errno));
        return false;
    }
    const timeval limit{30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    auto fail = [&](std::string w) {
        why = std::move(w);
        ::close(fd);
        return false;
    };
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), addr_len) != 0)
        return fail(strf("connect: %s", std::strerror(errno)));
    auto send_all = [&](mqtt::byte_buffer& b) {
        while (!b.empty()) {
            const ssize_t n = ::send(fd, b.data(), b.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            b.consume(static_cast<std::size_t>(n));
        }
        return true;
    };
    // Reads until a packet of type `want` arrives; any other packet (none is expected) is skipped.
    std::vector<std::uint8_t> in;
    auto await = [&](std::uint8_t want, mqtt::packet_view& pv) {
        for (;;) {
            const long used = mqtt::parse_packet(in.data(), in.size(), pv);
            if (used < 0) return false;
            if (used > 0) {
                if (pv.type == want) return true;
                in.erase(in.begin(), in.begin() + used);
                continue;
            }
            std::uint8_t buf[4096];
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            in.insert(in.end(), buf, buf + n);
        }
    };
    mqtt::byte_buffer out;
    mqtt::encode_connect(out, strf("%s-seed", o.client_prefix.c_str()), o.keepalive, true);
    mqtt::packet_view pv;
    if (!send_all(out) || !await(mqtt::connack, pv) || pv.size < 2 || pv.body[1] != 0)
        return fail("no CONNACK accepting the connection");
    const std::uint8_t payload[16] = {'r', 'e', 't', 'a', 'i', 'n', 'e', 'd'};
    for (std::uint32_t i = 0; i < o.retained; ++i) {
        mqtt::encode_retained_publish(out, retained_topic_name(o, i), 0, 0, payload, sizeof payload);
        if ((out.size() >= 65536 || i + 1 == o.retained) && !send_all(out))
            return fail(strf("send: %s", std::strerror(errno)));
    }
    mqtt::encode_retained_publish(out, strf("%s/r/seeded", o.topic_prefix.c_str()), 1, 1, payload, sizeof payload);
    if (!send_all(out) || !await(mqtt::puback, pv)) return fail("no PUBACK for the last retained message");
    mqtt::encode_empty(out, mqtt::disconnect);
    send_all(out);
    ::close(fd);
    return true;
}

// Fills in the per-scenario client counts and checks the combination; returns an error message or "".
std::string settle_counts(options& o, const CLI::Option* pubs_opt, const CLI::Option* subs_opt,
                          const CLI::Option* idle_opt) {
    const bool has_p = pubs_opt->count() > 0, has_s = subs_opt->count() > 0;
    switch (o.kind) {
    case scenario_kind::one_to_one:
        if ((has_p && o.publishers != 1) || (has_s && o.subscribers != 1))
            return "one-to-one has exactly 1 publisher and 1 subscriber";
        o.publishers = o.subscribers = 1;
        break;
    case scenario_kind::pairs:
        if (!has_p) o.publishers = has_s ? o.subscribers : 10;
        if (has_s && o.subscribers != o.publishers) return "pairs: --subscribers must equal --publishers";
        o.subscribers = o.publishers;
        break;
    case scenario_kind::fanout:
        if (has_p && o.publishers != 1) return "fanout has exactly 1 publisher";
        o.publishers = 1;
        if (!has_s) o.subscribers = 100;
        break;
    case scenario_kind::fanin:
        if (has_s && o.subscribers != 1) return "fanin has exactly 1 subscriber";
        o.subscribers = 1;
        if (!has_p) o.publishers = 100;
        break;
    case scenario_kind::idle:
    case scenario_kind::connect_storm:
        if ((has_p && o.publishers) || (has_s && o.subscribers))
            return std::string(scenario_names[static_cast<int>(o.kind)]) + " takes no publishers or subscribers";
        o.publishers = o.subscribers = 0;
        if (o.kind == scenario_kind::idle && idle_opt->count() == 0) o.idle = 1000;
        if (o.kind == scenario_kind::idle && o.idle == 0) return "idle needs --idle K > 0";
        break;
    case scenario_kind::retained:
        if (has_p && o.publishers) return "retained takes no publishers (one connection stores the topics first)";
        o.publishers = 0;
        if (!has_s) o.subscribers = 1;
        if (!o.subscribers) return "retained needs --subscribers N > 0";
        if (!o.retained) return "retained needs --retained N > 0";
        return "";
    }
    if (o.kind != scenario_kind::idle && o.kind != scenario_kind::connect_storm && (!o.publishers || !o.subscribers))
        return "need at least one publisher and one subscriber";
    return "";
}

std::vector<group_spec> plan_groups(const options& o) {
    std::vector<group_spec> g;
    switch (o.kind) {
    case scenario_kind::one_to_one:
        g.push_back({0, 1, 1, 0, false});
        break;
    case scenario_kind::pairs:
        for (std::uint32_t i = 0; i < o.publishers; ++i)
            g.push_back({i, 1, 1, i, false});
        break;
    case scenario_kind::fanout:
        g.push_back({0, 1, o.subscribers, 0, false});
        break;
    case scenario_kind::fanin:
        g.push_back({0, o.publishers, 1, 0, true});
        break;
    case scenario_kind::idle:
    case scenario_kind::connect_storm:
    case scenario_kind::retained:
        break;
    }
    return g;
}

// Broker figures sampled by the controller at the window's edges.
struct broker_sample {
    bool have_cpu = false, have_sleeps = false;
    std::uint64_t cpu_start = 0, cpu_end = 0, sleeps_start = 0, sleeps_end = 0;
    std::uint64_t user_start = 0, user_end = 0; // of cpu_*, the user-space part
    std::uint64_t rss_end = 0, hwm_end = 0;
    // VmRSS and RssAnon, the part of it that is the broker's own heap and stacks (VmRSS also counts file pages, the
    // binary's and libraries' code, that handling the first connections may fault in).
    loadgen::rss_reading before, after_connect;
};

std::string fmt_double(double v, int prec) {
    if (!std::isfinite(v)) return "null";
    return strf("%.*f", prec, v);
}

} // namespace

int main(int argc, char** argv) {
    options o;
    CLI::App app{"loadgen: MQTT 3.1.1 load generator for loopback brokers (ringmq perf tools)"};
    app.add_option("--host", o.host, "broker address, loopback only")->capture_default_str();
    app.add_option("--first-source", o.first_source,
                   "IPv4 source 127.0.0.N of the first 8192 connections (the next 8192 come from N+1, and so on), "
                   "so that several generators against one broker port do not share the ephemeral ports of one "
                   "source address")
        ->check(CLI::Range(1, 254))
        ->capture_default_str();
    app.add_option("--port", o.port, "broker port")->required();
    app.add_option("--scenario", o.scenario, "one-to-one, pairs, fanout, fanin, idle, connect-storm or retained")
        ->capture_default_str()
        ->check(CLI::IsMember({"one-to-one", "pairs", "fanout", "fanin", "idle", "connect-storm", "retained"}));
    auto* pubs_opt = app.add_option("--publishers", o.publishers, "publishers (pairs: 10, fanin: 100)");
    auto* subs_opt = app.add_option("--subscribers", o.subscribers, "subscribers (fanout: 100)");
    auto* idle_opt = app.add_option("--idle", o.idle, "extra connections that only keep alive (idle: 1000)");
    app.add_option("--qos", o.qos, "QoS of publishes and subscriptions")
        ->capture_default_str()
        ->check(CLI::Range(0, 2));
    app.add_option("--payload", o.payload, "payload bytes, >= 16 (timestamp + sequence)")
        ->capture_default_str()
        ->check(CLI::Range(16u, 1000000u));
    app.add_option("--rate", o.rate, "messages per second per publisher, 0 = closed loop")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 10000000.0));
    app.add_option("--inflight", o.inflight,
                   "closed-loop window per publisher (messages not yet received by all its subscribers); also the "
                   "cap on unacknowledged QoS 1/2 publishes, and connect-storm's connection attempts at once")
        ->capture_default_str()
        ->check(CLI::Range(1u, 65535u));
    app.add_option("--spin-us", o.spin_us,
                   "poll without sleeping when the next scheduled send is at most this many microseconds away")
        ->capture_default_str()
        ->check(CLI::Range(0u, 1000000u));
    app.add_flag("--kernel-stamps", o.kernel_stamps,
                 "also measure latency to the kernel's receive time of each read (SO_TIMESTAMPNS, klat_* in the JSON): "
                 "the broker's latency without the generator's own wake-up and queueing. Turns on the kernel's "
                 "receive timestamps for every socket on the host while it runs, a few tens of ns per segment");
    app.add_flag("--poll", o.poll,
                 "never sleep: poll the sockets without blocking, as a generator on its own core can. The broker's "
                 "sends then find no sleeping reader to wake, a cost that loopback charges to the sender and a real "
                 "network to the receiving host");
    app.add_flag("--catch-up", o.catch_up,
                 "fixed rate: a scheduled send that cannot go (QoS window full, socket backed up) is kept and sent, "
                 "late, as soon as it can, instead of skipped, so its wait counts in the latency from the schedule "
                 "(ilat_* in the JSON); slots more than a second late are still skipped and counted");
    app.add_option("--duration", o.duration, "measured seconds")->capture_default_str()->check(CLI::Range(0.1, 3600.0));
    app.add_option("--warmup", o.warmup, "seconds of load before measuring")
        ->capture_default_str()
        ->check(CLI::Range(0.0, 3600.0));
    app.add_option("--broker-pid", o.broker_pid, "broker pid: report its CPU time and memory from /proc")
        ->check(CLI::Range(1, INT_MAX));
    app.add_flag("--json", o.json, "print one JSON line on stdout at the end (the summary goes to stderr)");
    app.add_option("--topic-prefix", o.topic_prefix, "topic prefix (default lg/<pid>)");
    app.add_option(
        "--client-prefix", o.client_prefix,
        "client id prefix: ids are <prefix>-<thread>-<index> (default lg<pid>; a fixed one puts each client on "
        "the same broker shard every run)");
    app.add_option("--threads", o.threads, "event-loop threads; groups of clients are dealt round-robin")
        ->capture_default_str()
        ->check(CLI::Range(1u, 64u));
    app.add_option("--retained", o.retained,
                   "retained: topics <prefix>/r/<i>/s stored before the run; each subscriber then keeps --inflight "
                   "SUBSCRIBEs to <prefix>/r/<j>/# outstanding, each answered by one retained message")
        ->capture_default_str()
        ->check(CLI::Range(1u, 10000000u));
    app.add_option("--keepalive", o.keepalive, "MQTT keep-alive seconds")
        ->capture_default_str()
        ->check(CLI::Range(1, 65535));
    CLI11_PARSE(app, argc, argv);

    for (int i = 0; i < 7; ++i)
        if (o.scenario == scenario_names[i]) o.kind = static_cast<scenario_kind>(i);
    if (const std::string why = settle_counts(o, pubs_opt, subs_opt, idle_opt); !why.empty()) {
        std::fprintf(stderr, "loadgen: %s\n", why.c_str());
        return 1;
    }
    if (o.catch_up && (o.rate <= 0 || o.kind == scenario_kind::idle || o.kind == scenario_kind::connect_storm ||
                       o.kind == scenario_kind::retained)) {
        std::fprintf(stderr, "loadgen: --catch-up needs publishers at a fixed rate (--rate)\n");
        return 1;
    }
    if (o.topic_prefix.empty()) o.topic_prefix = strf("lg/%d", getpid());
    if (o.client_prefix.empty()) o.client_prefix = strf("lg%d", getpid());
    if (o.client_prefix.size() > 100) {
        std::fprintf(stderr, "loadgen: --client-prefix must be under 100 bytes\n");
        return 1;
    }
    if (o.topic_prefix.find_first_of("+#") != std::string::npos || o.topic_prefix.size() > 400) {
        std::fprintf(stderr, "loadgen: --topic-prefix must not contain wildcards and must be under 400 bytes\n");
        return 1;
    }
    sockaddr_storage addr{};
    socklen_t addr_len = 0;
    if (std::string why; !resolve_loopback(o.host, o.port, addr, addr_len, why)) {
        std::fprintf(stderr, "loadgen: %s\n", why.c_str());
        return 1;
    }
    if (o.broker_pid && !loadgen::read_cpu_split(o.broker_pid)) {
        std::fprintf(stderr, "loadgen: cannot read /proc/%d/stat\n", o.broker_pid);
        return 1;
    }

    // The hard stop covers everything, set-up and drain included, whatever state the broker or we are in.
    std::signal(SIGPIPE, SIG_IGN);
    std::signal(SIGALRM, hard_stop);
    {
        // Storing the retained set comes first and is bounded on its own: half a second per 10k topics, and 30 s.
        const double seeding = o.kind == scenario_kind::retained ? 30.0 + o.retained / 20000.0 : 0.0;
        const double limit = o.warmup + o.duration + 10.0 + seeding;
        itimerval it{};
        it.it_value.tv_sec = static_cast<time_t>(limit);
        it.it_value.tv_usec = static_cast<suseconds_t>((limit - std::floor(limit)) * 1e6);
        setitimer(ITIMER_REAL, &it, nullptr);
    }

    const std::vector<group_spec> groups = plan_groups(o);
    const std::uint32_t threads = o.threads;
    std::uint64_t total_conns = o.idle;
    for (const group_spec& g : groups)
        total_conns += g.publishers + g.subscribers;
    if (o.kind == scenario_kind::retained) total_conns += o.subscribers;
    const std::uint64_t storm_conns = o.kind == scenario_kind::connect_storm ? std::uint64_t{o.inflight} * threads : 0;
    if (const std::uint64_t all = total_conns + storm_conns;
        all != 0 && o.first_source + (all - 1) / conns_per_source > 254) {
        std::fprintf(stderr, "loadgen: --first-source %u leaves too few source addresses for %" PRIu64 " connections\n",
                     o.first_source, all);
        return 1;
    }
    {
        rlimit rl{};
        getrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur < rl.rlim_max) {
            // An unlimited hard limit still stops at fs.nr_open (1048576 by default), which setrlimit will not exceed.
            rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? rlim_t{1} << 20 : rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
            getrlimit(RLIMIT_NOFILE, &rl);
        }
        if (total_conns + storm_conns + 64 > rl.rlim_cur) {
            std::fprintf(stderr,
                         "loadgen: %" PRIu64 " connections need more file descriptors than the limit %" PRIu64
                         " (raise ulimit -n)\n",
                         total_conns + storm_conns, static_cast<std::uint64_t>(rl.rlim_cur));
            return 1;
        }
    }

    if (o.kind == scenario_kind::retained) {
        const std::int64_t t = mono_ns();
        if (std::string why; !seed_retained(o, addr, addr_len, why)) {
            std::fprintf(stderr, "loadgen: storing the retained set: %s\n", why.c_str());
            if (o.json)
                std::printf("{\"scenario\":\"retained\",\"status\":\"error\",\"error\":\"storing the retained set "
                            "failed\"}\n");
            return 2;
        }
        std::fprintf(stderr, "loadgen: %u retained topics stored in %.2f s\n", o.retained,
                     static_cast<double>(mono_ns() - t) / 1e9);
    }

    shared_state shared;
    broker_sample bs;
    if (o.broker_pid) bs.before = loadgen::read_rss(o.broker_pid);

    std::vector<std::unique_ptr<worker>> workers;
    {
        std::vector<std::vector<group_spec>> per(threads);
        for (std::size_t i = 0; i < groups.size(); ++i)
            per[i % threads].push_back(groups[i]);
        for (std::uint32_t w = 0; w < threads; ++w) {
            const std::uint32_t idle = o.idle / threads + (w < o.idle % threads ? 1 : 0);
            const std::uint32_t queriers =
                o.kind != scenario_kind::retained ? 0 : o.subscribers / threads + (w < o.subscribers % threads ? 1 : 0);
            workers.push_back(std::make_unique<worker>(o, shared, w, addr, addr_len, per[w], idle,
                                                       std::max<std::uint32_t>(o.publishers, 1), queriers));
        }
    }
    const std::int64_t start = mono_ns();
    std::vector<std::thread> running;
    for (auto& w : workers)
        running.emplace_back([&w] { w->run(); });

    auto finish = [&](int code) {
        for (auto& t : running)
            t.join();
        return code;
    };
    auto report_failure = [&]() {
        std::string err;
        {
            std::lock_guard lock(shared.mu);
            err = shared.error;
        }
        std::fprintf(stderr, "loadgen: %s\n", err.c_str());
        if (o.json) {
            std::string e;
            for (const char ch : err) {
                if (ch == '"' || ch == '\\') e += '\\';
                if (static_cast<unsigned char>(ch) >= 0x20) e += ch;
            }
            std::printf("{\"scenario\":\"%s\",\"status\":\"error\",\"error\":\"%s\"}\n", o.scenario.c_str(), e.c_str());
        }
        std::fflush(stdout);
    };

    // Set-up: every connection CONNACKed (and SUBACKed) before a single message goes out.
    std::int64_t next_note = start + ns_per_s;
    while (shared.ready_workers.load() < threads && !shared.failed.load()) {
        sleep_until(std::min(mono_ns() + 5 * ns_per_ms, next_note));
        if (mono_ns() >= next_note) {
            std::fprintf(stderr, "loadgen: connecting %u/%" PRIu64 "\n", shared.connected.load(), total_conns);
            next_note += ns_per_s;
        }
    }
    if (shared.failed.load()) {
        report_failure();
        return finish(2);
    }
    const double connect_s = static_cast<double>(mono_ns() - start) / 1e9;
    if (o.broker_pid) bs.after_connect = loadgen::read_rss(o.broker_pid);

    const std::int64_t t0 = mono_ns() + 20 * ns_per_ms;
    const std::int64_t ms = t0 + static_cast<std::int64_t>(o.warmup * 1e9);
    const std::int64_t me = ms + static_cast<std::int64_t>(o.duration * 1e9);
    shared.measure_start.store(ms);
    shared.measure_end.store(me);
    shared.t0.store(t0, std::memory_order_release);
    std::fprintf(stderr, "loadgen: %s, %" PRIu64 " connections up in %.2f s; %.1f s warm-up, %.1f s measured\n",
                 o.scenario.c_str(), total_conns, connect_s, o.warmup, o.duration);

    const bool messaging = o.kind != scenario_kind::idle && o.kind != scenario_kind::connect_storm;
    bool got_ms = false;
    for (std::int64_t k = 1; !shared.failed.load();) {
        const std::int64_t tick = t0 + k * ns_per_s + 50 * ns_per_ms;
        sleep_until(std::min({got_ms ? tick : ms, tick, me}));
        const std::int64_t now = mono_ns();
        if (!got_ms && now >= ms) {
            got_ms = true;
            if (o.broker_pid) {
                const auto c = loadgen::read_cpu_split(o.broker_pid);
                bs.have_cpu = c.has_value();
                bs.cpu_start = c ? c->total() : 0;
                bs.user_start = c ? c->user : 0;
                const auto z = loadgen::read_sleeps(o.broker_pid);
                bs.have_sleeps = z.has_value();
                bs.sleeps_start = z.value_or(0);
                // Idle connections settle during the warm-up (the broker may allocate lazily after CONNACK).
                if (o.kind == scenario_kind::idle) bs.after_connect = loadgen::read_rss(o.broker_pid);
            }
        }
        if (now >= tick) {
            std::uint64_t delivered = 0, connacks = 0, p99 = 0;
            {
                std::lock_guard lock(shared.mu);
                delivered = shared.interval_delivered;
                connacks = shared.interval_connacks;
                p99 = shared.interval_latency.quantile(0.99);
                shared.interval_delivered = shared.interval_connacks = 0;
                shared.interval_latency.reset();
            }
            const char* phase = now - 50 * ns_per_ms < ms ? "warm-up" : "measure";
            if (messaging)
                std::fprintf(stderr, "loadgen: %3" PRId64 " s %-7s %10" PRIu64 " msg/s  p99 %8.1f us\n", k, phase,
                             delivered, static_cast<double>(p99) / 1e3);
            else if (o.kind == scenario_kind::connect_storm)
                std::fprintf(stderr, "loadgen: %3" PRId64 " s %-7s %10" PRIu64 " CONNACK/s\n", k, phase, connacks);
            else
                std::fprintf(stderr, "loadgen: %3" PRId64 " s %-7s %10" PRIu64 " connections\n", k, phase, total_conns);
            ++k;
        }
        if (now >= me) break;
    }
    if (o.broker_pid && !shared.failed.load()) {
        const auto c = loadgen::read_cpu_split(o.broker_pid);
        bs.have_cpu = bs.have_cpu && c.has_value();
        bs.cpu_end = c ? c->total() : 0;
        bs.user_end = c ? c->user : 0;
        const auto z = loadgen::read_sleeps(o.broker_pid);
        bs.have_sleeps = bs.have_sleeps && z.has_value();
        bs.sleeps_end = z.value_or(0);
        bs.rss_end = loadgen::read_status_bytes(o.broker_pid, "VmRSS").value_or(0);
        bs.hwm_end = loadgen::read_status_bytes(o.broker_pid, "VmHWM").value_or(0);
    }
    for (auto& t : running)
        t.join();
    running.clear();
    if (shared.failed.load()) {
        report_failure();
        return 2;
    }

    // Totals.
    worker_result r;
    for (const auto& w : workers) {
        const worker_result& x = w->result;
        r.latency.merge(x.latency);
        r.kernel_latency.merge(x.kernel_latency);
        r.schedule_latency.merge(x.schedule_latency);
        r.delivered_window += x.delivered_window;
        r.sent_measured += x.sent_measured;
        r.expected += x.expected;
        r.received_measured += x.received_measured;
        r.reordered += x.reordered;
        r.duplicates += x.duplicates;
        r.send_skipped += x.send_skipped;
        r.window_stalls += x.window_stalls;
        r.rate_lag_resets += x.rate_lag_resets;
        r.connacks_window += x.connacks_window;
        r.storm_connects += x.storm_connects;
    }
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const double own_cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    const double dur = static_cast<double>(me - ms) / 1e9;
    const double msgs_per_s = static_cast<double>(r.delivered_window) / dur;
    // Fixed rate: the sends the schedule asked for in the window, against which sent_measured shows a shortfall
    // (sends that went late but inside the window count as sent; slots skipped outright, in send_skipped).
    const double scheduled = o.rate > 0 ? o.rate * static_cast<double>(o.publishers) * dur : 0;
    const double connects_per_s = static_cast<double>(r.connacks_window) / dur;
    const std::uint64_t lost = r.expected > r.received_measured ? r.expected - r.received_measured : 0;
    const double loss_pct = r.expected ? 100.0 * static_cast<double>(lost) / static_cast<double>(r.expected) : 0.0;
    const double cpu_s = bs.have_cpu ? loadgen::ticks_to_seconds(bs.cpu_end - bs.cpu_start) : NAN;
    const double user_s = bs.have_cpu ? loadgen::ticks_to_seconds(bs.user_end - bs.user_start) : NAN;
    const double per_cpu =
        messaging ? static_cast<double>(r.delivered_window) / cpu_s : static_cast<double>(r.connacks_window) / cpu_s;
    // A thread that ended inside the window takes its count with it: no figure rather than a wrapped one.
    const double sleeps =
        bs.have_sleeps && bs.sleeps_end >= bs.sleeps_start ? static_cast<double>(bs.sleeps_end - bs.sleeps_start) : NAN;
    const double per_sleep = messaging && sleeps > 0 ? static_cast<double>(r.delivered_window) / sleeps : NAN;
    const std::uint64_t rss_conns = o.kind == scenario_kind::idle ? o.idle : total_conns;
    const auto per_conn = [&](std::uint64_t before, std::uint64_t after) {
        return o.broker_pid && rss_conns
                   ? (static_cast<double>(after) - static_cast<double>(before)) / double(rss_conns)
                   : NAN;
    };
    const double rss_per_conn = per_conn(bs.before.rss, bs.after_connect.rss);
    // No RssAnon line (kernels before 4.5) is no figure.
    const double anon_per_conn =
        bs.before.anon && bs.after_connect.anon ? per_conn(bs.before.anon, bs.after_connect.anon) : NAN;
    auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / 1e3; };
    const histogram& h = r.latency;

    // Human summary: stdout, or stderr when stdout carries the JSON line.
    FILE* hs = o.json ? stderr : stdout;
    if (messaging) {
        std::fprintf(hs, "scenario   %s: %u publishers, %u subscribers, %u idle; QoS %d, %u B payload, ",
                     o.scenario.c_str(), o.publishers, o.subscribers, o.idle, o.qos, o.payload);
        if (o.rate > 0)
            std::fprintf(hs, "%.0f msg/s per publisher\n", o.rate);
        else
            std::fprintf(hs, "closed loop, window %u\n", o.inflight);
    } else if (o.kind == scenario_kind::connect_storm) {
        std::fprintf(hs, "scenario   connect-storm: %u connection attempts at once per thread, %u idle\n", o.inflight,
                     o.idle);
    } else {
        std::fprintf(hs, "scenario   idle: %u connections\n", o.idle);
    }
    std::fprintf(hs, "window     %.2f s measured after %.2f s warm-up; set-up %.2f s\n", dur, o.warmup, connect_s);
    if (messaging) {
        std::fprintf(hs, "delivered  %.0f msg/s (%" PRIu64 " messages; %" PRIu64 " sent in the window)\n", msgs_per_s,
                     r.delivered_window, r.sent_measured);
        if (o.rate > 0 && scheduled > 0)
            std::fprintf(hs, "rate       %.1f%% of the %.0f sends scheduled in the window went%s\n",
                         100.0 * static_cast<double>(r.sent_measured) / scheduled, scheduled,
                         static_cast<double>(r.sent_measured) < 0.95 * scheduled
                             ? ": the generator did not keep the rate, the figures are for a lower load"
                             : "");
        std::fprintf(hs, "latency    p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f us (%" PRIu64 " samples)\n",
                     us(h.quantile(0.50)), us(h.quantile(0.90)), us(h.quantile(0.99)), us(h.quantile(0.999)),
                     us(h.max()), h.count());
        if (o.kernel_stamps && r.kernel_latency.count() != 0) {
            const histogram& kh = r.kernel_latency;
            std::fprintf(hs, "  kernel   p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f us (to the kernel's receive time)\n",
                         us(kh.quantile(0.50)), us(kh.quantile(0.90)), us(kh.quantile(0.99)), us(kh.quantile(0.999)));
        }
        if (o.rate > 0 && r.schedule_latency.count() != 0) {
            const histogram& sh = r.schedule_latency;
            std::fprintf(hs,
                         "  schedule p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f us (from the scheduled send "
                         "time; skipped sends not in it)\n",
                         us(sh.quantile(0.50)), us(sh.quantile(0.90)), us(sh.quantile(0.99)), us(sh.quantile(0.999)),
                         us(sh.max()));
        }
        std::fprintf(hs,
                     "integrity  lost %" PRIu64 " of %" PRIu64 " (%.4f%%), reordered %" PRIu64 ", duplicates %" PRIu64
                     ", skipped sends %" PRIu64 ", written-off windows %" PRIu64 "\n",
                     lost, r.expected, loss_pct, r.reordered, r.duplicates, r.send_skipped, r.window_stalls);
    } else if (o.kind == scenario_kind::connect_storm) {
        std::fprintf(hs, "accepted   %.0f connections/s (%" PRIu64 " CONNACKs in the window)\n", connects_per_s,
                     r.connacks_window);
    }
    if (o.broker_pid) {
        std::fprintf(hs, "broker     pid %d: CPU %.2f s", o.broker_pid, cpu_s);
        if (o.kind != scenario_kind::idle)
            std::fprintf(hs, ", %.0f %s per CPU-second", per_cpu, messaging ? "deliveries" : "connections");
        if (messaging && bs.have_sleeps)
            std::fprintf(hs, ", %.0f sleeps/s (%.1f deliveries per sleep)", sleeps / dur, per_sleep);
        std::fprintf(hs, "; RSS %.1f MiB, peak %.1f MiB\n", static_cast<double>(bs.rss_end) / 1048576.0,
                     static_cast<double>(bs.hwm_end) / 1048576.0);
        if (rss_conns && o.kind != scenario_kind::connect_storm) {
            std::fprintf(hs, "memory     %.0f B RSS", rss_per_conn);
            if (std::isfinite(anon_per_conn)) std::fprintf(hs, " (%.0f B of it anonymous)", anon_per_conn);
            std::fprintf(hs, " per connection (%" PRIu64 " connections)\n", rss_conns);
        }
    }
    std::fprintf(hs, "loadgen    CPU %.2f s\n", own_cpu);

    if (o.json) {
        std::string j = "{";
        auto add = [&j](const char* k, const std::string& v) {
            if (j.size() > 1) j += ',';
            j += '"';
            j += k;
            j += "\":";
            j += v;
        };
        auto num = [](std::uint64_t v) { return std::to_string(v); };
        add("scenario", "\"" + o.scenario + "\"");
        add("status", "\"ok\"");
        add("qos", std::to_string(o.qos));
        add("payload", num(o.payload));
        add("publishers", num(o.publishers));
        add("subscribers", num(o.subscribers));
        add("idle", num(o.idle));
        add("connections", num(total_conns));
        add("rate", fmt_double(o.rate, 3));
        add("inflight", num(o.inflight));
        add("threads", num(o.threads));
        add("spin_us", num(o.spin_us));
        add("poll", o.poll ? "true" : "false");
        add("kernel_stamps", o.kernel_stamps ? "true" : "false");
        add("catch_up", o.catch_up ? "true" : "false");
        add("warmup_s", fmt_double(o.warmup, 3));
        add("duration_s", fmt_double(dur, 3));
        add("connect_s", fmt_double(connect_s, 3));
        add("sent", num(r.sent_measured));
        add("delivered", num(r.delivered_window));
        add("msgs_per_s", fmt_double(msgs_per_s, 1));
        add("sends_scheduled", fmt_double(scheduled, 0));
        add("expected", num(r.expected));
        add("received", num(r.received_measured));
        add("lost", num(lost));
        add("loss_pct", fmt_double(loss_pct, 6));
        add("reordered", num(r.reordered));
        add("duplicates", num(r.duplicates));
        add("send_skipped", num(r.send_skipped));
        add("window_stalls", num(r.window_stalls));
        add("rate_lag_resets", num(r.rate_lag_resets));
        add("lat_samples", num(h.count()));
        add("lat_min_us", fmt_double(us(h.min()), 2));
        add("lat_mean_us", fmt_double(h.mean() / 1e3, 2));
        add("lat_p50_us", fmt_double(us(h.quantile(0.50)), 2));
        add("lat_p90_us", fmt_double(us(h.quantile(0.90)), 2));
        add("lat_p99_us", fmt_double(us(h.quantile(0.99)), 2));
        add("lat_p999_us", fmt_double(us(h.quantile(0.999)), 2));
        add("lat_max_us", fmt_double(us(h.max()), 2));
        const histogram& kh = r.kernel_latency;
        // No stamp at all (a kernel that gave none) is no figure, not a latency of 0.
        const bool kernel_figures = o.kernel_stamps && kh.count() != 0;
        const auto kq = [&](double q) { return kernel_figures ? fmt_double(us(kh.quantile(q)), 2) : "null"; };
        add("klat_samples", o.kernel_stamps ? num(kh.count()) : "null");
        add("klat_p50_us", kq(0.50));
        add("klat_p90_us", kq(0.90));
        add("klat_p99_us", kq(0.99));
        add("klat_p999_us", kq(0.999));
        // Fixed rate only: a closed loop has no schedule.
        const histogram& sh = r.schedule_latency;
        const bool schedule_figures = o.rate > 0 && sh.count() != 0;
        const auto sq = [&](double q) { return schedule_figures ? fmt_double(us(sh.quantile(q)), 2) : "null"; };
        add("ilat_p50_us", sq(0.50));
        add("ilat_p90_us", sq(0.90));
        add("ilat_p99_us", sq(0.99));
        add("ilat_p999_us", sq(0.999));
        add("ilat_max_us", schedule_figures ? fmt_double(us(sh.max()), 2) : "null");
        add("connacks", num(r.connacks_window));
        add("connects_per_s", fmt_double(connects_per_s, 1));
        add("broker_pid", o.broker_pid ? std::to_string(o.broker_pid) : "null");
        add("broker_cpu_s", fmt_double(cpu_s, 3));
        add("broker_user_s", fmt_double(user_s, 3));
        add("broker_sys_s", fmt_double(cpu_s - user_s, 3));
        add("deliveries_per_cpu_s", messaging ? fmt_double(per_cpu, 1) : "null");
        add("broker_sleeps_per_s", fmt_double(sleeps / dur, 1));
        add("deliveries_per_broker_sleep", fmt_double(per_sleep, 2));
        add("connects_per_cpu_s", o.kind == scenario_kind::connect_storm ? fmt_double(per_cpu, 1) : "null");
        add("broker_rss_bytes", o.broker_pid ? num(bs.rss_end) : "null");
        add("broker_hwm_bytes", o.broker_pid ? num(bs.hwm_end) : "null");
        add("rss_before_bytes", o.broker_pid ? num(bs.before.rss) : "null");
        add("rss_after_connect_bytes", o.broker_pid ? num(bs.after_connect.rss) : "null");
        add("rss_per_conn_bytes",
            o.kind != scenario_kind::connect_storm ? fmt_double(rss_per_conn, 1) : std::string("null"));
        add("rss_anon_per_conn_bytes",
            o.kind != scenario_kind::connect_storm ? fmt_double(anon_per_conn, 1) : std::string("null"));
        add("loadgen_cpu_s", fmt_double(own_cpu, 3));
        add("loadgen_sleeps", num(static_cast<std::uint64_t>(ru.ru_nvcsw)));
        j += "}\n";
        std::fputs(j.c_str(), stdout);
    }
    std::fflush(stdout);
    return 0;
}
