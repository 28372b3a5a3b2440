#include "broker/shard.hpp"

#include "broker/route_hash.hpp"
#include "io/timer.hpp"
#include "mqtt/codec.hpp"
#include "mqtt/validate.hpp"
#include "routing/match.hpp"
#include "util/assert.hpp"
#include "util/clock.hpp"
#include "util/hash.hpp"
#include "util/log.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <arpa/inet.h>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstring>

namespace ringmq::broker {

namespace {

// $SYS topics are the broker's own: left out of the message counters (as EMQ X leaves them out).
bool sys_topic(std::string_view topic) { return topic.starts_with("$SYS/"); }

// An average for a log line: 0 where there was nothing to average over.
double per(uint64_t total, uint64_t count) { return count == 0 ? 0 : static_cast<double>(total) / double(count); }

constexpr unsigned reap_batch = 256;
// Receive buffers for connected clients' multishot recvs. Consumed incrementally (Linux 6.12+), few large buffers
// serve many connections; consumed whole (older kernels), each recv takes a buffer, so more of them are needed.
// The kernel walks the ring's buffers in order, so its copy into them touches all of them in turn: 64 x 16 KiB
// stays in the core's cache where 256 did not (1 KiB 1->1: the kernel's receive copy 18.5% -> 11.6% of the broker's
// profile). A turn that needs more makes some recvs wait a turn (ENOBUFS, re-armed), which cost nothing measurable.
constexpr uint32_t recv_buffers_incremental = 64;
constexpr uint32_t recv_buffers_whole = 512;
constexpr uint32_t recv_buffer_size = 16384;
// Buffers for the first recv of each connection (one-shot, until CONNECT is handled): a CONNECT is usually a few
// dozen bytes, and a larger one is reassembled across recvs like any packet. The count bounds only the CONNECTs taken
// per loop turn (the rest wait a turn, ENOBUFS), and every buffer is touched once connections come: 128 of them were
// 100 B of RSS per connection at 1k idle connections; 32 left a 256-wide connect storm as fast (perf notes in README).
constexpr uint32_t first_recv_buffers = 32;
constexpr uint32_t first_recv_buffer_size = 1024;
// What a client held for a full queue (hold_publisher) may send before its receive is cancelled.
constexpr size_t held_rx_max = recv_buffer_size;
// The largest CONNECT 3.1 or 3.1.1 can make: protocol name (MQIsdp), level, flags and keepalive, then five strings of
// at most 65535 bytes (client id, will topic, will message, user name, password). Before its CONNECT is taken a
// connection may hold no more for a packet than that, whatever mqtt.max_packet_size allows.
constexpr size_t max_connect_remaining = 2 + 6 + 1 + 1 + 2 + 5 * (2 + 65535);
constexpr uint32_t tick_ms = 200;
constexpr int64_t tombstone_keep_ms = 10000;
// A shard that holds its receives warns at most this often (with the number of holds since the last warning).
constexpr int64_t hold_warn_interval_ms = 10000;
// A client whose keepalive ran out while its receives were held is looked at again after this long.
constexpr int64_t held_recheck_ms = 1000;
// A turn that handles its completions for this long or longer is remembered (shard::long_turn_from_).
constexpr int64_t long_turn_ms = 50;
// How long a keepalive's silence may go uncounted while the shard works through a backlog (shard::caught_up_ms_).
constexpr int64_t backlog_credit_ms = 10000;
// A connection whose send failed is closed after this long if its receive has not closed it first (on_send).
constexpr int64_t send_failed_grace_ms = 1000;
// How long a close that sends the client's answers waits for the send pending before them (shard::defer_shutdown).
constexpr int64_t answer_wait_ms = 1000;
// ...and how long when its answers also wait for the messages to other shards they promise (smp_wait): those wait for
// room in another shard's full queue, which that shard makes as it takes, however slowly.
constexpr int64_t smp_answer_wait_ms = 10000;
// Entries of each shard's io_uring submission queue: a turn that queues more submits midway (ring::on_forced_submit).
constexpr unsigned sq_entries = 4096;
// The most of a backlog a close that sends the client's answers joins into one send (send_queue::unseal): about what
// a loopback socket takes at once (net.ipv4.tcp_wmem's maximum on Debian); past it the answers at its end are cut by
// the shutdown, as the rest of the backlog is.
constexpr size_t unseal_max_bytes = 4 << 20;
// A closing connection whose receive was cancelled gets io_uring's SHUTDOWN if that receive has not ended after this
// long (close_op_done): the cancel ends it within the submission on every kernel seen so far.
constexpr int64_t recv_cancel_grace_ms = 1000;
static_assert(tick_ms == listener::accept_pacer::pause_ms);
// How a receive that ended without bytes ended (1-3: connection::left_how keeps it in two bits), and the close reason.
constexpr uint8_t recv_end(int res) { return res == 0 ? 1 : res == -ECONNRESET ? 2 : 3; }
constexpr const char* recv_end_reason(uint8_t end) {
    return end == 1 ? "closed" : end == 2 ? "econnreset" : "socket_error";
}
// 1024 ticks of 200 ms: a 205 s horizon covers the usual keepalives (60 s x 1.5); a longer deadline is looked at
// once per horizon and put back.
constexpr uint32_t deadline_slots = 1024;
constexpr int64_t shutdown_grace_ms = 3000;
// Retained reads (a SUBSCRIBE's retained messages): each turn they look at no more than node.retained_reads_per_turn
// stored topics in all, node.retained_read_slice per session in turn (defaults in config.hpp), so a filter over a
// million retained topics holds the shard's other clients up by a slice, not by the whole read (perf/retained_read:
// another client's ping p99 0.3 ms during a 1M-topic read, where one 90 ms stall was). A read sends only while its
// subscriber's send queue is under read_pace_bytes (and under half of mqtt.max_outgoing_bytes, or of 64 KiB while the
// shard is over its share of mqtt.max_outgoing_bytes_total): it waits for a slow reader instead of dropping what it
// reads.
constexpr uint64_t read_pace_bytes = 256 * 1024;
// Sends started per loop turn: node.sends_per_turn. A loopback send costs the sender the receiver's side as well, about
// 9 us: a QoS 0 message to 10k subscribers was 90 ms of sends in one turn, and the shard's other clients waited for all
// of them. With a budget they wait for a slice; the rest go out over the next turns (see flush). 128 by default rather
// than 256 (config.hpp): the slice is half as long (perf/broadcast at 10k subscribers: another client's ping p99 4.3 ms
// against 6.0 ms), and the issue's scenarios stay under it (fan-out 1->100 sends to 101 connections a turn at most).

int64_t keepalive_limit_ms(const connection& c, const config::mqtt_limits& lim) {
    return static_cast<int64_t>(c.keepalive * 1000.0 * lim.keepalive_multiplier);
}

// How long a connected client may stay quiet (since last_rx_ms), or 0 for ever: its keepalive; with keepalive 0, while
// part of a packet waits, mqtt.connect_timeout since its last bytes (keepalive 0 sets no other deadline, and the part
// holds up to mqtt.max_packet_size of memory; a large packet coming slowly but steadily is not cut).
int64_t quiet_limit_ms(const connection& c, const config::mqtt_limits& lim) {
    if (c.keepalive != 0) return keepalive_limit_ms(c, lim);
    return c.rx.empty() ? 0 : static_cast<int64_t>(lim.connect_timeout_ms);
}

void init_file_table(io::ring& r, const config::config& cfg, unsigned id) {
    if (!cfg.budgets.fixed_files) return;
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == 0) return;
    const auto n = static_cast<unsigned>(
        std::min<uint64_t>({lim.rlim_cur, max_file_slots, std::max<uint64_t>(cfg.limits.max_connections, 1)}));
    std::string why;
    if (r.init_files(n, why)) {
        log::debug("shard {}: {} slots for sockets in its ring's file table", id, n);
        return;
    }
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true))
        log::warn("shard {}: the kernel refused an io_uring file table of {} slots ({}): its connections keep their "
                  "descriptors, and the open-file limit bounds them with the whole process's",
                  id, n, why);
}

// The topic and payload of a complete QoS 0 PUBLISH frame (header h) at p; false when the topic overruns it.
// The topic a PUBLISH body starts with, unchecked; false when the body is too short to hold it.
bool leading_topic(std::span<const uint8_t> body, std::string_view& topic) {
    if (body.size() < 2) return false;
    const size_t tl = size_t{body[0]} << 8 | body[1];
    if (2 + tl > body.size()) return false;
    topic = std::string_view(reinterpret_cast<const char*>(body.data()) + 2, tl);
    return true;
}

bool qos0_parts(const uint8_t* p, const mqtt::fixed_header& h, std::string_view& topic,
                std::span<const uint8_t>& payload) {
    const std::span<const uint8_t> body(p + h.header_len, h.remaining_length);
    if (!leading_topic(body, topic)) return false;
    payload = body.subspan(2 + topic.size());
    return true;
}

} // namespace

node::node(const config::config& c, unsigned n)
    : cfg(c), mqtt_shards(n), smp(n + 1, c.budgets.smp_queue_size), started_at(static_cast<int64_t>(::time(nullptr))),
      gate_closes(std::make_unique<std::atomic<uint64_t>[]>(size_t{n} * n)) {}

// An idle connection's memory is mostly this object: keep it in mimalloc's 256-byte size class.
static_assert(sizeof(connection) <= 256, "connection outgrew the 256-byte size class");

connection::connection(shard& s, int f, listener::peer_addr p) : sh(s), fd(f), peer(p) {}

void connection::on_recv(int res, uint32_t flags) { sh.on_recv(*this, res, flags); }
void connection::on_send(int res, uint32_t flags) { sh.on_send(*this, res, flags); }

shard::shard(node& n, unsigned id, int listen_fd)
    : node_(n), cfg_(n.cfg), id_(id), n_(n.mqtt_shards), parts_(n.smp.size()), listen_fd_(listen_fd),
      deadlines_(tick_ms, deadline_slots), outbox_(n.smp, id), peers_(n.smp, n.cfg.budgets.ring_wakeups) {
    trie_.set_self(id_);
    node_.smp.set_waker(id_, [this] { waker_.wake(); });
    out_share_ = std::max<uint64_t>(cfg_.limits.max_outgoing_bytes_total / n_, 1);
    out_under_ = out_share_ - out_share_ / 8;
    out_mark_ = std::min(out_mark_max, cfg_.limits.max_outgoing_bytes);
    out_limit_ = cfg_.limits.max_outgoing_bytes;
    if (const auto& lim = cfg_.limits; lim.publisher_hold_ms != 0) {
        if (lim.max_queued_messages != 0) hold_mark_messages_ = lim.max_queued_messages - lim.max_queued_messages / 4;
        if (lim.max_queued_bytes != 0) hold_mark_bytes_ = lim.max_queued_bytes - lim.max_queued_bytes / 4;
        // What a queue takes past its mark from other shards' messages routed before their gates closed (see
        // session::burst_room). Each other shard has at most the bound on its way past the message that finds the
        // queue at its mark: it goes on only by what the queue's shard had taken when this turn began, and the word
        // to close is out before that shard counts the messages that caused it as taken (drain_smp), so it is read
        // in the same turn. The room goes in 2 (n - 1) + 1 parts: half of it for those, half for what no bound
        // covers (a message past it per held client, clients that cannot be held).
        const uint64_t parts = 2 * (uint64_t{n_} - 1) + 1;
        const uint64_t times = lim.publisher_hold_burst;
        if (lim.max_queued_messages != 0) {
            const uint64_t q = lim.max_queued_messages;
            const uint64_t room = q - hold_mark_messages_ + std::max<uint64_t>(q / 4, 1) + times * q;
            ungated_half_ = std::max<uint64_t>(room / parts / 2, 1);
        }
        const uint64_t burst_bytes = lim.max_cross_shard_bytes >> 10 << 10; // session::limits::burst_kib
        if (lim.max_queued_bytes != 0) {
            const uint64_t qb = lim.max_queued_bytes;
            const uint64_t burst = times != 0 ? std::min<uint64_t>(burst_bytes, times * qb) : 0;
            ungated_bytes_half_ = std::max<uint64_t>((qb - hold_mark_bytes_ + qb / 4 + burst) / parts / 2, 1);
        } else if (times != 0) {
            // No byte limit: the queue takes up to mqtt.max_cross_shard_bytes past its quarter, whatever it held at
            // its mark (session::burst_room), so that the other shards' shares together (under half of it) fit.
            ungated_bytes_half_ = std::max<uint64_t>(burst_bytes / parts / 2, 1);
        }
        ungated_.resize(n_);
        transit_taken_.assign(n_, 0);
        transit_closes_.assign(n_, 0);
        closes_seen_.assign(n_, 0);
        transit_marks_.assign(parts_, reactor::smp_outbox::no_mark);
    }
}

shard::~shard() {
    // Messages that never found room in another shard's queue (the threads have stopped).
    outbox_.drain_backlog(release_message);
}

void shard::request_stop() {
    stop_requested_.store(true, std::memory_order_release);
    waker_.wake();
}

// ---------------------------------------------------------------------------------------------------------------
// The loop

bool shard::run() {
    log::set_shard_tag(static_cast<int>(id_));
    std::string why;
    bool ok = waker_.usable(why) && ring_.init(sq_entries, why);
    // What a full submission queue submits midway through a turn (a closing client's answers, started as it closes;
    // a SUBACK, had the turn's sends begun before its publish) goes only once what the turn queued for other shards so
    // far is visible to them.
    ring_.on_forced_submit([](void* self) { static_cast<shard*>(self)->publish_smp(); }, this);
    const bool inc = ok && io::buffer_ring::incremental_supported(ring_);
    const uint32_t nbufs = inc ? recv_buffers_incremental : recv_buffers_whole;
    ok = ok && bufs_.init(ring_, 0, nbufs, recv_buffer_size, why, inc) &&
         first_bufs_.init(ring_, 1, first_recv_buffers, first_recv_buffer_size, why);
    if (!ok) {
        log::fatal("shard {}: {}", id_, why);
        node_.failed.store(true);
        return false;
    }
    // A receive from a client with much sent fills buffers for as long as the ring has them, before the shard sees
    // any: a client held or paused (node.turn_work_us) in the first of them kept all the rest, about the whole ring
    // (1 MiB). With node.receive_limit (where the kernel has it), at most that and a buffer (the kernel stops after the
    // buffer that reaches it).
    recv_limit_ = io::recv_limit_supported() ? cfg_.budgets.receive_limit : 0;
    log::debug(
        "shard {} started (io_uring {}, {}-entry submission queue, {} x {} B receive buffers{}, {}, {} x {} B for "
        "first packets; per turn {} sends, {} retained topics, {} per session, {} us of routing work; idle poll {} us "
        "from {} packets a wake-up while {}% of polls find work{})",
        id_, ring_.mode(), sq_entries, nbufs, recv_buffer_size, bufs_.incremental() ? " consumed incrementally" : "",
        recv_limit_ != 0             ? fmt::format("receives re-armed every {} B", recv_limit_)
        : io::recv_limit_supported() ? std::string("receives not limited (node.receive_limit = 0)")
        : io::kernel_at_least(6, 17) ? std::string("receives not limited (this kernel refused the limit)")
                                     : std::string("receives not limited (Linux 6.17 has the limit)"),
        first_recv_buffers, first_recv_buffer_size, cfg_.budgets.sends_per_turn, cfg_.budgets.retained_reads_per_turn,
        cfg_.budgets.retained_read_slice, cfg_.budgets.turn_work_us, cfg_.budgets.idle_poll_us,
        cfg_.budgets.idle_poll_min_batch, cfg_.budgets.idle_poll_min_found,
        cfg_.budgets.idle_poll_by_cpu ? ", weighed against sleeping per CPU-second" : "");
    init_file_table(ring_, cfg_, id_);
    cancel_recv_on_close_ = ring_.defer_taskrun() && io::kernel_at_least(6, 13);
    // Only with DEFER_TASKRUN: completions then wait as task work until the shard enters, counted against the batch,
    // rather than interrupting its sleep each.
    batch_wait_ = ring_.can_wait_batch() && ring_.defer_taskrun() && cfg_.budgets.wake_batch_us > 0;
    if (cfg_.budgets.wake_batch_us > 0 && !batch_wait_ && id_ == 0)
        log::warn("node.wake_batch_us = {}: this kernel's io_uring has no minimum wait (Linux 6.12 or newer has it, "
                  "unless node.io_uring_kernel caps the features below it) or the ring runs without DEFER_TASKRUN; "
                  "shards wake at their first completion",
                  cfg_.budgets.wake_batch_us);
    if (batch_wait_ && cfg_.budgets.wake_batch_by_cpu) poll_rules_.weigh_batched_sleeps();
    if (batch_wait_)
        log::debug("shard {} wakes for {} completions, or {} us after it went to sleep with at least one, while its "
                   "first completions come within that{}",
                   id_, cfg_.budgets.wake_batch, cfg_.budgets.wake_batch_us,
                   cfg_.budgets.wake_batch_by_cpu
                       ? ", in the batching epochs of those that weigh batched sleeps against "
                         "plain ones per CPU-second (after a busy epoch whatever the first "
                         "completions do)"
                       : "");
    log::debug("shard {}: a closing connection with only its receive pending has it {}", id_,
               cancel_recv_on_close_ ? "cancelled"
                                     : "ended by io_uring's SHUTDOWN (before Linux 6.13, node.io_uring_kernel below "
                                       "it, or no DEFER_TASKRUN)");
    if (io::can_read_peer_name() && listen_fd_ >= 0) {
        sockaddr_storage ss{};
        socklen_t len = sizeof ss;
        if (getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0)
            peer_by_ring_ = ss.ss_family == AF_INET6  ? sizeof(sockaddr_in6)
                            : ss.ss_family == AF_INET ? sizeof(sockaddr_in)
                                                      : 0;
    }
    log::debug("shard {}: clients' addresses read {}", id_,
               peer_by_ring_ != 0 ? "through io_uring"
                                  : "by getpeername (before Linux 6.7, or node.io_uring_kernel below it)");
    now_ms_ = mono_ms();
    deadlines_.start(now_ms_);
    waker_.arm(ring_);
    waker_.announce(node_.smp, id_, ring_);
    peers_.attach(ring_);
    arm_accept();
    reactor::spawn(gate_, housekeeping());
    node_.ready.fetch_add(1);
    loop();
    ring_.submit(); // the closes queued in the last turn
    // Release whatever is still owned here; messages still in queues are released by the node after all stopped.
    readers_.clear();
    offline_readers_.clear();
    lost_flights_.clear(); // they point at the sessions
    queue_holds_.clear();  // so do these
    stuck_queues_.clear();
    sessions_.clear();
    retained_.clear();
    trie_.clear();
    if (bufs_.enobufs + first_bufs_.enobufs != 0)
        log::info("receive buffers ran out {} times (first packets {}); those connections waited a turn", bufs_.enobufs,
                  first_bufs_.enobufs);
    if (cfg_.budgets.idle_poll_us != 0)
        log::debug("shard {} polled {} times when idle: {} found work, {} slept after {} us; {} times it slept at once "
                   "(under {} packets a wake-up), {} times as polls had found work under {}% of the time, {} times in "
                   "sleeping epochs ({:.0f} packets per CPU-ms sleeping against {:.0f} polling{}, {} epochs)",
                   id_, poll_rules_.count().found + poll_rules_.count().slept, poll_rules_.count().found,
                   poll_rules_.count().slept, cfg_.budgets.idle_poll_us, poll_rules_.count().sparse,
                   cfg_.budgets.idle_poll_min_batch, poll_rules_.count().fruitless, cfg_.budgets.idle_poll_min_found,
                   poll_rules_.count().sleeping_epochs, poll_rules_.score(false) * 1e6, poll_rules_.score(true) * 1e6,
                   poll_rules_.weighs_batched_sleeps() ? ", with plain sleeps" : "", poll_rules_.epochs());
    log::debug("shard {} entered io_uring {} times for {} packets received and {} sent ({:.3f} a packet); a full "
               "submission queue was submitted {} times midway through a turn before the stop",
               id_, ring_.enters(), m_.packets_received, m_.packets_sent,
               per(ring_.enters(), m_.packets_received + m_.packets_sent), forced_before_stop_);
    if (batch_wait_)
        log::debug("shard {} slept {} times waiting for a batch of completions and {} times for the first; a batched "
                   "wake-up reaped {:.2f} completions and received {:.2f} packets, a plain one {:.2f} and {:.2f}",
                   id_, wake_rule_.batched(), wake_rule_.plain(),
                   per(wake_rule_.batched_completions(), wake_rule_.batched()),
                   per(wake_rule_.batched_packets(), wake_rule_.batched()),
                   per(wake_rule_.plain_completions(), wake_rule_.plain()),
                   per(wake_rule_.plain_packets(), wake_rule_.plain()));
    if (poll_rules_.weighs_batched_sleeps()) {
        std::string modes;
        for (const bool poll : {false, true})
            if (poll_rules_.has_mode(poll))
                modes +=
                    fmt::format("{}{}{:.0f} packets per CPU-ms with batched sleeps in {} epochs against {:.0f} with "
                                "plain ones in {}",
                                modes.empty() ? "" : "; ", poll ? "polling first: " : "",
                                poll_rules_.score(poll, true) * 1e6, poll_rules_.epochs(poll, true),
                                poll_rules_.score(poll, false) * 1e6, poll_rules_.epochs(poll, false));
        log::debug("shard {} weighed batched sleeps against plain ones: {}", id_, modes);
    }
    if (install_failures_ != 0)
        log::warn("shard {}: the kernel refused {} sockets a place in its ring's file table; their connections were "
                  "closed",
                  id_, install_failures_);
    if (recv_cancel_fallbacks_ != 0)
        log::info("shard {}: {} closing connections' receive cancels did not end the receive; SHUTDOWN ended those",
                  id_, recv_cancel_fallbacks_);
    log::debug("shard {} ended the pending operations of closing connections {} times by cancelling the receive, {} "
               "times by SHUTDOWN ({} of them after a cancel that did not end the receive)",
               id_, recv_cancels_, shutdowns_, recv_cancel_fallbacks_);
    if (smp_cuts_ != 0)
        log::debug("shard {} left deliveries from other shards for a later turn {} times, and handled {} route updates "
                   "and handoffs queued behind them ahead of them",
                   id_, smp_cuts_, taken_ahead_);
    log::debug("shard {} stopped; it woke other shards {} times through their rings and {} through their eventfds, and "
               "was woken {} times through its ring; its send backlog held at most {} ids",
               id_, peers_.messaged(), peers_.fell_back(), waker_.messages(), backlog_peak_);
    return true;
}

void shard::loop() {
    io::reaped batch[reap_batch];
    while (!stopped_) {
        if (!stopping_ && stop_requested_.load(std::memory_order_acquire)) begin_shutdown();
        read_budget_ = cfg_.budgets.retained_reads_per_turn;
        reads_runnable_ = false;
        if (!readers_.empty()) serve_reads();
        // Published before the sends start: a send is submitted as soon as the submission queue fills, midway
        // through flush(), and a SUBACK must not reach its client before the route adds it promises can be seen
        // (the ring's hook would publish then, see run(), but once here rather than at each forced submission). The
        // wake-ups of other shards are then ahead of the sends in the submission, too.
        publish_smp();
        flush();
        if (!smp_waiters_.empty() || !admin_waiters_.empty()) release_smp_waiters();
        if (outbox_.weight_moved() || holding_) check_cross_shard();
        reap_graveyard();
        if (stopping_ && conns_.empty() && gate_.count() == 0 && !accept_armed_ && pending_handoffs_.empty()) {
            stopped_ = true;
            break;
        }
        // A backlog for another shard's full queue moves only as that shard takes from it: rather than go round its
        // loop, the shard sleeps until that shard has emptied the queue, as it sleeps while it holds its receives
        // until the shard it waits for has taken enough (arm_wakes). It does not poll with a backlog: a poll would not
        // see the queue empty.
        const bool busy = !dirty_.empty() || !send_backlog_.empty() || !rearm_.empty() || !pending_handoffs_.empty() ||
                          reads_runnable_ || !unheld_.empty() || !paused_.empty() || smp_left_;
        if (busy) {
            ring_.submit();
        } else if (cfg_.budgets.idle_poll_us != 0 && !outbox_.pending() &&
                   (completed_on_submit() || (poll_rules_.should_poll(m_.packets_received) && poll_idle()))) {
            // sends that completed as they were submitted, or work that came in while polling
        } else {
            const bool waits = holding_ || outbox_.pending() || !transit_held_.empty();
            const uint64_t level = holding_ ? cfg_.limits.max_cross_shard_bytes / 2 : reactor::smp_outbox::no_level;
            bool over = false;
            if (!transit_held_.empty()) {
                // Woken too once a shard has taken what a client held for it waits for (ease_transit).
                std::fill(transit_marks_.begin(), transit_marks_.end(), reactor::smp_outbox::no_mark);
                for (const transit_wait& w : transit_held_)
                    // (One that waits for a word to close still on its way is woken by that word's arrival.)
                    if (closes_seen_[w.to] >= transit_closes_[w.to])
                        transit_marks_[w.to] = std::min(transit_marks_[w.to], w.at);
                over = outbox_.arm_wakes(level, transit_marks_);
            } else if (waits) {
                over = outbox_.arm_wakes(level);
            } else {
                outbox_.disarm_wakes();
            }
            node_.smp.set_sleeping(id_, true);
            if (has_news() || (holding_ && !over) || (waits && outbox_.woken())) {
                node_.smp.set_sleeping(id_, false);
                ring_.submit();
            } else {
                // Stopping, the housekeeping timer is gone: wake up anyway to see whether the grace has run out.
                // The batched wait needs a timeout of its own: without one the kernel ends the wait when the minimum
                // wait runs out, with or without a completion.
                if (batch_wait_ && !stopping_) {
                    const bool rule = wake_rule_.batch();
                    const bool batched = poll_rules_.batch_sleep(rule);
                    const int64_t t0 = mono_ns();
                    const int rc = ring_.submit_then_wait(batched ? cfg_.budgets.wake_batch : 1,
                                                          batched ? cfg_.budgets.wake_batch_us : 0, batched ? 1000 : 0);
                    if (rc == 0) {
                        wake_rule_.slept(static_cast<uint64_t>(mono_ns() - t0), batched, ring_.ready(),
                                         m_.packets_received);
                        if (wake_rule_.batch() != rule)
                            log::debug("shard {} {}{}", id_,
                                       rule ? "wakes at its first completion again: they come later than "
                                              "node.wake_batch_us"
                                            : "waits for a batch of completions: its first ones come within "
                                              "node.wake_batch_us",
                                       poll_rules_.weighs_batched_sleeps() ? " (a busy batching epoch overrules it)"
                                                                           : "");
                    } else if (batched && (rc == -EINVAL || rc == -EFAULT || rc == -EOPNOTSUPP)) {
                        // A wait the kernel refuses would be refused again at once: the loop would spin on it. (Others
                        // pass: a signal, EBADR once after completions were dropped, which the CQ's overflow counts.)
                        log::warn("shard {}: io_uring refused the batched wait ({}); it wakes at its first completion "
                                  "from now on",
                                  id_, std::strerror(-rc));
                        batch_wait_ = false;
                        poll_rules_.stop_weighing_batched_sleeps();
                    }
                } else {
                    ring_.submit_and_wait(stopping_ ? static_cast<int>(tick_ms) : -1);
                }
                node_.smp.set_sleeping(id_, false);
            }
        }
        new_work_window();
        const int64_t turn_start = now_ms_;
        if (stopping_ && !stop_cancelled_ && now_ms_ - stop_started_ms_ > shutdown_grace_ms) cancel_stuck();
        if (poll_rules_.epoch_due(now_ms_))
            poll_rules_.end_epoch(now_ms_, thread_cpu_ns(), m_.packets_received + m_.packets_sent);
        ++turn_;
        const unsigned n = ring_.reap(batch, reap_batch);
        // Drain the queues only after the completions were observed: anything another shard published before a
        // client could have reacted to it (a route before its SUBACK, a retained store before its PUBACK) is then
        // applied before this shard handles the client's next packet (deliveries may wait for a later turn: see
        // drain_smp).
        if (!ungated_.empty()) snapshot_transit();
        // What other shards sent (and the admin shard asked) is not this turn's clients' doing: their window starts
        // after it (one more clock read, only in a turn that took something).
        if (drain_smp() != 0) new_work_window();
        for (unsigned i = 0; i < n; ++i)
            if (batch[i].c) batch[i].c->on_complete(batch[i].res, batch[i].flags);
        // Nothing posted to the ring or held back by the kernel (DEFER_TASKRUN's task work: data that came during a
        // long turn is posted only at the next entry) is left: what clients sent before this turn began is handled.
        if (ring_.ready() == 0 && (!ring_.deferred_known() || !ring_.deferred())) caught_up_ms_ = turn_start;
        if (n != 0) {
            // (One clock read a turn that handled something: what a turn that ran long stamped, see check_deadline.)
            if (const int64_t end = mono_ms(); end - turn_start >= long_turn_ms) [[unlikely]] {
                long_turn_from_ = turn_start;
                long_turn_to_ = end;
            }
        }
        if (deadlines_due_) [[unlikely]]
            run_deadlines(turn_start);
        if (!pending_handoffs_.empty()) {
            size_t keep = 0;
            for (auto& [t, h] : pending_handoffs_) {
                if (t < turn_)
                    take_handoff(h);
                else
                    pending_handoffs_[keep++] = {t, h};
            }
            pending_handoffs_.resize(keep);
        }
        bufs_.commit();
        first_bufs_.commit();
        if (!rearm_.empty()) {
            std::vector<connection*> again;
            again.swap(rearm_);
            for (connection* c : again) {
                if (held_past_keep(*c)) continue; // read_again arms it
                c->needs_rearm = false;
                if (c->st != connection::state::closing && !c->recv_armed) arm_recv(*c);
            }
        }
        if (!hold_gone_.empty()) forget_gone_holds();
        if (!queue_holds_.empty()) ease_queue_holds();
        if (!gates_to_ease_.empty()) ease_gates();
        if (!transit_held_.empty()) ease_transit();
        if (!unheld_.empty()) {
            std::vector<uint64_t> ids;
            ids.swap(unheld_);
            for (const uint64_t id : ids)
                if (const auto it = conns_.find(id); it != conns_.end()) read_again(*it->second);
        }
        if (!paused_.empty()) resume_paused();
    }
}

void shard::new_work_window() {
    turn_start_ns_ = mono_ns();
    now_ms_ = turn_start_ns_ / 1'000'000;
    turn_over_ = false;
}

void shard::check_turn_work() {
    work_check_at_ = work_ + work_check_every;
    if (cfg_.budgets.turn_work_us != 0 && mono_ns() - turn_start_ns_ > int64_t{cfg_.budgets.turn_work_us} * 1000)
        turn_over_ = true;
}

void shard::pause_reading(connection& c) {
    // As a held publisher waits (hold_publisher), but for no queue and only until the next turn: its receive goes on,
    // its acks and PINGREQs are served meanwhile (serve_held_acks), and past held_keep_max the receive stops, where TCP
    // slows it down. Never waived for that (stop_held_recv): it is read again within a turn or two.
    c.queue_held = true;
    c.paused = true;
    paused_.emplace_back(c.id, turn_);
    if (log::at_doubling(pauses_))
        log::info("client {} ({}) is read on in a later turn, its packets having taken this turn past "
                  "node.turn_work_us = {} of routing work (new topics' matches, deliveries), so that other clients' "
                  "packets are handled meanwhile ({} times so far on this shard)",
                  c.client_id(), c.peer, cfg_.budgets.turn_work_us, pauses_);
}

void shard::resume_paused() {
    // Those paused before this turn, oldest first, in a window of their own (this turn's completions had theirs): one
    // that spends it goes to the back, and the others wait for the next turn in their order, so each gets its turn.
    new_work_window();
    while (!paused_.empty() && paused_.front().second != turn_ && !turn_over_) {
        const uint64_t id = paused_.front().first;
        paused_.pop_front();
        const auto it = conns_.find(id);
        if (it == conns_.end()) continue;
        connection& c = *it->second;
        if (!c.paused) continue; // read again otherwise since
        read_again(c);
    }
}

bool shard::has_news() const {
    return node_.smp.has_incoming(id_) || stop_requested_.load(std::memory_order_acquire) != stopping_;
}

bool shard::completed_on_submit() {
    ring_.submit();
    return io_uring_cq_ready(ring_.raw()) != 0;
}

bool shard::poll_idle() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(cfg_.budgets.idle_poll_us);
    for (;;) {
        // Not marked sleeping: other shards do not wake this one, so their queues are looked at here.
        if (io_uring_cq_ready(ring_.raw()) != 0 || has_news()) {
            poll_rules_.polled(true);
            return true;
        }
        if (std::chrono::steady_clock::now() >= until) break;
        // Completions of a DEFER_TASKRUN ring are posted only when its thread asks for them; where the ring flags
        // that it holds some, the poll asks only then, rather than by a system call a turn.
        ring_.post_deferred();
    }
    poll_rules_.polled(false);
    return false;
}

void shard::push(unsigned to, uint32_t kind, uint32_t arg, void* ptr) {
    outbox_.push(to, reactor::smp_msg{kind, arg, ptr});
}

void shard::push_weighed(unsigned to, uint32_t kind, size_t weight, void* ptr) {
    // A message is at most max_packet_size (< 2^32) plus its header.
    const auto w = static_cast<uint32_t>(std::min<size_t>(weight, UINT32_MAX));
    const reactor::smp_msg m{kind, w, ptr};
    RINGMQ_ASSERT(msg_weight(m) == w);
    outbox_.push(to, m, w);
}

void shard::check_cross_shard() {
    const uint64_t in_flight = outbox_.max_in_flight();
    const uint64_t limit = cfg_.limits.max_cross_shard_bytes;
    if (!holding_ && in_flight > limit) {
        // What the clients send now would only add to what the slower shard has not taken: their bytes stay in
        // their sockets (and their TCP windows close) until it has taken half.
        holding_ = true;
        ++holds_;
        if (hold_warned_ms_ == 0 || now_ms_ - hold_warned_ms_ >= hold_warn_interval_ms) {
            log::warn(
                "shard {} stops reading its publishing clients: {} bytes of its messages wait for another shard, over "
                "mqtt.max_cross_shard_bytes = {} ({} holds since the last warning, this one included)",
                id_, in_flight, limit, holds_);
            hold_warned_ms_ = now_ms_;
            holds_ = 0;
        }
    } else if (holding_ && in_flight <= limit / 2) {
        end_hold();
    }
}

void shard::hold_recv(connection& c) {
    if (c.needs_rearm) return; // held already, or waiting for receive buffers (held when it publishes again)
    stop_recv(c);
    held_.push_back(c.id);
}

void shard::stop_recv(connection& c) {
    if (c.needs_rearm) return;
    c.needs_rearm = true;
    if (c.recv_armed) {
        // A multishot receive goes on delivering until it is cancelled; it ends with -ECANCELED (see on_recv).
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_cancel(s, c.recv_record(), 0);
        io::set_completion(s, nullptr);
    }
}

void shard::end_hold() {
    holding_ = false;
    outbox_.disarm_wakes();
    log::debug("shard {} reads its publishing clients again ({} held)", id_, held_.size());
    std::vector<uint64_t> ids;
    ids.swap(held_);
    for (uint64_t id : ids) {
        const auto it = conns_.find(id);
        if (it == conns_.end()) continue;
        connection& c = *it->second;
        // A full queue holds it too: read on while under what it may keep (its acks are served), else read_again arms
        // it.
        if (held_past_keep(c)) continue;
        if (c.left_how != 0) continue; // its socket has ended: finish_left closes it
        c.needs_rearm = false;
        // Its keepalive counts from now: it was not read (a packet cut by the hold could not be finished meanwhile).
        c.last_rx_ms = std::max(c.last_rx_ms, now_ms_);
        // One whose cancelled receive has not ended yet is re-armed when it does.
        if (c.st != connection::state::closing && !c.recv_armed) arm_recv(c);
    }
}

bool shard::may_hold_publisher(const session_slot& slot) const {
    // Only for a message no one else gets: holding its publisher would hold the other subscribers' copies of what
    // it sends next too, and a slow subscriber may not slow the fast ones (its queue drops past its limit instead).
    // A persistent session offline holds them too, as one that takes nothing: a client back within the hold's limit
    // (a reconnect, a takeover) finds what they sent queued, where letting them go as it left dropped what passed its
    // limit, though answered. Not past the hold's limit from when it left: offline longer (a device switched off), it
    // would stall a publisher to many sessions once for each one whose queue reached its mark; it drops past its limit.
    if (!sole_subscriber_ || cfg_.limits.publisher_hold_ms == 0) return false;
    if (!slot.conn && now_ms_ - slot.offline_since_ms >= static_cast<int64_t>(cfg_.limits.publisher_hold_ms))
        return false;
    // (A publisher on another shard was weighed there: see publisher_holdable.)
    // (One that has left is not held, so what it has in flight to it does not matter: leaving_.)
    if (publisher_ && !leaving_ && !publisher_holdable(*publisher_)) return false;
    return stuck_queues_.empty() || !stuck_queues_.contains(&slot);
}

bool shard::publisher_holdable(const connection& p) const {
    // Also the subscriber's own connection, and one with messages in flight to it (until stop 60 neither was, since
    // their acks are what drains a queue, and what passed the queue's room was dropped though answered): their acks
    // among what they send meanwhile are handled at once (serve_held_acks), and where they would wait in the socket
    // behind more than a held client may leave unread, it is let go instead (waive_hold).
    return !p.queue_held && !p.hold_waived && p.st == connection::state::connected;
}

size_t shard::held_keep_max(const connection& c) const {
    // Beyond the first packet it kept, whole (the message it waits with, when that was refused: in memory already, so
    // a message of 16 KiB or more does not stop the receive, or have a client waived, at once).
    mqtt::fixed_header h{};
    if (c.rx.empty() || mqtt::parse_fixed_header(c.rx.data(), c.rx.size(), h) != mqtt::error::none) return held_rx_max;
    const size_t first = size_t{h.header_len} + h.remaining_length;
    return first <= c.rx.size() ? held_rx_max + first : held_rx_max;
}

bool shard::stop_held_recv(connection& c) {
    if (c.rx.size() <= held_keep_max(c)) return false;
    if (!c.hold_waived && !c.paused && c.slot && c.slot->s->inflight_len() != 0) waive_hold(c);
    stop_recv(c); // (read_again arms it again, at the end of this turn once waived)
    return true;
}

void shard::settle_held_recv(connection& c) {
    // Held again as read_again handled what it kept: its receive, stopped for what it kept then (or for receive
    // buffers, or by the shard's read hold), goes on while it keeps less, or its acks would wait in the socket: for its
    // own queue, the only ones that drain it, until the hold's limit.
    if (stop_held_recv(c) || !c.needs_rearm) return;
    if (holding_) {
        if (std::find(held_.begin(), held_.end(), c.id) == held_.end()) held_.push_back(c.id); // end_hold arms it
        return;
    }
    c.needs_rearm = false;
    if (!c.recv_armed) arm_recv(c);
}

void shard::waive_hold(connection& c) {
    // Its receive stops here, and with it the acks that drain its own queue, which a client held for that one, or it
    // itself, may be waiting for (two clients publishing to each other stopped so would wait for each other until the
    // hold's limit), and a full queue of its own would hold its own publishers in turn. It is read again at the end of
    // this turn and what it kept is handled as from a client that cannot be held: past the queue's limit dropped, as
    // before stop 60. (Out of every waiting list first, transit included.) A client whose receive stopped with
    // nothing in flight to it stays held when some goes in flight later: its acks wait for its turn, but nothing it
    // sent is lost (a test per delivery could let it go, losing what passes the limit, for the rarer case that its
    // queue is what the one it waits for waits for: the hold's limit ends that).
    c.hold_waived = true;
    if (c.hold_listed) hold_gone_.push_back(c.id);
    std::erase_if(transit_held_, [&](const transit_wait& w) { return w.id == c.id; });
    unheld_.push_back(c.id);
    if (log::at_doubling(holds_waived_))
        log::info(
            "client {} ({}), held with messages in flight to it, sent more than {} bytes past the first "
            "packet it kept: it is read again rather than leave its acks unread, and what it kept goes on as from "
            "a client that cannot be held ({} so far)",
            c.client_id(), c.peer, held_rx_max, holds_waived_);
}

void shard::hold_publisher(const session_slot& slot, std::string_view topic) {
    if (!publisher_) {
        // From another shard: the first message there at the mark closes its gate for the topic (a held one has its
        // turn already, gated_arrived).
        if (remote_kind_ == k_publish_holdable) close_remote(slot, topic);
        return;
    }
    if (leaving_) return;
    connection& p = *publisher_;
    queue_hold& h = hold_of(slot);
    h.waiting.emplace_back(p.id, now_ms_);
    if (h.topics.size() < hold_topics_max && !h.topics.contains(topic)) h.topics.emplace(topic);
    // Its receive goes on until what it sent meanwhile passes held_keep_max (process_input): a client that keeps a few
    // messages in flight, as most do, is held without a cancel and a new receive each time.
    p.queue_held = true;
    p.hold_listed = true;
    if (log::at_doubling(publisher_holds_))
        log::info("session {}: {} messages ({} bytes) queued, {}: client {} is not read until {} (at most "
                  "mqtt.publisher_hold_ms = {}; {} holds so far)",
                  slot.s->client_id(), slot.s->queue_len(), slot.s->queued_bytes(), hold_reason(*slot.s), p.client_id(),
                  at_hold_mark(*slot.s) ? "the queue is below that again" : "its turn after them",
                  cfg_.limits.publisher_hold_ms, publisher_holds_);
}

shard::queue_hold& shard::hold_of(const session_slot& slot) {
    const auto [it, fresh] = queue_holds_.try_emplace(&slot);
    // (Offline, nothing has been taken since it left: its hold's limit counts from then.)
    if (fresh) it->second.moved_ms = slot.conn ? now_ms_ : std::min(now_ms_, slot.offline_since_ms);
    return it->second;
}

const char* shard::hold_reason(const session::session& s) const {
    return at_hold_mark(s) ? "three quarters of its limit" : "and clients held for it wait for room";
}

bool shard::queue_closed(const session_slot& slot) const {
    const auto it = queue_holds_.find(&slot);
    if (it == queue_holds_.end()) return false;
    // Clients wait for its room (ease_queue_holds gives it a turn at a time): a client of this shard that took it
    // while not held, or not in its turn, would keep them waiting. Or the credit given to other shards takes it to its
    // mark.
    // (Another shard's message that may be held closes its gate here rather than take the room.)
    const queue_hold& h = it->second;
    if (!h.waiting.empty() &&
        (publisher_ ? publisher_->id != turn_reading_ || turn_queue_ != &slot : remote_kind_ == k_publish_holdable))
        return true;
    return !h.remote.empty() && room_below_mark(*slot.s, h) == 0;
}

uint64_t shard::least_turn(const session::session& s) const {
    uint64_t least = hold_turn_least;
    if (hold_mark_messages_ != UINT64_MAX) least = std::min(least, hold_mark_messages_ / 8);
    if (hold_mark_bytes_ != UINT64_MAX) {
        const uint64_t mean = s.queue_len() != 0 ? std::max<uint64_t>(s.queued_bytes() / s.queue_len(), 1) : 256;
        least = std::min(least, hold_mark_bytes_ / 8 / mean);
    }
    return std::max<uint64_t>(least, 1);
}

uint64_t shard::room_below_mark(const session::session& s, const queue_hold& h) const {
    uint64_t promised = 0; // credit given to other shards and not seen used yet: as good as queued
    for (const auto& src : h.remote)
        promised += src.outstanding;
    const uint64_t len = s.queue_len() + promised;
    uint64_t room = UINT64_MAX;
    if (hold_mark_messages_ != UINT64_MAX) room = hold_mark_messages_ > len ? hold_mark_messages_ - len : 0;
    if (hold_mark_bytes_ != UINT64_MAX) {
        // In messages of the queue's mean size (256 bytes while it is empty).
        const uint64_t qb = s.queued_bytes();
        const uint64_t mean = s.queue_len() != 0 ? std::max<uint64_t>(qb / s.queue_len(), 1) : 256;
        const uint64_t free = hold_mark_bytes_ > qb ? (hold_mark_bytes_ - qb) / mean : 0;
        room = std::min(room, free > promised ? free - promised : 0);
    }
    return room;
}

void shard::ease_queue_holds() {
    const auto eighth = static_cast<int64_t>(cfg_.limits.publisher_hold_ms / 8);
    ease_slots_.clear();
    for (const auto& [slot, h] : queue_holds_)
        ease_slots_.push_back(slot);
    for (const session_slot* slot : ease_slots_) {
        auto it = queue_holds_.find(slot);
        if (it == queue_holds_.end()) continue;
        // (Offline, its queue takes nothing: its clients wait for the session's return or the hold's limit.)
        // Each read_again may hold its publisher again (for this queue or another) or end entries: looked up anew.
        // A turn of another shard's (a token: one of its clients waits) gives that shard the room as credit, which
        // counts as queued until it is used.
        for (;;) {
            queue_hold& h = it->second;
            const uint64_t room = room_below_mark(*slot->s, h);
            if (room == 0) break;
            if (h.waiting.empty()) {
                if (h.remote.empty()) queue_holds_.erase(it);
                break;
            }
            // A turn for the one or two slots that each of its subscriber's acks frees would have its client send
            // as few, and each batch of its PUBACKs wakes it: the room waits for a few more (queue_closed keeps the
            // clients not held from taking it meanwhile), unless the subscriber is so slow that no turn had room for
            // several in an eighth of its hold's limit, and its first client has waited as long. (Until stop 78 the
            // first client's wait alone decided: with so many waiting that a round of them took longer than that,
            // every client's wait passed it, and each took whatever room was there at its turn, one or two slots,
            // where the one before it had taken nine: 100 publishers with 20 messages each in flight split into two
            // sets, one answered about three times as often as the other, turn after turn.)
            const bool several = room >= least_turn(*slot->s);
            if (!several && now_ms_ - std::max(h.waiting.front().second, h.full_turn_ms) < eighth) break;
            if (several) h.full_turn_ms = now_ms_;
            const uint64_t id = h.waiting.front().first;
            h.waiting.pop_front();
            if (id & remote_token_bit) {
                // The room as credit, as a client of this shard read again may fill it (a share of it, or a fixed
                // part, starved that shard's clients: measured in README, "Publishers held for a full queue").
                grant_credit(*slot, h, static_cast<unsigned>(id & ~remote_token_bit), room);
                continue;
            }
            if (const auto c = conns_.find(id); c != conns_.end()) {
                turn_reading_ = id;
                turn_queue_ = slot;
                read_again(*c->second);
                turn_reading_ = 0;
                turn_queue_ = nullptr;
            }
            it = queue_holds_.find(slot);
            if (it == queue_holds_.end()) break;
        }
    }
}

void shard::forget_gone_holds() {
    // An id left in a list would keep the clients of this shard that publish to its queue (or through its gate)
    // held behind it until the room for a whole turn came (or, for a very slow subscriber, an eighth of
    // publisher_hold_ms passed: ease_queue_holds).
    std::sort(hold_gone_.begin(), hold_gone_.end());
    const auto gone = [&](const std::pair<uint64_t, int64_t>& w) {
        return std::binary_search(hold_gone_.begin(), hold_gone_.end(), w.first);
    };
    for (auto& [slot, h] : queue_holds_)
        std::erase_if(h.waiting, gone);
    // The turns asked for there for the clients gone are withdrawn, else the queue's shard would hold its own clients
    // behind them; one given meanwhile comes as credit, handed to whoever waits here or returned (credit_gate).
    for (auto& [key, g] : gates_) {
        const auto asker_gone = [&](const remote_gate::asker& a) {
            return std::binary_search(hold_gone_.begin(), hold_gone_.end(), a.id);
        };
        std::erase_if(g.askers, asker_gone);
        std::erase_if(g.answered, asker_gone);
        if (g.drop_waiters([&](const remote_gate::waiter& w) {
                return std::binary_search(hold_gone_.begin(), hold_gone_.end(), w.id);
            }) != 0)
            unask_turns(g);
    }
    hold_gone_.clear();
}

void shard::hold_back_online(const session_slot& slot) {
    // Back: its queue is taken from again. A mark of stuck from while it was away would have its publishers' messages
    // dropped past the limit while it reads, until it drained to half (which publishers faster than it prevent), and
    // its hold's limit counts from now, not from the last message it took before it left.
    stuck_queues_.erase(&slot);
    if (const auto it = queue_holds_.find(&slot); it != queue_holds_.end()) it->second.moved_ms = now_ms_;
}

void shard::release_publishers(const session_slot& slot, bool expired) {
    const auto it = queue_holds_.find(&slot);
    if (it != queue_holds_.end()) {
        for (const auto& [id, since] : it->second.waiting)
            if (!(id & remote_token_bit)) unheld_.push_back(id);
        open_remote(it->second, slot);
        queue_holds_.erase(it);
        if (expired) stuck_queues_.insert(&slot);
    }
    if (!expired && !stuck_queues_.empty()) stuck_queues_.erase(&slot);
}

bool shard::held_on(const queue_hold& h, std::string_view filter) {
    const auto matched = [filter](const topic_set& topics) {
        return std::any_of(topics.begin(), topics.end(),
                           [filter](const std::string& t) { return routing::topic_matches(filter, t); });
    };
    // (Or a filter other shards' gates hold: the session's own, which it leaves, or the same filter subscribed anew.)
    return matched(h.topics) || std::any_of(h.remote.begin(), h.remote.end(), [&](const queue_hold_source& src) {
               return matched(src.topics) || src.filters.contains(filter);
           });
}

void shard::release_for_new_route(std::string_view filter, const session_slot* by) {
    if (queue_holds_.empty()) return;
    // (A queue's own session's new filter adds no subscriber to what it already gets.)
    std::vector<const session_slot*> slots;
    for (const auto& [slot, h] : queue_holds_)
        if (slot != by && held_on(h, filter)) slots.push_back(slot);
    for (const session_slot* slot : slots)
        release_publishers(*slot, false);
}

void shard::expire_queue_holds(int64_t now) {
    const auto& lim = cfg_.limits;
    std::erase_if(stuck_queues_, [&](const session_slot* slot) {
        const session::session& s = *slot->s;
        // (Offline, it stays stuck: its publishers waited once, and it drops past its limit until it drains.)
        return (lim.max_queued_messages == 0 || s.queue_len() <= lim.max_queued_messages / 2) &&
               (lim.max_queued_bytes == 0 || s.queued_bytes() <= lim.max_queued_bytes / 2);
    });
    std::vector<const session_slot*> stuck;
    for (auto it = queue_holds_.begin(); it != queue_holds_.end();) {
        queue_hold& h = it->second;
        if (now - h.moved_ms >= lim.publisher_hold_ms && !h.waiting.empty()) {
            stuck.push_back(it->first);
        } else {
            // Its subscriber takes, but what others add (clients it cannot hold, other shards) keeps it at the mark:
            // a client is held at most publisher_hold_ms at a time, then read again (and held again at its next
            // message while the queue is at the mark). (Another shard's client is read again by that shard.)
            while (!h.waiting.empty() && now - h.waiting.front().second >= lim.publisher_hold_ms) {
                const uint64_t id = h.waiting.front().first;
                h.waiting.pop_front();
                if (id & remote_token_bit) {
                    // Its shard reads its client again by itself; told, it asks anew for those still waiting.
                    push(static_cast<unsigned>(id & ~remote_token_bit), k_gate_credit, 0, queue_key(it->first));
                    continue;
                }
                unheld_.push_back(id);
                if (log::at_doubling(publishers_let_go_))
                    log::info("session {}: a client held for its queue for mqtt.publisher_hold_ms = {} is read again "
                              "while messages it cannot hold keep the queue at its mark ({} so far)",
                              it->first->s->client_id(), lim.publisher_hold_ms, publishers_let_go_);
            }
            // Credit not seen used for as long is forgotten here as on the shard that has it (expire_gates): its
            // clients went quiet, or its messages go elsewhere now.
            bool quiet = h.waiting.empty() && !at_hold_mark(*it->first->s);
            for (auto& src : h.remote) {
                if (now - src.used_ms >= lim.publisher_hold_ms)
                    src.outstanding = 0;
                else
                    quiet = false;
            }
            // Nothing sent through its gates for as long, and the queue below its mark: they open (their topics and
            // state go; a gate closes anew at the mark).
            if (quiet && !h.remote.empty()) open_remote(h, *it->first);
        }
        it = h.empty() ? queue_holds_.erase(it) : std::next(it); // (one found stuck has some waiting)
    }
    for (const session_slot* slot : stuck) {
        const session::session& s = *slot->s;
        if (log::at_doubling(publisher_hold_expiries_))
            log::warn("session {}: nothing taken from its queue ({} messages) for mqtt.publisher_hold_ms = {}: the "
                      "clients it held are read again and past its limit its messages are dropped, until it drains "
                      "to half ({} such expiries so far)",
                      s.client_id(), s.queue_len(), lim.publisher_hold_ms, publisher_hold_expiries_);
        release_publishers(*slot, true);
    }
}

// The queue side of a hold across shards: the shard that routed the message holds its publisher (remote_gate).
shard::queue_hold_source* shard::source_of(queue_hold& h, unsigned shard) {
    for (auto& src : h.remote)
        if (src.shard == shard) return &src;
    return nullptr;
}

shard::queue_hold_source* shard::remote_source(const void* queue, unsigned from, queue_hold** hold) {
    // The key is looked up, never followed: the queue may be gone (its gate opened, and a message crossed that).
    const auto it = queue_holds_.find(static_cast<const session_slot*>(queue));
    if (it == queue_holds_.end()) return nullptr;
    if (hold) *hold = &it->second;
    return source_of(it->second, from);
}

void shard::close_remote(const session_slot& slot, std::string_view topic) {
    const unsigned from = remote_from_ - 1;
    queue_hold& h = hold_of(slot);
    queue_hold_source* src = source_of(h, from);
    if (!src) src = &h.remote.emplace_back(queue_hold_source{from});
    if (src->topics.size() < hold_topics_max) src->topics.emplace(topic);
    const auto told = [&](const std::string& f) { return routing::topic_matches(f, topic); };
    if (std::any_of(src->filters.begin(), src->filters.end(), told)) {
        // Told already: a message the gate there let go (k_gate_drop's, or k_gate_pin's answer, when others got the
        // topic too) reached the queue alone at its mark, as once its other subscribers left a filter it keeps (no
        // route's end there tells that shard). It is told to gate the topic again; the gate ignores it for a topic it
        // had not let go (one on its way before the gate closed).
        // (Counted as a close is, so that the bound on what is on its way here waits for it: transit_passed.)
        push_close(from, k_gate_pin, 2,
                   new gate_close{reinterpret_cast<uintptr_t>(queue_key(&slot)), std::string(topic)});
        return;
    }
    // The gate closes for the session's filters that take the topic at QoS 1 or 2, so that one gate holds the
    // publishers of every topic a wildcard subscriber gets (gated by topic, a queue fed many new topics at once filled
    // its burst room before each had its own gate) and its list stays as long as the session's filters.
    std::vector<std::string> filters;
    for (const auto& [filter, opts] : slot.s->subscriptions)
        if ((opts & 3) != 0 && routing::topic_matches(filter, topic)) filters.push_back(filter);
    if (filters.empty()) filters.emplace_back(topic); // (its route ends as this message passes: k_gate_drop follows)
    for (std::string& f : filters) {
        src->filters.insert(f);
        push_close(from, k_gate_close, 0, new gate_close{reinterpret_cast<uintptr_t>(queue_key(&slot)), std::move(f)});
    }
    src->used_ms = now_ms_;
    if (log::at_doubling(gate_closes_))
        log::info("session {}: {} messages ({} bytes) queued, {}: shard {} holds its clients publishing {} to it until "
                  "{} (at most mqtt.publisher_hold_ms = {}; {} such holds so far)",
                  slot.s->client_id(), slot.s->queue_len(), slot.s->queued_bytes(), hold_reason(*slot.s), from, topic,
                  at_hold_mark(*slot.s) ? "the queue is below that again" : "their turn", cfg_.limits.publisher_hold_ms,
                  gate_closes_);
}

void shard::push_close(unsigned to, uint32_t kind, uint32_t arg, gate_close* g) {
    push(to, kind, arg, g);
    node_.gate_closes[id_ * n_ + to].fetch_add(1, std::memory_order_release); // (before drain_smp's note_taken)
    close_staged_ = true;
}

void shard::gated_arrived(const session_slot& slot, uint8_t qos) {
    queue_hold* h = nullptr;
    queue_hold_source* src = remote_source(&slot, remote_from_ - 1, &h);
    if (!src) return; // not a queue this shard closed a gate for (its subscriber changed): k_gate_drop
    src->used_ms = now_ms_;
    if (remote_kind_ == k_publish_credited) {
        if (src->outstanding != 0) --src->outstanding;
        remote_ok_ = true;
        return;
    }
    // Its publisher waits for credit: it takes its turn among the queue's held clients, as one of this shard's would.
    if (qos == 0 || !may_hold_publisher(slot)) return;
    h->waiting.emplace_back(remote_token_bit | (remote_from_ - 1), now_ms_);
    remote_ok_ = true;
}

void shard::queue_turn(unsigned from, const void* queue) {
    queue_hold* h = nullptr;
    if (remote_source(queue, from, &h)) {
        h->waiting.emplace_back(remote_token_bit | from, now_ms_);
        return;
    }
    // A gate there that this shard keeps no record of (it forgot it as told, k_gate_forget, after closing it anew):
    // no turn would ever come, and its clients, refused, would wait for good. It opens; the queue closes a gate anew
    // at its mark.
    push(from, k_gate_open, 0, queue_key(static_cast<const session_slot*>(queue)));
}

void shard::withdraw_turns(unsigned from, const void* queue, uint64_t n) {
    queue_hold* h = nullptr;
    if (!remote_source(queue, from, &h)) return;
    // The sender's turns are alike (each gives credit to whoever waits there then): the latest go. One given already
    // is in flight as credit, which the sender hands on or returns.
    const uint64_t token = remote_token_bit | from;
    for (auto it = h->waiting.end(); n != 0 && it != h->waiting.begin();) {
        --it;
        if (it->first != token) continue;
        it = h->waiting.erase(it);
        --n;
    }
}

void shard::credit_returned(unsigned from, const void* queue, uint64_t n) {
    if (queue_hold_source* src = remote_source(queue, from)) src->outstanding -= std::min(src->outstanding, n);
}

void shard::forget_source(unsigned from, const void* queue) {
    const auto it = queue_holds_.find(static_cast<const session_slot*>(queue));
    if (it == queue_holds_.end()) return;
    queue_hold& h = it->second;
    std::erase_if(h.remote, [&](const queue_hold_source& src) { return src.shard == from; });
    std::erase_if(h.waiting, [&](const auto& w) { return w.first == (remote_token_bit | from); });
    if (h.empty()) queue_holds_.erase(it);
}

void shard::grant_credit(const session_slot& slot, queue_hold& h, unsigned to, uint64_t room) {
    queue_hold_source* src = source_of(h, to);
    if (!src) return;
    const uint64_t n = std::min<uint64_t>(room, UINT32_MAX);
    src->outstanding += n;
    src->used_ms = now_ms_;
    push(to, k_gate_credit, static_cast<uint32_t>(n), queue_key(&slot));
}

void shard::open_remote(queue_hold& h, const session_slot& slot) {
    for (const auto& src : h.remote)
        push(src.shard, k_gate_open, 0, queue_key(&slot));
    h.remote.clear();
}

void shard::close_gate(unsigned from, gate_close& g) {
    const auto [it, fresh] = gates_.try_emplace({from, g.queue});
    remote_gate& gate = it->second;
    if (fresh) {
        gate.shard = from;
        gate.queue = g.queue;
        gate.used_ms = now_ms_;
    }
    const auto [t, added] = gate_index(g.topic).try_emplace(g.topic, &gate);
    if (!added) {
        if (t->second == &gate) return;
        // Its subscriber changed: the filter goes to this queue now.
        t->second->topics.erase(g.topic);
        t->second = &gate;
    }
    // A topic let go for a filter there that no gate held may have been the queue's own by this one (close_remote):
    // it is gated again, and let go again if it shows others.
    if (!gate.exempt.empty())
        std::erase_if(gate.exempt, [&](const std::string& e) { return routing::topic_matches(g.topic, e); });
    gate.topics.insert(std::move(g.topic));
}

shard::gate_map& shard::gate_index(std::string_view filter) {
    return routing::has_wildcard(filter) ? gate_filters_ : gate_topics_;
}

void shard::credit_gate(unsigned from, uint64_t queue, uint64_t n) {
    const auto it = gates_.find({from, queue});
    if (it == gates_.end()) return; // opened since
    remote_gate& g = it->second;
    if (g.asked != 0) --g.asked; // a turn given (or, with nothing, expired there)
    if (g.waiting.empty()) {
        // Read again meanwhile (their hold's length): credit is held only while clients wait for it, so that the
        // queue's shard does not count as queued what nobody here sends.
        if (n != 0) push(from, k_gate_return, static_cast<uint32_t>(n), queue_key(queue));
        return;
    }
    g.credit += n;
    if (n != 0) g.used_ms = now_ms_;
    gates_to_ease_.emplace_back(from, queue);
}

void shard::let_gate_go(std::map<std::pair<unsigned, uint64_t>, remote_gate>::iterator it) {
    remote_gate& g = it->second;
    if (gate_reading_gate_ == &g) gate_reading_gate_ = nullptr; // (only compared, but never to a gate gone)
    for (const std::string& topic : g.topics)
        unindex_gate(g, topic);
    for (const auto& w : g.waiting)
        unheld_.push_back(w.id);
    for (const auto& a : g.askers)
        unheld_.push_back(a.id);
    gates_.erase(it);
}

void shard::unindex_gate(const remote_gate& g, std::string_view topic) {
    auto& index = gate_index(topic);
    if (const auto t = index.find(topic); t != index.end() && t->second == &g) index.erase(t);
}

void shard::open_gate(unsigned from, uint64_t queue) {
    if (const auto it = gates_.find({from, queue}); it != gates_.end()) let_gate_go(it);
}

void shard::drop_gate_topic(unsigned from, const std::string& topic, bool counted) {
    remote_gate* g = gate_for(topic, from);
    if (!g) return;
    // A topic of a wildcard filter that other subscribers there get too (its message counted by the queue, so the
    // gate's credit and turns add up): its messages go ungated (its publishers are not held for one of them) while it
    // keeps its place in `exempt`, the rest of the filter's stay gated.
    if (counted && !gate_topics_.contains(topic)) {
        g->pinned.erase(topic);
        keep_topic(g->exempt, g->evict_at, topic);
        return;
    }
    // Its messages reach no queue that gave this shard credit: the gate lets its clients go, and the queue's shard
    // forgets it told this one (it closes a gate anew where its queue is at its mark again).
    forget_gate(from, g->queue);
}

void shard::ask_turns(remote_gate& g) {
    for (; g.asked < g.waiting.size(); ++g.asked)
        push(g.shard, k_gate_wait, 0, queue_key(g.queue));
}

void shard::unask_turns(remote_gate& g) {
    if (g.asked <= g.waiting.size()) return;
    // (One given meanwhile comes as credit, handed to whoever waits here or returned: credit_gate.)
    push(g.shard, k_gate_unwait, static_cast<uint32_t>(std::min<uint64_t>(g.asked - g.waiting.size(), UINT32_MAX)),
         queue_key(g.queue));
    g.asked = g.waiting.size();
}

void shard::forget_gate(unsigned shard, uint64_t queue) {
    let_gate_go(gates_.find({shard, queue}));
    push(shard, k_gate_forget, 0, queue_key(queue));
}

void shard::ease_gates() {
    std::vector<std::pair<unsigned, uint64_t>> keys;
    keys.swap(gates_to_ease_);
    for (const auto& key : keys) {
        // Oldest first while credit is left; each read_again may spend it and hold its client again (at the back).
        for (;;) {
            const auto it = gates_.find(key);
            if (it == gates_.end() || it->second.credit == 0 || it->second.waiting.empty()) break;
            const uint64_t id = it->second.pop_waiter();
            if (const auto c = conns_.find(id); c != conns_.end()) {
                gate_reading_ = id;
                gate_reading_gate_ = &it->second;
                read_again(*c->second);
                gate_reading_ = 0;
                gate_reading_gate_ = nullptr;
            }
        }
        // A turn given for one client's held message may have been spent by another (the oldest here, which then
        // sent no held message if it had no more to send): each client still waiting must have a turn asked for.
        if (const auto it = gates_.find(key); it != gates_.end()) {
            remote_gate& g = it->second;
            ask_turns(g);
            // Nobody left waiting: what credit is left goes back (see credit_gate).
            if (g.waiting.empty() && g.credit != 0) {
                push(g.shard, k_gate_return, static_cast<uint32_t>(std::min<uint64_t>(g.credit, UINT32_MAX)),
                     queue_key(g.queue));
                g.credit = 0;
            }
        }
    }
}

void shard::expire_gates(int64_t now) {
    for (auto it = gates_.begin(); it != gates_.end();) {
        remote_gate& g = it->second;
        while (!g.waiting.empty() && now - g.waiting.front().since >= cfg_.limits.publisher_hold_ms) {
            unheld_.push_back(g.pop_waiter());
            if (log::at_doubling(gated_let_go_))
                log::info("a client held for a queue on shard {} for mqtt.publisher_hold_ms = {} is read again ({} so "
                          "far)",
                          g.shard, cfg_.limits.publisher_hold_ms, gated_let_go_);
        }
        // Credit unused for as long is forgotten, as the queue's shard forgets it gave it (expire_queue_holds).
        if (now - g.used_ms >= cfg_.limits.publisher_hold_ms) {
            g.credit = 0;
        }
        // One whose topics all went to other queues holds nobody now (once those held for an answer have it).
        it = g.topics.empty() && g.waiting.empty() && g.askers.empty() ? gates_.erase(it) : std::next(it);
    }
}

void shard::read_again(connection& c) {
    if (!c.queue_held) return;
    c.queue_held = false;
    c.paused = false;
    c.held_scanned = 0;
    c.hold_listed = false; // (read again as its entry came up, or as its hold ended: in no list now)
    if (c.st != connection::state::connected) return;
    // Its keepalive counts from now: what it sent was not handled.
    c.last_rx_ms = std::max(c.last_rx_ms, now_ms_);
    if (!c.rx.empty()) {
        // What it sent while held, first: it may hold it again (unless its hold was waived: not for what it kept,
        // which is never empty then, past held_keep_max).
        const uint64_t published_before = own_received();
        publisher_ = &c;
        process_rx(c);
        publisher_ = nullptr;
        c.hold_waived = false;
        if (c.st == connection::state::closing) {
            maybe_destroy(c);
            return;
        }
        if (c.left_how != 0) [[unlikely]] {
            finish_left(c);
            return;
        }
        if (c.queue_held) {
            if (!c.rx.empty()) serve_held_acks(c);
            settle_held_recv(c);
            return;
        }
        if (holding_ && own_received() != published_before) {
            // (Once in held_ is enough: one paused while held, say, is there already.)
            if (std::find(held_.begin(), held_.end(), c.id) != held_.end()) {
                stop_recv(c);
            } else {
                c.needs_rearm = false;
                hold_recv(c);
            }
            return;
        }
    }
    if (c.left_how != 0) [[unlikely]] {
        finish_left(c); // (all it kept were acks, served meanwhile)
        return;
    }
    if (!c.needs_rearm) return;                                                         // its receive was not cancelled
    if (holding_ && std::find(held_.begin(), held_.end(), c.id) != held_.end()) return; // end_hold arms it
    c.needs_rearm = false;
    if (!c.recv_armed) arm_recv(c);
}

void shard::finish_left(connection& c, bool now) {
    if (c.paused && !now) return; // more in a later turn (no receive to arm: its socket has ended)
    // Held for a queue instead: as any held client whose socket ended (its turn could be long in coming).
    if (c.queue_held) handle_kept_as_left(c);
    if (c.st != connection::state::closing) close(c, recv_end_reason(c.left_how), true);
    maybe_destroy(c);
}

void shard::publish_smp() {
    if (publishing_) return; // (a wake-up forced a submission: the queues are all published by then)
    publishing_ = true;
    outbox_.publish([this](unsigned to) { peers_.wake(to); });
    publishing_ = false;
}

size_t shard::drain_smp() {
    size_t taken = 0;
    // Deliveries wait for a later turn once their routing has spent the turn's work and done a share of it from this
    // queue (a turn stretched by the host's other work cuts nothing, and one shard's flood does not stop another's
    // deliveries), so that this shard's clients are served between slices of another shard's costly burst (a
    // queueful of it took up to 1.9-4 s in one turn); never while stopping.
    uint64_t work_at = 0;
    unsigned from = 0;
    const auto cut = [&] { return turn_over_ && work_ - work_at >= pause_least_work && !stopping_; };
    // Whether a message queued behind deliveries left for later must be handled before this turn's completions, with
    // every delivery before it: all but the deliveries (which no client's packet can depend on) and route updates and
    // handoffs (handled ahead, below). A retained update (stored as it is taken) or a gate's word may be what a client
    // reacted to, or bear on the deliveries before it (and an admin call, whose queue is thus taken whole).
    const auto goes_ahead = [](uint32_t kind) {
        return kind == k_route_add || kind == k_route_del || kind == k_gate_join || kind == k_handoff;
    };
    const auto must_take = [&](const reactor::smp_msg& m) {
        if (goes_ahead(m.kind)) return false;
        switch (m.kind) {
        case k_publish_run:
        case k_taken_ahead:
            return false;
        case k_publish:
        case k_publish_holdable:
        case k_publish_credited:
        case k_publish_held:
            return static_cast<const session::message*>(m.ptr)->retain();
        default:
            return true;
        }
    };
    // A client may have reacted to a route (its SUBACK), and routes bear on none of the deliveries before it (those go
    // to this shard's subscribers alone); a handed-off connection's session takes them as they come. Handled at once
    // when only deliveries, routes and handoffs are before them, so that a flood ahead neither delays them nor is
    // taken in one turn for them.
    const auto ahead = [&](reactor::smp_msg& m) {
        if (!goes_ahead(m.kind)) return;
        const uint32_t weight = msg_weight(m);
        const bool route = m.kind == k_route_add || m.kind == k_route_del;
        handle_smp(m, from);
        m = reactor::smp_msg{k_taken_ahead, weight, nullptr};
        ++taken_ahead_;
        if (route && log::at_doubling(routes_ahead_))
            log::debug("shard {} handled a route update from shard {} ahead of the deliveries before it, left for a "
                       "later turn ({} times so far)",
                       id_, from, routes_ahead_);
    };
    smp_left_ = false;
    // Each turn begins with the next MQTT shard's queue: the first gets the turn's work, the others their share of
    // 2048 units. The admin shard's comes last, after all of theirs: an admin call may depend on a route another
    // shard queued before its client's SUBACK (mqtt/publish to a filter just subscribed).
    const unsigned peers = n_ - 1;
    const unsigned first = peers != 0 ? static_cast<unsigned>(turn_ % peers) : 0;
    // And only what it held before the others' queues were read: a call that came while they were drained (for
    // milliseconds in a cut turn) may depend on a route another shard published after its queue was read, before
    // the SUBACK that the call's HTTP request followed (an mqtt/publish to the filter was then routed without it).
    const uint32_t admin_tail = node_.smp.queue(n_, id_).tail_for_consumer();
    for (unsigned k = 0; k + 1 < parts_; ++k) {
        if (k < peers) {
            const unsigned p = first + k < peers ? first + k : first + k - peers;
            from = p < id_ ? p : p + 1;
        } else {
            from = k + 1; // past the MQTT shards
        }
        uint64_t weight = 0;
        bool left = false;
        work_at = work_;
        auto& q = node_.smp.queue(from, id_);
        const size_t n = q.drain_until(
            [&](const reactor::smp_msg& m) {
                weight += msg_weight(m);
                handle_smp(m, from);
            },
            // Up to a whole queueful: every message queued before this drain that a client may depend on is taken
            // now, before this turn handles its completions, and all queued before it. An ack that waited until its
            // route adds or retained update were queued (send_after_backlog) promises no more than that; at a cap
            // under the queue's size a SUBSCRIBE of more filters than the cap had its SUBACK reach the client while
            // the other shard still lacked some of its routes.
            cfg_.budgets.smp_queue_size, cut, must_take, ahead, left, from == n_ ? admin_tail : q.tail_for_consumer());
        smp_left_ = smp_left_ || left;
        // A word to close a gate goes out before the messages that caused it count as taken: the sender goes on
        // routing to queues that cannot hold yet only by what it saw taken (shard::push_holdable).
        if (close_staged_) {
            close_staged_ = false;
            publish_smp();
        }
        // The sender may sleep until this shard has caught up (smp_outbox::arm_wakes).
        if (n != 0 && node_.smp.note_taken(from, id_, n, weight) && node_.smp.claim_wake(from)) peers_.wake(from);
        taken += n;
    }
    if (smp_left_ && log::at_doubling(smp_cuts_))
        log::info(
            "left deliveries from other shards for a later turn, their routing having taken this turn past "
            "node.turn_work_us = {}, so that this shard's clients' packets are handled meanwhile ({} times so far "
            "on this shard; {} route updates and handoffs behind them handled ahead of them)",
            cfg_.budgets.turn_work_us, smp_cuts_, taken_ahead_);
    return taken;
}

void shard::handle_smp(const reactor::smp_msg& m, unsigned from) {
    switch (m.kind) {
    case k_handoff:
        pending_handoffs_.emplace_back(turn_, static_cast<handoff*>(m.ptr));
        return;
    case k_taken_ahead:
        return;
    case k_route_add: {
        std::unique_ptr<std::string> f(static_cast<std::string*>(m.ptr));
        trie_.add_remote(*f, from);
        ++trie_gen_;
        // Its new subscriber may take topics the gates here were told reach their queues alone: they are asked anew.
        if (!gates_.empty()) unpin(from, *f);
        release_for_new_route(*f, nullptr);
        return;
    }
    case k_route_del: {
        std::unique_ptr<std::string> f(static_cast<std::string*>(m.ptr));
        trie_.remove_remote(*f, from);
        ++trie_gen_;
        // Its subscribers may have been what let a topic go ungated: it is gated again, and let go again by the next
        // message it shows still reaching others too. (Only a route's end comes here: where the filter's other
        // subscribers leave while the slow session keeps it, the queue's shard tells the gate once a message let go
        // reaches the queue alone, close_remote.)
        if (!gates_.empty()) forget_topics(from, *f, &remote_gate::exempt);
        return;
    }
    case k_publish: {
        auto msg = session::message_ref::adopt(static_cast<session::message*>(m.ptr));
        if (msg->retain()) [[unlikely]]
            store_live(msg); // a gated retained update its gate sent on ungated (push_gated)
        const std::string_view topic = msg->topic();
        const auto payload = msg->payload();
        const uint8_t qos = msg->qos();
        route(topic, payload, qos, msg, false);
        return;
    }
    case k_publish_run: {
        std::unique_ptr<publish_run> r(static_cast<publish_run*>(m.ptr));
        deliver_run(*r);
        return;
    }
    case k_publish_holdable:
    case k_publish_credited:
    case k_publish_held: {
        auto msg = session::message_ref::adopt(static_cast<session::message*>(m.ptr));
        if (msg->retain()) [[unlikely]]
            store_live(msg);
        struct remote_scope {
            shard& s;
            ~remote_scope() {
                s.remote_from_ = 0;
                s.remote_kind_ = 0;
            }
        } scope{*this};
        remote_from_ = from + 1;
        remote_kind_ = m.kind;
        remote_ok_ = false;
        remote_shared_ = false;
        route(msg->topic(), msg->payload(), msg->qos(), msg, false);
        // Gated there for a queue here that did not count it (gated_arrived), or that others here get too (one
        // subscriber's gate would slow them): that shard is told to stop.
        if (m.kind != k_publish_holdable && (!remote_ok_ || remote_shared_))
            push(from, k_gate_drop, remote_ok_ ? 1 : 0, new std::string(msg->topic()));
        return;
    }
    case k_gate_drop: {
        std::unique_ptr<std::string> t(static_cast<std::string*>(m.ptr));
        drop_gate_topic(from, *t, m.arg != 0);
        return;
    }
    case k_gate_close: {
        std::unique_ptr<gate_close> g(static_cast<gate_close*>(m.ptr));
        if (!closes_seen_.empty()) ++closes_seen_[from];
        close_gate(from, *g);
        return;
    }
    case k_gate_ask: {
        std::unique_ptr<gate_close> q(static_cast<gate_close*>(m.ptr));
        answer_gate_ask(from, *q);
        return;
    }
    case k_gate_pin: {
        std::unique_ptr<gate_close> a(static_cast<gate_close*>(m.ptr));
        if (m.arg == 2 && !closes_seen_.empty()) ++closes_seen_[from];
        gate_answered(from, *a, m.arg != 0);
        return;
    }
    case k_gate_join: {
        std::unique_ptr<std::string> f(static_cast<std::string*>(m.ptr));
        if (!gates_.empty()) unpin(from, *f);
        return;
    }
    case k_gate_unfilter: {
        std::unique_ptr<gate_close> u(static_cast<gate_close*>(m.ptr));
        unfilter_gate(from, *u);
        return;
    }
    case k_gate_credit:
        credit_gate(from, reinterpret_cast<uintptr_t>(m.ptr), m.arg);
        return;
    case k_gate_open:
        open_gate(from, reinterpret_cast<uintptr_t>(m.ptr));
        return;
    case k_gate_wait:
        queue_turn(from, m.ptr);
        return;
    case k_gate_return:
        credit_returned(from, m.ptr, m.arg);
        return;
    case k_gate_forget:
        forget_source(from, m.ptr);
        return;
    case k_gate_unwait:
        withdraw_turns(from, m.ptr, m.arg);
        return;
    case k_retain: {
        const auto r = session::message_ref::adopt(static_cast<session::message*>(m.ptr));
        store_retained(r);
        // And delivered live to this shard's subscribers (see retain_from), in a message of its own: live copies
        // carry no retain flag [MQTT-3.3.1-9]. A stale update is delivered too, as two crossing PUBLISHes both are.
        session::message_ref live;
        route(r->topic(), r->payload(), r->qos(), live, false);
        return;
    }
    case k_retain_clear:
        store_retained(session::message_ref::adopt(static_cast<session::message*>(m.ptr)));
        return;
    case k_admin_call: {
        auto* call = static_cast<admin_call*>(m.ptr);
        const uint64_t backlogged = outbox_.backlogged();
        call->fn(*this);
        // The admin client acts on the answer as an MQTT client on an ack (mqtt/subscribe, then a PUBLISH on
        // another shard): see send_after_backlog.
        if (outbox_.backlogged() != backlogged)
            admin_waiters_.push_back({outbox_.backlogged(), call, m.arg});
        else
            push(m.arg, k_admin_done, id_, call);
        return;
    }
    default:
        log::error("shard {}: unknown SMP message kind {}", id_, m.kind);
    }
}

void shard::take_handoff(handoff* hp) {
    std::unique_ptr<handoff> h(hp);
    if (stopping_) {
        ::close(h->fd);
        node_.connections.fetch_sub(1, std::memory_order_relaxed);
        return;
    }
    // As on_recv: a client that closed earlier in this batch of completions may still be listed as held.
    if (!hold_gone_.empty()) [[unlikely]]
        forget_gone_holds();
    connection& c = adopt(h->fd, h->peer);
    const uint64_t published_before = own_received();
    process_input(c, h->bytes.data(), h->bytes.size());
    if (c.st == connection::state::closing) return;
    // As after any receive (on_recv): what it published with its CONNECT counts toward this shard's cross-shard hold,
    // and one whose unhandled bytes stopped its receive (a full queue holds it) is not read on meanwhile.
    if (holding_ && own_received() != published_before) [[unlikely]]
        hold_recv(c);
    else if (!c.recv_armed && !c.needs_rearm)
        arm_recv(c);
}

void shard::flush() {
    size_t budget = cfg_.budgets.sends_per_turn;
    const auto send_one = [&](connection& c) {
        weigh(c);
        if (c.smp_wait) {
            c.backlogged = false; // stays dirty, out of both lists: release_smp_waiters marks it again
            return;
        }
        c.dirty = false;
        c.backlogged = false;
        // With a send in flight nothing starts now: the rest goes when it completes (on_send marks the connection
        // again), and a reply among it keeps its bit, so it still goes first then.
        if (!c.send_busy) c.reply = false;
        start_send(c);
        --budget;
    };
    // The backlog holds ids, not addresses: a connection may be closed and freed while it waits there. An id left
    // behind by a reply (mark_dirty) is passed over, unless its connection was put back in the backlog since: then it
    // goes at that older, earlier place, and no second id is added (in_backlog), so the backlog never holds more ids
    // than there are connections, however often replies move them out and back.
    const auto send_backlogged = [&] {
        const uint64_t id = send_backlog_.front();
        send_backlog_.pop_front();
        if (auto it = conns_.find(id); it != conns_.end()) {
            it->second->in_backlog = false;
            if (it->second->backlogged) send_one(*it->second);
        }
    };
    // Connections with something new first, so that a reply is not submitted behind the backlog of a broadcast; when
    // they are more than the turn takes (the broadcast's own turn), those with a reply (an ack, PINGRESP) go first,
    // so that a reply queued after a fan-out's copies does not wait for all of them. Otherwise they keep the order in
    // which they were marked. The backlog is kept at least half of the turn, so that it drains however busy the shard
    // is. What does not fit this turn goes to the back of the backlog.
    const size_t reserve = std::min(send_backlog_.size(), (budget + 1) / 2);
    if (dirty_.size() > budget - reserve)
        std::stable_partition(dirty_.begin(), dirty_.end(), [](const connection* c) { return c->reply; });
    size_t i = 0;
    for (; i < dirty_.size() && budget > reserve; ++i)
        send_one(*dirty_[i]);
    for (; i < dirty_.size(); ++i) {
        weigh(*dirty_[i]);
        dirty_[i]->reply = false;
        dirty_[i]->backlogged = true;
        if (!dirty_[i]->in_backlog) {
            dirty_[i]->in_backlog = true;
            send_backlog_.push_back(dirty_[i]->id);
        }
    }
    backlog_peak_ = std::max(backlog_peak_, send_backlog_.size());
    dirty_.clear();
    while (budget > 0 && !send_backlog_.empty())
        send_backlogged();
}

void shard::reap_graveyard() {
    if (graveyard_.empty()) return;
    for (uint64_t id : graveyard_)
        conns_.erase(id);
    graveyard_.clear();
}

void shard::arm_accept() {
    if (stopping_ || accept_armed_ || listen_fd_ < 0) return;
    io_uring_sqe* s = ring_.sqe();
    io_uring_prep_multishot_accept(s, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    io::set_completion(s, &accept_op_);
    accept_armed_ = true;
}

void shard::on_accept(int res, uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) accept_armed_ = false;
    if (res < 0) {
        if (res != -ECANCELED && !stopping_ && accept_pacer_.failed(res)) accept_paused_ = true;
    } else if (stopping_) {
        ::close(res);
    } else {
        // TCP_NODELAY comes from the listening socket (accepted sockets inherit it): no system call per accept.
        const int fd = res;
        accept_pacer_.accepted();
        const uint32_t count = node_.connections.fetch_add(1, std::memory_order_relaxed) + 1;
        connection& c = adopt(fd, {});
        c.over_limit = count > cfg_.limits.max_connections;
        ask_peer_name(c);
        arm_recv(c);
    }
    if (!accept_armed_ && !stopping_ && !accept_paused_) arm_accept();
}

reactor::task<void> shard::housekeeping() {
    while (!stopping_) {
        co_await io::sleep_for(ring_, tick_ms);
        tick(mono_ms());
    }
}

void shard::cancel_stuck() {
    // Operations that shutdown() did not end (it ends sends to a peer that does not read, and recvs, on the kernels
    // seen so far): cancelled once, so the shard stops after the grace rather than never.
    stop_cancelled_ = true;
    size_t n = 0;
    for (auto& [id, c] : conns_) {
        if (c->fd < 0 || c->ops == 0) continue;
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_cancel_fd(s, c->fd, IORING_ASYNC_CANCEL_ALL | (c->fixed ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
        io::set_completion(s, nullptr); // an SQE keeps the user_data of its last use otherwise
        ++n;
    }
    if (n != 0)
        log::warn("shard {}: {} connection{} still busy {} ms after the stop began: cancelling their operations", id_,
                  n, n == 1 ? "" : "s", shutdown_grace_ms);
}

void shard::tick(int64_t now) {
    now_ms_ = now;
    if (stopping_) return;
    expire_sessions(now);
    if (!lost_flights_.empty()) give_up_flights(now);
    if (!queue_holds_.empty() || !stuck_queues_.empty()) expire_queue_holds(now);
    if (!gates_.empty()) expire_gates(now);
    if (out_pressed_) close_stalled(now);
    // Cross-shard queues deliver in microseconds; a tombstone kept this long has seen every older update arrive.
    // By the queue, not the tombstones: a clear replaced since left its entry behind, and the queue would keep it.
    if (retained_.tombs_queued() != 0) retained_.prune_tombstones(now - tombstone_keep_ms);
    if (accept_paused_) {
        accept_paused_ = false; // tick_ms is accept_pacer::pause_ms
        arm_accept();
    }
    deadlines_due_ = true;
    if (const uint64_t held = conn_log_.take_held(now); held != 0)
        log::info("{} more lines about refused or closed connections held back (at most {} a second)", held,
                  conn_log_.per_second());
    update_gauges();
}

void shard::run_deadlines(int64_t turn_start) {
    // After a turn that ran long (a burst of PUBLISHes each matching thousands of wildcard filters held a shard for
    // seconds), the tick came up among the completions of what clients sent meanwhile, and judged their keepalives
    // before their PINGREQs were handled, at a clock the packets handled earlier in the turn had not seen: clients
    // that pinged in time were closed as silent. Now a deadline is judged once what was reaped is handled, at the
    // clock those packets were stamped with (the turn's start); a keepalive's silence only up to when the shard last
    // had all that clients sent handled (caught_up_ms_), which also covers completions still waiting in the ring.
    deadlines_due_ = false;
    if (stopping_) return; // (as the tick: the shutdown has deadlines of its own)
    deadlines_.advance(turn_start, [&](const reactor::deadline_wheel::entry& e) { check_deadline(e, turn_start); });
}

void shard::schedule_check(connection& c) {
    if (c.st != connection::state::connected || c.send_failed) return;
    const int64_t limit = quiet_limit_ms(c, cfg_.limits);
    if (limit == 0) return;
    const int64_t at = c.last_rx_ms + limit;
    if (c.check_at_ms != 0 && c.check_at_ms <= at) return; // the earlier check puts the next one in place
    c.check_at_ms = at;
    deadlines_.schedule(c.id, at);
}

void shard::check_deadline(const reactor::deadline_wheel::entry& e, int64_t now) {
    const auto it = conns_.find(e.id);
    if (it == conns_.end()) return;
    connection& c = *it->second;
    if (c.check_at_ms != e.at_ms) return; // an earlier deadline replaced this one
    if (now < e.at_ms) {                  // beyond the wheel's horizon: came up early
        deadlines_.schedule(c.id, e.at_ms);
        return;
    }
    if (c.st == connection::state::closing) {
        if (c.shut_deferred) {
            // The send its close waited for has not ended (a client not reading), or the messages its answers promise
            // are still not queued: shut down now, the answers unsent.
            shutdown_socket(c);
            maybe_destroy(c); // (one that waited for the messages may have nothing pending)
            return;
        }
        // A receive its close cancelled (close_op_done) has still not ended. (Only then: a deadline set before the
        // close can come up too, and a connection without a slot was shut down by the system call.)
        if (c.fixed && c.recv_cancel_found && c.recv_armed) {
            c.recv_cancel_found = false; // one SHUTDOWN
            ++recv_cancel_fallbacks_;
            log::warn(
                "client {} ({}): the receive its close cancelled has not ended in {} ms; shutting the socket down",
                c.client_id(), c.peer, recv_cancel_grace_ms);
            submit_shutdown(c);
        }
        return;
    }
    if (c.send_failed && c.st == connection::state::connected) {
        if ((c.needs_rearm && (holding_ || c.queue_held)) || c.left_how != 0) {
            // Its receive is held: what the client sent before the error (a DISCONNECT, say) is read when the hold
            // ends, and that receive closes it (or, its socket ended while paused, finish_left once it is handled).
            c.check_at_ms = now + send_failed_grace_ms;
            deadlines_.schedule(c.id, c.check_at_ms);
            return;
        }
        conn_info("closing client {} ({}): a send failed and no receive followed within {} ms", c.client_id(), c.peer,
                  send_failed_grace_ms);
        close(c, c.send_reset ? "econnreset" : "socket_error", true);
        return;
    }
    const auto& lim = cfg_.limits;
    // Packets are stamped with the clock of their turn's start: one handled late in a turn that ran long (see
    // run_deadlines) counts from that turn's end.
    if (c.last_rx_ms >= long_turn_from_ && c.last_rx_ms < long_turn_to_) c.last_rx_ms = long_turn_to_;
    const int64_t quiet = quiet_limit_ms(c, lim);
    // Silence counts up to when the shard last had all that clients sent handled (for at most backlog_credit_ms): while
    // it works through a backlog (PUBLISHes of many connections, each matching thousands of wildcard filters), a
    // PINGREQ sent in time waits unread behind it, in the ring or in the kernel, and its client was closed as silent.
    const int64_t seen_all = std::max(std::min(now, caught_up_ms_), now - backlog_credit_ms);
    const bool expired = c.st == connection::state::awaiting_connect ||
                         (c.st == connection::state::connected && quiet != 0 && seen_all - c.last_rx_ms > quiet);
    if (expired && (c.needs_rearm || c.queue_held) && c.st == connection::state::connected) {
        // Not read by this shard (a hold, or no receive buffers): what the client sent may wait in its socket. (A
        // connection awaiting CONNECT has published nothing, so no hold keeps it.)
        c.check_at_ms = now + held_recheck_ms;
        deadlines_.schedule(c.id, c.check_at_ms);
        return;
    }
    c.check_at_ms = 0;
    if (c.st == connection::state::awaiting_connect) {
        conn_info("closing {}: no CONNECT within {} ms", c.peer, lim.connect_timeout_ms);
        close(c, "connect_timeout", false);
        return;
    }
    if (expired && c.keepalive == 0) {
        conn_info("closing client {} ({}): keepalive 0, and part of a packet ({} bytes) waited {} ms "
                  "(mqtt.connect_timeout) with nothing more coming",
                  c.client_id(), c.peer, c.rx.size(), now - c.last_rx_ms);
        close(c, "packet_timeout", true);
        return;
    }
    if (expired) {
        conn_info("closing client {} ({}): keepalive {} s exceeded", c.client_id(), c.peer, c.keepalive);
        close(c, "keepalive_timeout", true);
        return;
    }
    c.sq.trim(); // a subscriber of shared pieces keeps their bookkeeping between batches, not while it idles
    if (c.st == connection::state::connected && quiet != 0 && now - c.last_rx_ms > quiet) [[unlikely]] {
        // Past its keepalive but for the shard's own backlog: looked at again next tick, not in every slot the wheel
        // still passes in this advance (its deadline from last_rx_ms lies behind the wheel's hand).
        c.check_at_ms = now + tick_ms;
        deadlines_.schedule(c.id, c.check_at_ms);
        return;
    }
    // Traffic moved the keepalive on (or CONNECT came in time): the next deadline.
    schedule_check(c);
}

void shard::update_gauges() { fill_gauges(st_); }

void shard::note_subscriptions(size_t before) {
    const size_t now = trie_.subscription_count();
    if (now > before) {
        raise_peak(node_.subscriptions_peak,
                   node_.subscriptions.fetch_add(now - before, std::memory_order_relaxed) + (now - before));
        // This shard's own routes peak here, not at the next tick: routes that lived less than a tick were missed.
        const size_t filters = trie_.filter_count();
        st_.routes.set(filters);
        st_.topics.set(filters);
    } else if (now < before)
        node_.subscriptions.fetch_sub(before - now, std::memory_order_relaxed);
}

void shard::fill_gauges(stats& s) const {
    s.clients.set(connected_);
    s.sessions.set(sessions_.size());
    s.subscribers.set(trie_.subscription_count());
    s.subscriptions.set(trie_.subscription_count());
    s.routes.set(trie_.filter_count());
    s.topics.set(trie_.filter_count());
    s.retained.set(retained_.size());
}

void shard::begin_shutdown() {
    stopping_ = true;
    forced_before_stop_ = ring_.forced_submits(); // (closing every connection fills the queue too)
    stop_started_ms_ = now_ms_;
    log::debug("shard {}: shutting down, closing {} connections", id_, conns_.size());
    if (accept_armed_) {
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_cancel(s, &accept_op_, 0);
        io::set_completion(s, nullptr);
    }
    waker_.stop();
    for (auto& [id, c] : conns_) {
        if (c->shut_deferred) { // its deadline would not come: the ticks end with the stop
            shutdown_socket(*c);
            maybe_destroy(*c);
        }
        // One whose socket ended before the stop, while paused, ends as it would have then (its will too).
        if (c->left_how != 0 && c->st == connection::state::connected) [[unlikely]]
            finish_left(*c, true);
        close(*c, "shutdown", false);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Connections and I/O

connection& shard::adopt(int fd, listener::peer_addr peer) {
    auto c = std::make_unique<connection>(*this, fd, peer);
    c->id = next_conn_id_++;
    c->last_rx_ms = now_ms_;
    // The CONNECT deadline never moves; at CONNECT a shorter keepalive deadline may replace it.
    c->check_at_ms = now_ms_ + cfg_.limits.connect_timeout_ms;
    deadlines_.schedule(c->id, c->check_at_ms);
    connection& ref = *c;
    conns_.emplace(ref.id, std::move(c));
    return ref;
}

struct shard::peer_name_op final : io::completion {
    shard& sh;
    connection& c;
    union {
        sockaddr_in v4;
        sockaddr_in6 v6;
    } addr{};
    peer_name_op(shard& s, connection& conn) : sh(s), c(conn) {}
    void on_complete(int res, uint32_t flags) override;
};

void shard::ask_peer_name(connection& c) {
    if (peer_by_ring_ == 0) {
        c.peer = listener::peer_addr::of_socket(c.fd);
        return;
    }
    auto* op = new peer_name_op(*this, c);
    io_uring_sqe* s = ring_.sqe();
    io::prep_peer_name(s, c.fd, &op->addr, peer_by_ring_);
    io::set_completion(s, op);
    ++c.ops;
}

void shard::peer_name_op::on_complete(int res, uint32_t) {
    std::unique_ptr<peer_name_op> self(this);
    --c.ops;
    if (res > 0) {
        c.peer = listener::peer_addr::from(reinterpret_cast<const sockaddr*>(&addr), static_cast<socklen_t>(res));
    } else if (io::peer_name_refused(res) && sh.peer_by_ring_ != 0) {
        // Not seen: a kernel that refuses the socket command. getpeername from now on. (Any failure leaves the
        // address unknown, which on_connect's getpeername then tries once: the one place that retries.)
        log::warn("shard {}: reading a client's address through io_uring was refused ({}): getpeername from now on",
                  sh.id_, std::strerror(-res));
        sh.peer_by_ring_ = 0;
    }
    sh.maybe_destroy(c);
}

void shard::arm_recv(connection& c) {
    io_uring_sqe* s = ring_.sqe();
    // One shot until CONNECT is handled: the socket may move to its client id's home shard.
    c.recv_oneshot = c.st == connection::state::awaiting_connect;
    io::buffer_ring& bufs = c.recv_oneshot ? first_bufs_ : bufs_;
    if (c.recv_oneshot) {
        io_uring_prep_recv(s, c.fd, nullptr, bufs.buffer_size(), 0);
    } else {
        io_uring_prep_recv_multishot(s, c.fd, nullptr, 0, 0);
        if (recv_limit_ != 0) io::set_recv_limit(s, recv_limit_);
    }
    s->flags |= IOSQE_BUFFER_SELECT | (c.fixed ? IOSQE_FIXED_FILE : 0);
    s->buf_group = bufs.group();
    io::set_completion(s, c.recv_record());
    c.recv_armed = true;
    ++c.ops;
}

void shard::on_recv(connection& c, int res, uint32_t flags) {
    // A client closed earlier in this batch of completions may be listed as held still: a publisher handled now would
    // be held behind it.
    if (!hold_gone_.empty()) [[unlikely]]
        forget_gone_holds();
    if (!(flags & IORING_CQE_F_MORE)) {
        c.recv_armed = false;
        --c.ops;
    }
    const bool has_buf = (flags & IORING_CQE_F_BUFFER) != 0;
    const uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    io::buffer_ring& bufs = c.recv_oneshot ? first_bufs_ : bufs_;
    if (res == -ENOBUFS) {
        // Flow control: every receive buffer is waiting to be handled. Re-arm once they are back in the ring.
        ++bufs.enobufs;
        if (c.st != connection::state::closing && !c.recv_armed && !c.needs_rearm) {
            c.needs_rearm = true;
            rearm_.push_back(&c);
        }
        maybe_destroy(c);
        return;
    }
    if (res == -ECANCELED && !stopping_ && c.st != connection::state::closing) {
        // The hold cancelled it (hold_recv): the hold's end re-arms it, or now if the hold ended first.
        if (!c.recv_armed && !c.needs_rearm) arm_recv(c);
        return;
    }
    if (c.queue_held && res <= 0 && res != -ECANCELED && c.st == connection::state::connected) [[unlikely]] {
        if (c.paused) {
            // Its socket ended while it waits for a later turn (a burst then a close, say): what it sent is handled in
            // its turns as the rest would have been, not all at once, and then it is closed as now (finish_left).
            if (has_buf) bufs.received_nothing(bid);
            if (c.left_how == 0) c.left_how = recv_end(res);
            return;
        }
        handle_kept_as_left(c);
    }
    if (res <= 0 || c.st == connection::state::closing) {
        // Bytes for a closing connection are dropped; the buffer goes back as its flags say (received_nothing for
        // a completion without bytes).
        if (has_buf && res > 0) {
            bufs.received(bid, static_cast<uint32_t>(res), flags);
            bufs.release(bid, flags);
        } else if (has_buf) {
            bufs.received_nothing(bid);
        }
        if (c.st != connection::state::closing) close(c, recv_end_reason(recv_end(res)), true);
        maybe_destroy(c);
        return;
    }
    RINGMQ_ASSERT(has_buf);
    m_.bytes_received += static_cast<uint64_t>(res);
    const uint8_t* data = bufs.received(bid, static_cast<uint32_t>(res), flags);
    const uint64_t published_before = own_received();
    const uint64_t packets_before = m_.packets_received;
    process_input(c, data, static_cast<size_t>(res));
    // Keep-alive counts whole control packets [MQTT-3.1.2-24], not bytes: a client trickling the bytes of a packet it
    // never finishes would otherwise hold its connection (and its partial packet's memory) for ever.
    // (With keepalive 0, which has no keepalive to keep, any bytes: the deadline below is for a client gone quiet.)
    if (m_.packets_received != packets_before || c.keepalive == 0) c.last_rx_ms = now_ms_;
    if (c.keepalive == 0 && !c.rx.empty()) [[unlikely]]
        schedule_check(c); // part of a packet waits: quiet_limit_ms
    bufs.release(bid, flags);
    if (c.queued_bytes() > cfg_.limits.max_outgoing_bytes) [[unlikely]] {
        // Not while its sends are held for the SMP backlog (smp_wait): the broker, not the client, stopped them.
        if (!c.smp_wait) check_unread(c, static_cast<uint32_t>(res));
    } else {
        c.rx_while_full = 0;
    }
    if (c.handed_off) {
        maybe_destroy(c);
        return;
    }
    if (c.st == connection::state::closing) {
        maybe_destroy(c);
        return;
    }
    // A hold stops only the clients that publish (or change routes): the others' acks and PINGREQs free what this
    // shard holds for them.
    // Not while needs_rearm: a held connection whose receive ended on its own (the kernel ends a multishot receive
    // when it cannot post the next completion) with bytes that published nothing stays held until end_hold, and one
    // waiting for receive buffers is re-armed from rearm_.
    if (holding_ && own_received() != published_before) [[unlikely]]
        hold_recv(c);
    else if (!c.recv_armed && !c.needs_rearm)
        arm_recv(c);
}

void shard::check_unread(connection& c, uint32_t received) {
    // Deliveries stop at the limit (QoS 0 is dropped, QoS 1/2 waits in the session), but the answers to what the
    // client sends (PUBACK, PINGRESP, SUBACK...) must be queued: a client that keeps sending and never reads would
    // grow its queue without end. Once it has sent max_outgoing_bytes more than it took (on_send pays the count off
    // with what the socket takes: a slow reader that also publishes is not one that never reads) while over the
    // limit, it is closed.
    c.rx_while_full = static_cast<uint32_t>(std::min<uint64_t>(uint64_t{c.rx_while_full} + received, UINT32_MAX));
    if (c.st != connection::state::connected ||
        c.rx_while_full <= std::min<uint64_t>(cfg_.limits.max_outgoing_bytes, UINT32_MAX - 1))
        return;
    log::warn(
        "closing {} ({}): not reading; {} bytes wait to be sent, over mqtt.max_outgoing_bytes = {}, while it sent "
        "{} more",
        c.client_id(), c.peer, c.queued_bytes(), cfg_.limits.max_outgoing_bytes, c.rx_while_full);
    close(c, "send_queue_full", true);
}

void shard::process_input(connection& c, const uint8_t* p, size_t n) {
    // What it sent is its own, whether it came by its receive or with its handover (PUBLISHes sent with the CONNECT):
    // a full queue holds it as their publisher (publisher_) rather than drop what passes the limit.
    struct publisher_scope {
        connection*& p;
        ~publisher_scope() { p = nullptr; }
    } scope{publisher_};
    publisher_ = &c;
    // After a refused CONNECT nothing the client sends counts (MQTT-3.2.2-5): the socket closes once the CONNACK is
    // out.
    if (c.refused) return;
    if (c.queue_held) [[unlikely]] {
        // Kept in order behind what the hold left, for read_again. Past held_keep_max the receive is cancelled and the
        // rest waits in the socket, where TCP slows the client down (what a cancelled receive still posts is kept).
        c.rx.insert(c.rx.end(), p, p + n);
        serve_held_acks(c);
        stop_held_recv(c);
        return;
    }
    // A hold that begins in these bytes leaves the rest in c.rx: its acks among them are handled at once too.
    struct held_scope {
        shard& s;
        connection& c;
        ~held_scope() {
            if (c.queue_held && !c.rx.empty()) [[unlikely]]
                s.serve_held_acks(c);
        }
    } held{*this, c};
    if (c.over_limit && c.st == connection::state::awaiting_connect && (c.rx.empty() ? p[0] : c.rx[0]) == 0x10)
        [[unlikely]] {
        // Refused whatever it says, so answered at its first byte: a connection past mqtt.max_connections holds no
        // reassembly memory for a CONNECT of up to max_packet_size (hundreds of such sockets held hundreds of MB
        // until their connect timeout). Looked at here, once per receive, rather than per packet in process().
        ++m_.packets_received;
        ++m_.packets_connect;
        refuse_connect(c, 0x03, "max_connections reached");
        return;
    }
    if (!c.rx.empty() && c.st == connection::state::connected) {
        // Finish the packet the previous receive left unfinished with only the bytes it lacks, then go on from the
        // receive buffer itself: a stream of packets that straddle receives is then copied once, not twice. (Before
        // CONNECT is handled every byte goes through rx: a handoff takes the bytes after the CONNECT along.)
        const size_t took = complete_partial(c, p, n);
        if (took == n || c.st == connection::state::closing) return;
        p += took;
        n -= took;
    }
    if (c.rx.empty()) {
        const size_t used = process(c, p, n);
        if (c.st != connection::state::closing && used < n) start_partial(c, p + used, n - used);
        return;
    }
    c.rx.insert(c.rx.end(), p, p + n);
    process_rx(c);
}

void shard::answer_pingreq(connection& c) {
    scratch_.clear();
    mqtt::encode_pingresp(scratch_);
    send_control(c, scratch_);
    ++m_.packets_pingresp;
}

void shard::serve_held_acks(connection& c) {
    // No rule orders them after the PUBLISH it waits with: the acks of what is sent to it, waiting, would stall its
    // window (the queue's and hold's own messages to it among them), and a PINGREQ waiting for the client's turn (many
    // clients held for a slow subscriber) could run out the client's own keepalive timer, which closes it. Only the
    // packets as 3.x has them, and only while what comes before them looks sound by its header: nothing after a
    // packet whose type, flags, lengths or packet id process() would close the connection for (or one over
    // max_packet_size, a second CONNECT), nor after a DISCONNECT, whose close comes after what precedes it (a topic's
    // own content or a SUBSCRIBE's entries are not looked at: acks after a bad one are handled before the close);
    // no PUBREL behind a QoS 2 PUBLISH still unread (it may be a resend of the message that PUBREL releases, which
    // must then be answered as a duplicate, not routed again).
    if (c.st != connection::state::connected || c.ver == mqtt::protocol_version::v5 || !c.slot) return;
    if (c.held_scanned == held_scan_done) return;
    std::vector<uint8_t>& rx = c.rx;
    bool qos2_ahead = (c.held_scanned & held_qos2_ahead) != 0;
    size_t in = c.held_scanned & ~held_qos2_ahead;
    if (in > rx.size()) in = 0, qos2_ahead = false; // (never: the offset kept is within what it left)
    size_t out = in;
    bool done = false;
    while (in < rx.size() && c.st == connection::state::connected) {
        mqtt::fixed_header h{};
        const mqtt::error e = mqtt::parse_fixed_header(rx.data() + in, rx.size() - in, h);
        if (e == mqtt::error::need_more) break;
        if (e != mqtt::error::none || mqtt::check_packet_size(h, cfg_.limits.max_packet_size) != mqtt::error::none) {
            done = true;
            break;
        }
        const size_t total = size_t{h.header_len} + h.remaining_length;
        if (total > rx.size() - in) break;
        const uint8_t first = rx[in];
        const uint8_t* b = rx.data() + in + h.header_len;
        const size_t rl = h.remaining_length;
        const uint16_t pid = rl == 2 ? static_cast<uint16_t>(b[0] << 8 | b[1]) : 0;
        bool serve = false;
        if (first == 0x40 || first == 0x50 || first == 0x62 || first == 0x70) {
            if (pid == 0) {
                done = true;
                break;
            }
            if (first != 0x62 || !qos2_ahead) {
                ++m_.packets_received;
                on_ack_id(c, static_cast<mqtt::packet_type>(first >> 4), pid);
                serve = true;
            }
        } else if (first == 0xc0 && rl == 0) {
            ++m_.packets_received;
            ++m_.packets_pingreq;
            answer_pingreq(c);
            serve = true;
        } else if (first >> 4 == 3) {
            // A PUBLISH: its QoS and DUP flag, its topic's length (not 0) and (QoS 1/2) its packet id as process()
            // would take them.
            const uint8_t qos = first >> 1 & 3;
            const size_t tl = rl >= 2 ? size_t{b[0]} << 8 | b[1] : 0;
            const size_t need = qos == 0 ? 2 : 4;
            if (qos == 3 || (qos == 0 && (first & 0x08) != 0) || tl == 0 || tl + need > rl ||
                (qos != 0 && (b[2 + tl] << 8 | b[3 + tl]) == 0)) {
                done = true;
                break;
            }
            qos2_ahead |= qos == 2;
        } else if (first != 0x82 && first != 0xa2) {
            done = true; // a DISCONNECT, a second CONNECT, bad flags or a type a client does not send
            break;
        }
        if (!serve) {
            if (out != in) std::memmove(rx.data() + out, rx.data() + in, total);
            out += total;
        }
        in += total;
    }
    if (out != in) {
        std::memmove(rx.data() + out, rx.data() + in, rx.size() - in);
        rx.resize(out + rx.size() - in);
    }
    c.held_scanned = done ? held_scan_done : static_cast<uint32_t>(out) | (qos2_ahead ? held_qos2_ahead : 0);
}

void shard::handle_kept_as_left(connection& c) {
    // What a held client sent before it closed, or before a new connection took its session over or the admin API
    // kicked it, is handled first (a DISCONNECT among it ends it normally, without its will [MQTT-3.14.4-3]), its QoS
    // 2 messages taken as a held client's, past a full queue's limit within its burst room: their ids are recorded as
    // received, so the resends of a client that comes back are answered as duplicates and not routed again (dropped
    // now, they would be lost). It is not held again (leaving_): it has left. (What its stopped receive left in the
    // socket is not read: past held_keep_max, a DISCONNECT there goes unseen.)
    struct leaving_scope {
        shard& s;
        connection* outer; // a takeover runs inside the new connection's CONNECT
        bool outer_leaving;
        ~leaving_scope() {
            s.publisher_ = outer;
            s.leaving_ = outer_leaving;
        }
    } scope{*this, publisher_, leaving_};
    c.queue_held = false;
    c.paused = false;
    c.held_scanned = 0;
    publisher_ = &c;
    leaving_ = true;
    const uint64_t before = own_received();
    const uint64_t work = work_;
    process_rx(c);
    left_received_ += own_received() - before; // (its route updates too: see own_received)
    // Not counted as the work of the client whose packet brought this about (a takeover's CONNECT): it would be
    // paused for it (should_pause). The turn's clock has seen it.
    const uint64_t spent = work_ - work;
    work_ = work;
    work_check_at_ = work_check_at_ > spent ? work_check_at_ - spent : 0;
}

void shard::process_rx(connection& c) {
    // process() may hand the bytes to another shard or close; work on a moved-out buffer so nothing aliases.
    std::vector<uint8_t> buf;
    buf.swap(c.rx);
    const size_t used = process(c, buf.data(), buf.size());
    if (c.st != connection::state::closing && used < buf.size()) {
        buf.erase(buf.begin(), buf.begin() + static_cast<ptrdiff_t>(used)); // stays ahead of the bytes that follow
        c.rx.swap(buf);
        return;
    }
    recycle_rx(buf); // a large packet's reassembly memory is freed, not kept
}

size_t shard::complete_partial(connection& c, const uint8_t* p, size_t n) {
    size_t took = 0;
    mqtt::fixed_header h{};
    mqtt::error e = mqtt::parse_fixed_header(c.rx.data(), c.rx.size(), h);
    while (e == mqtt::error::need_more && took < n) {
        c.rx.push_back(p[took++]); // the fixed header itself was cut: at most 4 more bytes
        e = mqtt::parse_fixed_header(c.rx.data(), c.rx.size(), h);
    }
    if (e == mqtt::error::need_more) return took;
    if (e == mqtt::error::none && mqtt::check_packet_size(h, cfg_.limits.max_packet_size) == mqtt::error::none) {
        const size_t total = size_t{h.header_len} + h.remaining_length;
        if (c.rx.size() < total) {
            const size_t add = std::min(total - c.rx.size(), n - took);
            c.rx.insert(c.rx.end(), p + took, p + took + add);
            took += add;
            if (c.rx.size() < total) return took;
        }
    }
    // rx now holds one whole packet, or a header process() refuses (and closes for).
    process_rx(c);
    return took;
}

void shard::start_partial(connection& c, const uint8_t* p, size_t n) {
    // Memory follows the bytes received, not the bytes promised: no room is reserved for the length the header
    // claims, and a large spare is not handed to a connection with a few bytes pending (a client that stops after
    // one byte of a header would hold it while it stays silent).
    if (c.rx.capacity() == 0 && rx_spare_.capacity() <= std::max(rx_spare_small, 4 * n)) c.rx.swap(rx_spare_);
    c.rx.assign(p, p + n);
}

void shard::recycle_rx(std::vector<uint8_t>& buf) {
    if (buf.capacity() > rx_spare_max || buf.capacity() <= rx_spare_.capacity()) return;
    buf.clear();
    rx_spare_.swap(buf);
}

size_t shard::process(connection& c, const uint8_t* p, size_t n) {
    if (c.queue_held) [[unlikely]]
        return 0;
    size_t off = 0;
    const uint64_t work_at = work_;
    route_entry* fast_route = nullptr; // the route of this buffer's last fast-path QoS 1/2 PUBLISH (see publish_qos12)
    // A queue hold (hold_publisher) stops the loop after the PUBLISH that caused it: the rest stays unhandled.
    while (off < n && c.st != connection::state::closing) {
        mqtt::fixed_header h{};
        const mqtt::error e = mqtt::parse_fixed_header(p + off, n - off, h);
        if (e == mqtt::error::need_more) break;
        if (e != mqtt::error::none) {
            conn_info("closing {} ({}): malformed remaining length", c.client_id(), c.peer);
            c.answer_on_close = true;
            close(c, "parser_error", true);
            break;
        }
        if (mqtt::check_packet_size(h, cfg_.limits.max_packet_size) != mqtt::error::none) {
            conn_info("closing {} ({}): {} packet of {} bytes exceeds max_packet_size {}", c.client_id(), c.peer,
                      mqtt::to_string(h.type), size_t{h.header_len} + h.remaining_length, cfg_.limits.max_packet_size);
            c.answer_on_close = true;
            close(c, "packet_too_large", true);
            break;
        }
        const size_t total = size_t{h.header_len} + h.remaining_length;
        if (c.st == connection::state::awaiting_connect) [[unlikely]] {
            // Refused at its header, not once it is whole: a first packet of any other type, or a CONNECT longer than
            // one can be, would hold up to mqtt.max_packet_size of memory until the connect timeout (200 sockets
            // that sent 1 MB each of one held 300 MB).
            if (h.type != mqtt::packet_type::connect) {
                conn_info("closing {}: first packet is {} instead of CONNECT", c.peer, mqtt::to_string(h.type));
                close(c, "protocol_error", false);
                break;
            }
            if (h.remaining_length > max_connect_remaining) {
                conn_info("closing {}: CONNECT of {} bytes, more than an MQTT 3.1/3.1.1 CONNECT can hold ({})", c.peer,
                          total, max_connect_remaining + 4);
                close(c, "packet_too_large", false);
                break;
            }
        }
        if (n - off < total) break;
        // (Here, not with only part of a packet left: that waits for more bytes anyway.)
        if (should_pause(c, work_at)) [[unlikely]] {
            pause_reading(c);
            break;
        }
        if (c.st == connection::state::connected && c.ver != mqtt::protocol_version::v5) {
            // The packets of a 3.x client's steady flow, taken without the general decode (each falls back to it
            // where anything about it is unusual).
            const uint8_t first = p[off];
            if (first == 0x30) {
                if (const size_t used = forward_run(p + off, n - off, h); used != 0) {
                    off += used;
                    continue;
                }
            } else if (first == 0x32) {
                if (publish_qos12<1>(c, p + off, h, fast_route)) {
                    if (take_refusal()) [[unlikely]]
                        break; // left unread: handled again in its client's turn
                    off += total;
                    if (c.queue_held) [[unlikely]]
                        break;
                    continue;
                }
            } else if (first == 0x40 && h.remaining_length == 2) {
                if (const uint16_t pid = static_cast<uint16_t>(p[off + 2] << 8 | p[off + 3]); pid != 0) {
                    off += total;
                    ++m_.packets_received;
                    on_puback(c, pid);
                    continue;
                }
            } else if (first == 0x34) {
                if (publish_qos12<2>(c, p + off, h, fast_route)) {
                    if (take_refusal()) [[unlikely]]
                        break; // left unread: handled again in its client's turn
                    off += total;
                    if (c.queue_held) [[unlikely]]
                        break;
                    continue;
                }
            } else if (h.remaining_length == 2 && (first == 0x50 || first == 0x62 || first == 0x70)) {
                // PUBREC, PUBREL (its flags 0010) and PUBCOMP as 3.x has them: an id and nothing else.
                if (const uint16_t pid = static_cast<uint16_t>(p[off + 2] << 8 | p[off + 3]); pid != 0) {
                    off += total;
                    ++m_.packets_received;
                    on_ack_id(c, static_cast<mqtt::packet_type>(first >> 4), pid);
                    continue;
                }
            }
        }
        const std::span<const uint8_t> body(p + off + h.header_len, h.remaining_length);
        const std::span<const uint8_t> rest(p + off, n - off);
        off += total;
        ++m_.packets_received;
        if (!dispatch(c, h, body, rest)) break;
        if (take_refusal()) [[unlikely]] {
            off -= total;
            break;
        }
        if (c.handed_off || c.refused) return n;
        if (c.queue_held) [[unlikely]]
            break;
    }
    return off;
}

bool shard::protocol_error(connection& c, const char* what) {
    conn_info("closing {} ({}): protocol error: {}", c.client_id(), c.peer, what);
    return close_answered(c, "protocol_error");
}

bool shard::close_answered(connection& c, const char* reason) {
    c.answer_on_close = true; // the answers to the packets before it (see the DISCONNECT's)
    close(c, reason, true);
    return false;
}

inline bool shard::dispatch(connection& c, const mqtt::fixed_header& h, std::span<const uint8_t> body,
                            std::span<const uint8_t> rest) {
    if (c.st != connection::state::awaiting_connect) [[likely]] {
        if (h.type == mqtt::packet_type::publish)
            return on_publish(c, h.flags, body, rest.first(size_t{h.header_len} + h.remaining_length));
        if (mqtt::is_ack(h.type)) return on_ack(c, h.type, body, h.flags);
    }
    return dispatch_other(c, h, body, rest);
}

bool shard::dispatch_other(connection& c, const mqtt::fixed_header& h, std::span<const uint8_t> body,
                           std::span<const uint8_t> rest) {
    using mqtt::packet_type;
    if (c.st == connection::state::awaiting_connect) {
        RINGMQ_DASSERT(h.type == packet_type::connect); // process() closes for anything else at its header
        return on_connect(c, body, h.flags, rest);
    }
    switch (h.type) {
    case packet_type::subscribe:
        return on_subscribe(c, body, h.flags);
    case packet_type::unsubscribe:
        return on_unsubscribe(c, body, h.flags);
    case packet_type::pingreq:
        ++m_.packets_pingreq;
        if (mqtt::decode_empty(h.type, body, h.flags) != mqtt::error::none) return protocol_error(c, "bad PINGREQ");
        answer_pingreq(c);
        return true;
    case packet_type::disconnect:
        ++m_.packets_disconnect;
        if (mqtt::decode_empty(h.type, body, h.flags) != mqtt::error::none) return protocol_error(c, "bad DISCONNECT");
        c.disconnect_received = true;
        c.will.reset(); // MQTT-3.14.4-3: a DISCONNECT discards the will
        log::debug("client {} disconnected", c.client_id());
        // The answers to the packets before it in the same read (its CONNACK, PUBACKs, SUBACKs) are still queued: they
        // go out before the close (MQTT-3.1.4-4, -3.8.4-1...), its messages back to its session as on any close.
        c.answer_on_close = true;
        close(c, "normal", false);
        return false;
    case packet_type::connect:
        ++m_.packets_connect;
        return protocol_error(c, "second CONNECT");
    default:
        return protocol_error(c, fmt::format("unexpected {} packet", mqtt::to_string(h.type)).c_str());
    }
}

void shard::mark_dirty_slow(connection& c, bool reply) {
    if (reply) {
        c.reply = true; // deliveries, the per-message path, leave the bit alone
        // A reply to a connection waiting in the send backlog (a broadcast's subscriber) does not wait for its place
        // there: the connection joins this turn's list, where replies go first.
        if (c.backlogged) {
            c.backlogged = false;
            dirty_.push_back(&c);
            return;
        }
    }
    if (c.dirty) return;
    c.dirty = true;
    dirty_.push_back(&c);
}

void shard::send_after_backlog(connection& c, uint64_t before) {
    if (outbox_.backlogged() == before) return;
    // Sending the ack now would break the loop order's promise (README, "Loop order"): a client of
    // the other shard that acts on it (publishes to the new subscriber, subscribes to the retained topic) could be
    // handled there before the route or the retained update arrives.
    if (!c.smp_wait) {
        c.smp_wait = true;
        smp_waiters_.emplace_back(c.id, outbox_.backlogged());
    } else {
        for (auto& [id, mark] : smp_waiters_)
            if (id == c.id) mark = outbox_.backlogged();
    }
}

void shard::release_smp_waiters() {
    const size_t admin_waiting = admin_waiters_.size();
    std::erase_if(admin_waiters_, [this](const admin_waiter& w) {
        if (outbox_.behind(w.mark)) return false;
        push(w.to, k_admin_done, id_, w.call);
        return true;
    });
    // Published now: a message staged but not published would be waited for by the sleep (arm_wakes) for ever.
    if (admin_waiters_.size() != admin_waiting) publish_smp();
    std::erase_if(smp_waiters_, [this](const std::pair<uint64_t, uint64_t>& w) {
        if (outbox_.behind(w.second)) return false;
        if (auto it = conns_.find(w.first); it != conns_.end()) {
            connection& c = *it->second;
            c.smp_wait = false;
            c.dirty = false;
            c.backlogged = false;
            if (c.st != connection::state::closing) {
                mark_dirty_slow(c, c.reply);
            } else if (c.shut_deferred && !c.send_busy) {
                answer_and_shut(c); // (one with a send pending goes on from its end: on_send)
                maybe_destroy(c);
            }
        }
        return true;
    });
}

void shard::start_send(connection& c) {
    if (c.send_busy || c.shut || c.send_failed || !c.sq.has_queued() || c.fd < 0) return;
    c.sq.start_batch();
    submit_send(c);
}

void shard::submit_send(connection& c) {
    io_uring_sqe* s = ring_.sqe();
    const send_queue::next_send n = c.sq.next();
    if (n.msg)
        io_uring_prep_sendmsg(s, c.fd, n.msg, MSG_NOSIGNAL);
    else
        io_uring_prep_send(s, c.fd, n.data, n.len, MSG_NOSIGNAL);
    if (c.fixed) s->flags |= IOSQE_FIXED_FILE;
    io::set_completion(s, c.send_record());
    c.send_busy = true;
    ++c.ops;
}

void shard::on_send(connection& c, int res, uint32_t) {
    --c.ops;
    c.send_busy = false;
    if (res < 0) {
        const bool reset = res == -EPIPE || res == -ECONNRESET;
        if (c.st == connection::state::connected && (c.recv_armed || c.needs_rearm || c.left_how != 0)) {
            // What the client sent before the error may still wait to be read: a client that sends DISCONNECT and
            // closes with unread data resets the connection, and the send can fail before the receive hands over
            // the DISCONNECT. Closing here would publish a will the client had withdrawn [MQTT-3.14.4-3]. So stop
            // sending and let the receive close it (it delivers the bytes before the error); a deadline closes it
            // should the receive not come (check_deadline). One whose socket ended while paused is closed once what it
            // sent is handled (finish_left).
            log::debug("client {}: a send failed ({}); nothing more is sent, its receive closes it", c.client_id(),
                       std::strerror(-res));
            c.send_failed = true;
            c.send_reset = reset;
            c.check_at_ms = now_ms_ + send_failed_grace_ms;
            deadlines_.schedule(c.id, c.check_at_ms);
            return;
        }
        if (c.st != connection::state::closing) close(c, reset ? "econnreset" : "socket_error", true);
        if (!lost_flights_.empty()) requeue_lost_flight(c);
        if (c.shut_deferred) [[unlikely]] // (see below) the socket failed: its receive still needs ending
            shutdown_socket(c);
        maybe_destroy(c);
        return;
    }
    m_.bytes_sent += static_cast<uint64_t>(res);
    // What the socket took pays off what the client sent while over the limit (check_unread): a client must read
    // about as much as it sends, or its replies pile up.
    c.rx_while_full -= static_cast<uint32_t>(std::min<uint64_t>(c.rx_while_full, static_cast<uint64_t>(res)));
    const bool done = c.sq.sent(static_cast<size_t>(res));
    if (c.st == connection::state::closing) {
        // The send a close waits for (see close) goes on to its end (a batch of more pieces than one sendmsg takes, or
        // a socket that took part of it), unless the deadline cuts it first; then the answers queued behind it go, and
        // the shutdown after them.
        if (c.shut_deferred && !done) [[unlikely]] {
            submit_send(c);
            return;
        }
        if (!lost_flights_.empty()) requeue_lost_flight(c);
        if (c.shut_deferred) [[unlikely]] {
            c.sq.finish_batch();
            answer_and_shut(c);
        }
        maybe_destroy(c);
        return;
    }
    if (c.heavy) [[unlikely]]
        weigh_heavy(c, static_cast<size_t>(res));
    if (!done) {
        submit_send(c); // partial write, or more pieces than one sendmsg takes: continue with the rest
        return;
    }
    c.sq.finish_batch();
    if (c.pump_waits && c.slot) {
        c.pump_waits = false;
        pump(*c.slot);
    }
    if (c.sq.has_queued())
        mark_dirty(c);
    else if (c.close_after_flush)
        close(c, "connack_refused", false);
}

void shard::close(connection& c, const char* reason, bool publish_will) {
    if (c.st == connection::state::closing) return;
    const bool was_connected = c.st == connection::state::connected;
    if (was_connected) {
        --connected_;
        node_.connected.fetch_sub(1, std::memory_order_relaxed);
    }
    c.st = connection::state::closing;
    // Its queue goes with it within the close's deadline, and a closing connection is not weighed again: counted, it
    // would keep the shard over its share and have close_stalled close others to pay for it.
    if (c.heavy) forget_heavy(c);
    // Reasons are short tokens (EMQ X shutdown reasons where one exists); a DISCONNECT is a normal exit, not counted.
    if (std::strcmp(reason, "normal") != 0) ++st_.closed_by_reason[reason];
    if (was_connected) log::debug("client {} ({}) closed: {}", c.client_id(), c.peer, reason);
    if (c.slot) {
        session_slot* slot = c.slot;
        c.slot = nullptr;
        slot->conn = nullptr;
        if (slot->s->clean()) {
            drop_session(slot);
        } else {
            requeue_unsent(c, *slot);
            went_offline(*slot);
        }
    }
    if (publish_will && c.will) {
        if (sys_topic(c.will->topic)) [[unlikely]] {
            drop_sys_publish(c, c.will->topic); // (see on_publish)
        } else {
            log::debug("publishing will of {} on {}", c.client_id_, c.will->topic);
            publish_from(c.will->topic, c.will->payload, c.will->qos, c.will->retain);
        }
    }
    c.will.reset();
    if (c.hold_listed) hold_gone_.push_back(c.id);
    node_.connections.fetch_sub(1, std::memory_order_relaxed);
    if (c.answer_on_close && c.send_busy && !stopping_) [[unlikely]] {
        // Its answers wait behind a send still pending (often one the kernel has finished, its completion not yet
        // reaped: a first write longer than the first receive buffer): they go when it ends, and the shutdown after
        // them (on_send), or the shutdown cuts both after its deadline (check_deadline).
        defer_shutdown(c);
    } else {
        answer_and_shut(c);
    }
    maybe_destroy(c);
}

void shard::answer_and_shut(connection& c) {
    // A backlog's chunks go as one batch (up to unseal_max_bytes): the answers are at its end. The shutdown waits for
    // that send's end (on_send carries it on and comes back here for what is left), or its deadline (check_deadline): a
    // socket takes only about mqtt.tcp_notsent_lowat at once, and a shutdown right behind the send cut the answers
    // behind a backlog past that (a client's PUBACK before its DISCONNECT, after 1 MB of QoS 0).
    if (c.answer_on_close) {
        // Its answers wait, as an open connection's do, for what they promise to be in the other shards' queues (a
        // SUBACK before a DISCONNECT in one write, its route adds past a full queue: a publish on the SUBACK was
        // routed without them, and lost to the persistent session); release_smp_waiters sends them, or the shutdown
        // cuts them at the deadline. (At the stop they are cut at once: begin_shutdown.) Not once a send has failed:
        // nothing more can reach the client, and waiting would only keep the connection (and its slot) up to 10 s.
        if (c.smp_wait && !c.send_failed && !stopping_) [[unlikely]] {
            defer_shutdown(c);
            return;
        }
        c.sq.unseal(unseal_max_bytes);
        start_send(c);
        if (c.send_busy && !stopping_) {
            defer_shutdown(c);
            return;
        }
    }
    shutdown_socket(c);
}

void shard::defer_shutdown(connection& c) {
    if (c.shut_deferred) return; // its deadline runs from the close, not from each batch
    c.shut_deferred = true;
    // Its answers may wait for another shard's queue too (at the close, or after the send pending then).
    c.check_at_ms = now_ms_ + (c.smp_wait ? smp_answer_wait_ms : answer_wait_ms);
    deadlines_.schedule(c.id, c.check_at_ms);
}

void shard::shutdown_socket(connection& c) {
    c.shut_deferred = false; // (a close that waited for its answers' send: this is the shutdown it put off)
    if (c.shut || c.fd < 0) return;
    c.shut = true;
    // Completes the pending recv (0) and send (error) so the connection can be freed when they have drained.
    if (!c.fixed) {
        // With a send pending: one started this turn (the answers before a DISCONNECT) is not in the kernel yet, and
        // the system call would cut it before it begins; the ring's SHUTDOWN comes after it. (An earlier one is ended
        // by either.)
        if (c.send_busy)
            submit_shutdown(c);
        else
            ::shutdown(c.fd, SHUT_RDWR);
        return;
    }
    // Nothing pending: the slot's close (maybe_destroy, next) sends the FIN at once.
    if (c.ops == 0) return;
    // Only the receive pending (a client's DISCONNECT, a keep-alive timeout, a takeover of a connection that was not
    // sending): cancelled where it waits, inside the submission, and the slot's close that follows once it has ended
    // sends the FIN. io_uring's SHUTDOWN always runs from a worker thread: a worker's wake-up and two context
    // switches of the shard's core for every client that disconnects (a connect storm made one per connection). Only
    // from Linux 6.13 (cancel_recv_on_close_): before, a slot's file was released, and the FIN sent, only once every
    // fixed-file request submitted before its close had ended, other connections' receives included.
    if (cancel_recv_on_close_ && c.ops == 1 && c.recv_armed) {
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_cancel(s, c.recv_record(), 0);
        io::set_completion(s, new close_op_done(*this, c, close_op_done::kind::cancel_recv));
        ++c.ops;
        ++recv_cancels_;
        return;
    }
    submit_shutdown(c);
}

void shard::submit_shutdown(connection& c) {
    // For a slot, which has no descriptor for the system call, and a descriptor whose send this turn started
    // (shutdown_socket). io_uring's SHUTDOWN ends the pending receive and send as the system call did, and sends the
    // FIN now rather than when they have drained. It runs from a worker that looks the slot up only when it gets to
    // it, so it counts as an operation and the slot is closed after it. (A send to a client that does not read needs
    // it: cancelling a send does not send the FIN before it ends.)
    io_uring_sqe* s = ring_.sqe();
    io_uring_prep_shutdown(s, c.fd, SHUT_RDWR);
    if (c.fixed) s->flags |= IOSQE_FIXED_FILE;
    io::set_completion(s, new close_op_done(*this, c, close_op_done::kind::shutdown));
    ++c.ops;
    ++shutdowns_;
}

void shard::close_op_done::on_complete(int res, uint32_t) {
    --c.ops;
    // (No SHUTDOWN can have gone before this: only check_deadline sends one after a cancel, once this has run.)
    if (k == kind::cancel_recv && c.recv_armed) {
        if (res != 0) {
            // The cancel did not find the receive, or could not stop it, and yet it is armed: not seen (a receive
            // that ended first has its completion reaped before the cancel's), so SHUTDOWN ends it.
            ++sh.recv_cancel_fallbacks_;
            sh.submit_shutdown(c);
        } else {
            // Found and cancelled: its completion comes right after this one. Should it not, SHUTDOWN ends it from
            // check_deadline, so the client is never left without the FIN. (While the shard stops, the tick that
            // runs check_deadline has ended: cancel_stuck ends whatever is left after the shutdown grace.)
            c.recv_cancel_found = true;
            c.check_at_ms = sh.now_ms_ + recv_cancel_grace_ms;
            sh.deadlines_.schedule(c.id, c.check_at_ms);
        }
    }
    sh.maybe_destroy(c);
    delete this;
}

void shard::settle_socket(connection& c) {
    if (c.fixed || c.ops != 0 || c.fd < 0 || ring_.files() == 0) return;
    const int slot = ring_.install_file(c.fd, &install_failed_op_);
    if (slot < 0) {
        if (!file_table_full_logged_) {
            file_table_full_logged_ = true;
            log::warn("shard {}: no room in its ring's file table of {} slots ({}): connections past it keep their "
                      "descriptors",
                      id_, ring_.files(), std::strerror(-slot));
        }
        return;
    }
    ring_.close_descriptor(c.fd);
    c.fd = slot;
    c.fixed = true;
}

void shard::install_failed_op::on_complete(int res, uint32_t) {
    // Not seen: the kernel refuses a placement for a descriptor that is not one, or for want of memory. The socket's
    // descriptor is closed by then (settle_socket), so its connection's next operation fails and closes it, after its
    // CONNECT was taken (its session attached, a previous connection of its client id closed): the client sees a
    // close and reconnects. Only the first few are logged, as a failure here would repeat for every connection; the
    // count comes at the shard's exit.
    if (++s->install_failures_ <= 3)
        log::warn("shard {}: the kernel could not place a socket in its ring's file table ({}): its connection is "
                  "closed",
                  s->id_, std::strerror(-res));
}

void shard::maybe_destroy(connection& c) {
    // A close that waits to send its answers keeps the connection (and its socket) until they go or its deadline cuts
    // them, even with nothing pending (its answers wait for messages to other shards: answer_and_shut).
    if (c.st != connection::state::closing || c.ops > 0 || c.buried || c.shut_deferred) return;
    c.buried = true;
    RINGMQ_ASSERT(!c.heavy); // (close took it out)
    if (c.fd >= 0 && !c.handed_off) {
        // Closed by the ring with the next submission instead of a system call of its own (see close_descriptor and
        // close_file for why nothing can reuse the number or slot before that).
        if (c.fixed)
            ring_.close_file(static_cast<unsigned>(c.fd));
        else
            ring_.close_descriptor(c.fd);
    }
    c.fd = -1;
    graveyard_.push_back(c.id);
}

// ---------------------------------------------------------------------------------------------------------------
// CONNECT

uint64_t shard::generated_id_bits() {
    uint64_t v = 0;
    // GRND_NONBLOCK: a shard never waits (the kernel's pool is ready early in boot; until then, the fallback below).
    if (::getrandom(&v, sizeof v, GRND_NONBLOCK) == static_cast<ssize_t>(sizeof v)) [[likely]]
        return v;
    // Never seen (before the pool is set up, a signal, or a seccomp filter that forbids the call): the clock's
    // nanoseconds and a count, mixed (SplitMix64's finaliser), so ids stay unique, if guessable.
    v = static_cast<uint64_t>(mono_ns()) + 0x9e3779b97f4a7c15ULL * ++generated_ids_;
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ULL;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebULL;
    return v ^ (v >> 31);
}

void shard::refuse_connect(connection& c, uint8_t code, const char* why) {
    conn_info("refusing CONNECT from {} ({}): {}", c.peer, c.client_id_.empty() ? "-" : c.client_id_, why);
    scratch_.clear();
    mqtt::encode_connack(scratch_, mqtt::protocol_version::v311, false, code);
    send_control(c, scratch_);
    ++m_.packets_connack;
    c.close_after_flush = true;
    c.refused = true;
}

bool shard::on_connect(connection& c, std::span<const uint8_t> body, uint8_t flags, std::span<const uint8_t> rest) {
    ++m_.packets_connect;
    mqtt::connect_view cv{};
    const mqtt::error e = mqtt::decode_connect(body, flags, cv);
    if (cv.version == mqtt::protocol_version::v5) {
        // MQTT 5 is not served yet: answer in v5 format "unsupported protocol version" (0x84) and close, whatever
        // follows the level (a CONNECT of another version's shape with level 5 was closed unanswered as a malformed v5
        // one).
        conn_info("refusing CONNECT from {}: MQTT 5 is not supported yet", c.peer);
        static const uint8_t v5_refuse[] = {0x20, 0x03, 0x00, 0x84, 0x00};
        append(c.sq.bytes(), v5_refuse, sizeof v5_refuse);
        mark_dirty(c, true);
        ++m_.packets_connack;
        ++m_.packets_sent;
        c.close_after_flush = true;
        c.refused = true;
        return false;
    }
    if (e == mqtt::error::unsupported_protocol_version) {
        refuse_connect(c, 0x01, "unacceptable protocol level");
        return false;
    }
    if (e == mqtt::error::client_id_rejected) {
        c.client_id_ = std::string(cv.client_id);
        refuse_connect(c, 0x02, "client identifier rejected");
        return false;
    }
    if (e != mqtt::error::none) {
        conn_info("closing {}: malformed CONNECT: {}", c.peer, mqtt::to_string(e));
        close(c, "parser_error", false);
        return false;
    }
    std::string client_id(cv.client_id);
    if (client_id.size() > cfg_.limits.max_client_id_len) {
        refuse_connect(c, 0x02, "client identifier longer than max_client_id_len");
        return false;
    }
    if (!cfg_.limits.allow_anonymous && cv.username.empty()) { // (an empty one is none)
        refuse_connect(c, 0x05, "anonymous connections are not allowed");
        return false;
    }
    if (cv.will_flag &&
        (!mqtt::valid_topic_name(cv.will_topic) || mqtt::topic_levels(cv.will_topic) > cfg_.limits.max_topic_levels)) {
        const bool deep = mqtt::valid_topic_name(cv.will_topic);
        if (deep)
            conn_info("closing {}: will topic of more than mqtt.max_topic_levels = {} levels", c.peer,
                      cfg_.limits.max_topic_levels);
        else
            conn_info("closing {}: invalid will topic", c.peer);
        close(c, deep ? "topic_levels_exceeded" : "protocol_error", false);
        return false;
    }
    if (client_id.empty()) {
        if (!cv.clean_session) {
            refuse_connect(c, 0x02, "empty client identifier requires clean session");
            return false;
        }
        // Generate an id homed on this shard, so the session needs no handoff, and one no session has: taking a
        // session over here would close that client and end its session, and the id must be unique [MQTT-3.1.3-6].
        // Sessions are only made on their home shard, so looking here is enough. Random, not counted: a 3.1.1 client
        // is never told its id, and another client that could guess it ("ringmq-0-1" until stop 73) could take the
        // anonymous one over and end its session. 64 bits in 16 hex digits: 23 characters in all, the length MQTT
        // has every server accept.
        // (One draw: the next values of it are as unguessable, for the shards' turns of the hash.)
        for (uint64_t bits = generated_id_bits();; ++bits) {
            client_id = fmt::format("ringmq-{:016x}", bits);
            if (home_shard(client_id, n_) == id_ && sessions_.find(client_id) == nullptr) break;
        }
    }
    // The address read at accept has completed before the CONNECT arrived on every kernel seen; where it failed (or,
    // never seen, has not completed), getpeername tries, so that neither the log nor a handoff carries "?" for it.
    if (!c.peer.known() && !c.fixed) c.peer = listener::peer_addr::of_socket(c.fd);
    const unsigned home = home_shard(client_id, n_);
    if (home != id_) {
        // The session lives elsewhere: pass the socket and every byte read so far (this CONNECT onwards).
        RINGMQ_ASSERT(!c.fixed); // settled only on its home shard
        auto* h = new handoff{c.fd, c.peer, std::vector<uint8_t>(rest.begin(), rest.end())};
        // The home shard parses this CONNECT again and counts it there.
        --m_.packets_connect;
        --m_.packets_received;
        push(home, k_handoff, id_, h);
        c.handed_off = true;
        c.st = connection::state::closing;
        log::debug("client {} ({}) handed to shard {}", client_id, c.peer, home);
        return false;
    }
    settle_socket(c);
    c.ver = cv.version;
    c.keepalive = cv.keepalive;
    c.clean = cv.clean_session;
    if (cv.has_username) c.username = std::make_unique<std::string>(cv.username);
    c.connected_wall = static_cast<int64_t>(::time(nullptr));
    c.client_id_ = std::move(client_id);
    if (cv.will_flag) {
        c.will = std::make_unique<connection::will_msg>();
        c.will->qos = cv.will_qos;
        c.will->retain = cv.will_retain;
        c.will->topic = std::string(cv.will_topic);
        c.will->payload.assign(cv.will_payload.begin(), cv.will_payload.end());
    }
    if (!attach_session(c, cv.clean_session)) return false;
    return c.st != connection::state::closing;
}

bool shard::attach_session(connection& c, bool clean) {
    bool present = false;
    session_slot* slot = sessions_.find(c.client_id_);
    if (slot && slot->conn && slot->conn->queue_held && slot->conn->st == connection::state::connected) [[unlikely]] {
        handle_kept_as_left(*slot->conn);
        slot = sessions_.find(c.client_id_); // (a DISCONNECT there ended the connection, and a clean session with it)
    }
    // The route deletes of a session replaced here are not this CONNECT's: it must not be held for them (own_received).
    const uint64_t routes_before = routes_broadcast_;
    if (slot) {
        if (slot->conn) {
            connection& old = *slot->conn;
            conn_info("client {} taken over: closing the connection from {} for the one from {}", c.client_id_,
                      old.peer, c.peer);
            if (!clean && !slot->s->clean()) requeue_unsent(old, *slot);
            old.slot = nullptr;
            slot->conn = nullptr;
            close(old, "conflict", true);
        }
        if (clean || slot->s->clean()) {
            drop_session(slot);
            slot = nullptr;
        } else {
            present = true;
        }
    }
    left_received_ += routes_broadcast_ - routes_before;
    if (!slot) {
        // Node-wide, checked and counted by each home shard on its own: shards that create sessions at the same
        // moment may pass the limit by one each.
        if (cfg_.limits.max_sessions != 0 &&
            node_.sessions.load(std::memory_order_relaxed) >= cfg_.limits.max_sessions) {
            c.will.reset(); // a refused CONNECT's will is never published
            refuse_connect(c, 0x03, "max_sessions reached");
            return false;
        }
        raise_peak(node_.sessions_peak, node_.sessions.fetch_add(1, std::memory_order_relaxed) + uint64_t{1});
        session::limits lim;
        lim.max_inflight = cfg_.limits.max_inflight;
        lim.max_queued = cfg_.limits.max_queued_messages;
        lim.max_queued_bytes = cfg_.limits.max_queued_bytes;
        lim.max_awaiting_rel = static_cast<uint16_t>(cfg_.limits.max_awaiting_rel); // 0..65535 (config)
        lim.burst_limits = static_cast<uint16_t>(cfg_.limits.publisher_hold_burst); // 0..1000
        lim.burst_kib = static_cast<uint32_t>(cfg_.limits.max_cross_shard_bytes >> 10);
        auto owned = std::make_unique<session_slot>();
        owned->s = std::make_unique<session::session>(c.client_id_, clean, lim);
        owned->created_at = static_cast<int64_t>(::time(nullptr));
        slot = &sessions_.insert(std::move(owned));
    }
    if (slot->offline_since_ms != 0 && (!queue_holds_.empty() || !stuck_queues_.empty())) [[unlikely]]
        hold_back_online(*slot);
    slot->conn = &c;
    slot->offline_since_ms = 0;
    c.slot = slot;
    c.st = connection::state::connected;
    ++connected_;
    raise_peak(node_.connected_peak, node_.connected.fetch_add(1, std::memory_order_relaxed) + 1);
    schedule_check(c); // a keepalive shorter than what is left of the connect timeout
    scratch_.clear();
    mqtt::encode_connack(scratch_, c.ver, present, 0);
    send_control(c, scratch_);
    ++m_.packets_connack;
    log::debug("client {} connected from {} (clean {}, keepalive {}, session present {})", c.client_id_, c.peer, clean,
               c.keepalive, present);
    if (present) {
        if (slot->s->held()) resume_reads(*slot);
        // Resend what is unacknowledged: PUBREL where PUBREC already came, in the order the PUBRECs came, then the
        // window's other messages in order, with DUP [MQTT-4.6.0-1, 4.6.0-4]. The two orders are kept apart because a
        // client may acknowledge out of order; the spec orders each kind only among its own.
        for (const uint16_t pid : slot->s->released_in_order()) {
            send_ack(c, mqtt::packet_type::pubrel, pid);
            ++m_.packets_pubrel_sent;
        }
        for (const session::outgoing& o : slot->s->window())
            if (!o.released) send_outgoing(c, o, true);
        pump(*slot);
    }
    return true;
}

// ---------------------------------------------------------------------------------------------------------------
// PUBLISH, acks, SUBSCRIBE

bool shard::on_publish(connection& c, uint8_t flags, std::span<const uint8_t> body, std::span<const uint8_t> frame) {
    // A QoS 0 PUBLISH without retain from a 3.x client is forwarded as the very bytes it arrived in (the decoder
    // refuses non-minimal remaining lengths, so they are the bytes the broker would encode).
    const bool verbatim = flags == 0 && c.ver != mqtt::protocol_version::v5;
    mqtt::publish_view pv{};
    ++m_.packets_publish_received;
    // A topic this shard already checked and routed (the route cache holds it as checked) is not checked again: the
    // UTF-8, wildcard and level checks walk it three times, about a tenth of a QoS 1 PUBLISH's instructions.
    std::string_view t;
    route_entry* known = leading_topic(body, t) && !t.empty() ? checked_route(t) : nullptr;
    const mqtt::error e = mqtt::decode_publish(body, flags, c.ver, pv, nullptr, known != nullptr);
    if (e != mqtt::error::none) return protocol_error(c, fmt::format("bad PUBLISH: {}", mqtt::to_string(e)).c_str());
    ++m_.messages_received;
    if (pv.qos == 0)
        ++m_.messages_qos0_received;
    else if (pv.qos == 1)
        ++m_.messages_qos1_received;
    else
        ++m_.messages_qos2_received;
    // A topic of N levels has at least N-1 bytes, so short topics need no count.
    if (!known && pv.topic.size() >= cfg_.limits.max_topic_levels &&
        mqtt::topic_levels(pv.topic) > cfg_.limits.max_topic_levels) [[unlikely]] {
        // A limit of this broker's, not of MQTT's (which has none): so logged by its name, not as a protocol error. A
        // 3.1.1 PUBACK cannot refuse, and dropping it unannounced would lose a QoS 1/2 message the client thinks sent.
        conn_info("closing {} ({}): PUBLISH to a topic of more than mqtt.max_topic_levels = {} levels", c.client_id(),
                  c.peer, cfg_.limits.max_topic_levels);
        return close_answered(c, "topic_levels_exceeded");
    }
    if (pv.qos == 2) {
        switch (c.slot->s->incoming_qos2(pv.packet_id)) {
        case session::qos2_arrival::fresh:
            break;
        case session::qos2_arrival::duplicate:
            // A resent QoS 2 PUBLISH whose first copy was already delivered: acknowledge only (exactly once).
            ack_publish(c, 2, pv.packet_id);
            return true;
        case session::qos2_arrival::full:
            // EMQ X 2.x's answer (not MQTT 3.1.1's, which always answers PUBREC): no PUBREC, the message is dropped
            // and the client still holds it (3.1.1 resends it when it reconnects to its persistent session).
            if (log::at_doubling(m_.messages_qos2_dropped))
                log::warn("client {}: {} QoS 2 messages await PUBREL (mqtt.max_awaiting_rel), message on {} dropped "
                          "without PUBREC ({} on this shard so far)",
                          c.client_id(), cfg_.limits.max_awaiting_rel, pv.topic, m_.messages_qos2_dropped);
            return true;
        }
    }
    if (!known && sys_topic(pv.topic)) [[unlikely]] {
        // $SYS/ is the broker's: a client's message there (retained, say) would pass for the broker's own figures until
        // their next round. Answered as usual (the client must not resend it) and dropped; never marked checked, so
        // neither cached path (forward_run, QoS 1/2) takes the topic, and a topic the cache knows as checked is none.
        drop_sys_publish(c, pv.topic);
        ack_publish(c, pv.qos, pv.packet_id);
        return true;
    }
    session::message_ref msg;
    route_entry& re = known && known->gen == trie_gen_ ? *known : route_lookup(pv.topic);
    re.checked = true; // the topic passed every PUBLISH check above
    // A retained message is stored once it is routed, unless a queue refused it (offer_to): refused, it is stored
    // when its client sends it again, as any refused message is taken then (until stop 59 the store took it first, so
    // a full queue could not refuse it, and dropped it though it was answered).
    const retain_check rc = pv.retain ? check_retain(pv.topic, pv.payload) : retain_check::off;
    const bool everywhere = rc == retain_check::store && n_ > 1;
    unsigned gated_to = n_;
    if (everywhere) [[unlikely]] {
        // The update each other shard stores is its live copy too (share_retained), so the fan-out forwards nothing;
        // but where the message is for one other shard's subscribers alone, the update goes there as a message that
        // may hold its client (and is refused as one), and that shard stores it as it arrives (handle_smp).
        const uint64_t remote = re.mask & ~(uint64_t{1} << id_);
        if (holdable_forward(re.matches.empty() && remote != 0 && (remote & (remote - 1)) == 0, pv.qos)) {
            gated_to = static_cast<unsigned>(__builtin_ctzll(remote));
            msg = retained_update(pv.topic, pv.payload, pv.qos);
        }
    }
    const uint64_t backlogged = outbox_.backlogged();
    refusable_ = pv.qos != 0;
    fan_out(re, pv.topic, pv.payload, pv.qos, msg, true, verbatim ? raw_frames{frame} : raw_frames{},
            !everywhere || gated_to != n_);
    refusable_ = false;
    if (refused_) [[unlikely]] {
        unreceive(c, pv.qos, pv.packet_id);
        return true;
    }
    if (rc == retain_check::store) {
        if (gated_to == n_) msg = retained_update(pv.topic, pv.payload, pv.qos);
        share_retained(msg, gated_to);
        // The ack waits until the update is on its way to every other shard (and the live copy with it).
        send_after_backlog(c, backlogged);
    } else if (rc != retain_check::off) {
        not_retained(rc, pv.topic, pv.payload.size(), pv.qos);
    }
    ack_publish(c, pv.qos, pv.packet_id);
    return true;
}

void shard::ack_publish(connection& c, uint8_t qos, uint16_t packet_id) {
    if (qos == 1) {
        send_ack(c, mqtt::packet_type::puback, packet_id);
        ++m_.packets_puback_sent;
    } else if (qos == 2) {
        send_ack(c, mqtt::packet_type::pubrec, packet_id);
        ++m_.packets_pubrec_sent;
    }
}

void shard::drop_sys_publish(const connection& c, std::string_view topic) {
    ++m_.messages_dropped;
    if (log::at_doubling(sys_publishes_dropped_))
        log::warn("client {}: message on {} dropped: $SYS/ topics are the broker's own ({} on this shard so far)",
                  c.client_id(), topic, sys_publishes_dropped_);
}

size_t shard::forward_run(const uint8_t* p, size_t n, const mqtt::fixed_header& h) {
    std::string_view topic;
    std::span<const uint8_t> payload;
    if (!qos0_parts(p, h, topic, payload)) return 0;
    // Only a topic this shard already validated and routed (the cache entry says so) skips the checks and the
    // lookup, and only while the trie is unchanged.
    route_entry* known = checked_route(topic);
    if (!known || known->gen != trie_gen_) return 0;
    route_entry& e = *known;
    // Following QoS 0 PUBLISHes to the same topic that are already in the buffer join the run when every local
    // match takes the direct path (connected, nothing queued): each local subscriber then gets the run's bytes in
    // one copy, in order, and each other shard with subscribers gets the run as one message. Anything else goes
    // one message at a time.
    size_t end = size_t{h.header_len} + h.remaining_length;
    uint64_t k = 1;
    const bool direct = all_direct(e);
    while (direct && end < n && p[end] == 0x30) {
        mqtt::fixed_header h2{};
        if (mqtt::parse_fixed_header(p + end, n - end, h2) != mqtt::error::none) break;
        const size_t t2 = size_t{h2.header_len} + h2.remaining_length;
        std::string_view topic2;
        std::span<const uint8_t> payload2;
        if (t2 > n - end || t2 > cfg_.limits.max_packet_size || !qos0_parts(p + end, h2, topic2, payload2) ||
            topic2 != topic)
            break;
        end += t2;
        ++k;
    }
    m_.packets_received += k;
    m_.packets_publish_received += k;
    m_.messages_received += k;
    m_.messages_qos0_received += k;
    session::message_ref msg;
    fan_out(e, topic, payload, 0, msg, true, raw_frames{std::span<const uint8_t>(p, end), k});
    return end;
}

template <uint8_t qos>
bool shard::publish_qos12(connection& c, const uint8_t* p, const mqtt::fixed_header& h, route_entry*& last) {
    static_assert(qos == 1 || qos == 2);
    const uint8_t* b = p + h.header_len;
    const size_t rl = h.remaining_length;
    if (rl < 4) return false;
    const size_t tl = size_t{b[0]} << 8 | b[1];
    if (tl == 0 || 4 + tl > rl) return false;
    const uint16_t pid = static_cast<uint16_t>(b[2 + tl] << 8 | b[3 + tl]);
    if (pid == 0) return false;
    const std::string_view topic(reinterpret_cast<const char*>(b) + 2, tl);
    // As for forward_run: only a topic this shard checked and routed, while the trie is unchanged, skips the checks
    // (a QoS 1/2 PUBLISH has no other: its packet id is not zero and its flags are those of a plain message).
    // A connection mostly publishes one topic: the entry its previous PUBLISH in this buffer used is compared before
    // the topic is hashed (the cache's slots never move; whatever a slot holds now is what is compared).
    route_entry* known = last && last->checked && last->topic == topic ? last : checked_route(topic);
    if (!known || known->gen != trie_gen_) return false;
    // A QoS 2 id already awaiting release (a resend) or past mqtt.max_awaiting_rel goes the full way, which answers
    // it; a fresh one is recorded here.
    if constexpr (qos == 2)
        if (c.slot->s->incoming_qos2(pid) != session::qos2_arrival::fresh) return false;
    last = known;
    ++m_.packets_received;
    ++m_.packets_publish_received;
    ++m_.messages_received;
    ++(qos == 1 ? m_.messages_qos1_received : m_.messages_qos2_received);
    const std::span<const uint8_t> payload(b + 4 + tl, rl - 4 - tl);
    const route_entry& e = *known;
    refusable_ = true;
    if (e.matches.size() == 1 && e.matches[0].qos != 0 && (e.mask & ~(uint64_t{1} << id_)) == 0) {
        // One subscriber, on this shard, at QoS 1 or 2 (the usual point-to-point flow): straight to its session.
        sole_subscriber_ = true;
        offer_to(*e.matches[0].slot, session::message_ref::adopt(session::message::make(topic, payload, qos, false)),
                 qos == 1 ? uint8_t{1} : e.matches[0].qos, topic);
        sole_subscriber_ = false;
    } else {
        session::message_ref msg;
        fan_out(e, topic, payload, qos, msg, true, raw_frames{}, true);
    }
    refusable_ = false;
    if (refused_) [[unlikely]] {
        unreceive(c, qos, pid);
        return true;
    }
    ack_publish(c, qos, pid);
    return true;
}

void shard::unreceive(connection& c, uint8_t qos, uint16_t pid) {
    // Refused (offer_to): it is handled, and counted, again when its client is read again. (Its packet, still unread,
    // is counted again too: process() steps back over it.)
    --m_.messages_received;
    --(qos == 1 ? m_.messages_qos1_received : m_.messages_qos2_received);
    --m_.packets_publish_received;
    if (qos == 2) c.slot->s->incoming_release(pid); // fresh again when it comes back
    // One that has left is not read again: the rest of what it left goes on (a DISCONNECT among it counts), and the
    // message, never answered, it sends again if it comes back.
    if (leaving_) refused_ = false;
}

void shard::forgotten(std::string_view topic) {
    if (log::at_doubling(++forgotten_))
        log::info("client {} left, held, with a QoS 2 message on {} unread that its queue has no room for past its "
                  "burst room: forgotten unanswered, as if never sent, so that it is fresh when the client sends it "
                  "again ({} so far on this shard)",
                  publisher_->client_id(), topic, forgotten_);
}

void shard::on_puback(connection& c, uint16_t pid) {
    ++m_.packets_puback_received;
    if (c.slot->s->on_puback(pid))
        pump(*c.slot);
    else
        ++m_.packets_puback_missed;
}

bool shard::on_ack(connection& c, mqtt::packet_type t, std::span<const uint8_t> body, uint8_t flags) {
    mqtt::ack_view av{};
    const mqtt::error e = mqtt::decode_ack(t, body, flags, c.ver, av);
    if (e != mqtt::error::none)
        return protocol_error(c, fmt::format("bad {}: {}", mqtt::to_string(t), mqtt::to_string(e)).c_str());
    on_ack_id(c, t, av.packet_id);
    return true;
}

void shard::on_ack_id(connection& c, mqtt::packet_type t, uint16_t pid) {
    session::session& s = *c.slot->s;
    switch (t) {
    case mqtt::packet_type::puback:
        on_puback(c, pid);
        break;
    case mqtt::packet_type::pubrec:
        ++m_.packets_pubrec_received;
        if (!s.on_pubrec(pid)) ++m_.packets_pubrec_missed;
        // PUBREL even for an id not in the window (the session was discarded, or the PUBREC is a stale resend): the
        // client holds the id until it is released, and nothing else would ever release it (as Mosquitto does).
        send_ack(c, mqtt::packet_type::pubrel, pid);
        ++m_.packets_pubrel_sent;
        break;
    case mqtt::packet_type::pubrel:
        ++m_.packets_pubrel_received;
        if (!s.incoming_release(pid)) ++m_.packets_pubrel_missed;
        send_ack(c, mqtt::packet_type::pubcomp, pid); // MQTT-4.3.3-2: PUBCOMP even for an unknown id
        ++m_.packets_pubcomp_sent;
        break;
    case mqtt::packet_type::pubcomp:
        ++m_.packets_pubcomp_received;
        if (s.on_pubcomp(pid))
            pump(*c.slot);
        else
            ++m_.packets_pubcomp_missed;
        break;
    default:
        break;
    }
}

bool shard::valid_filter(std::string_view f) const {
    return mqtt::valid_topic_filter(f) && mqtt::topic_levels(f) <= cfg_.limits.max_topic_levels;
}

bool shard::on_subscribe(connection& c, std::span<const uint8_t> body, uint8_t flags) {
    ++m_.packets_subscribe;
    mqtt::subscribe_view sv{};
    const mqtt::error e = mqtt::decode_subscribe(body, flags, c.ver, sv);
    if (e != mqtt::error::none) return protocol_error(c, fmt::format("bad SUBSCRIBE: {}", mqtt::to_string(e)).c_str());
    const uint64_t backlogged = outbox_.backlogged();
    std::vector<uint8_t> codes;
    codes.reserve(sv.entries.size());
    for (const mqtt::subscription& sub : sv.entries) {
        if (!valid_filter(sub.filter)) {
            if (log::at_doubling(invalid_filters_))
                log::info(
                    "client {}: refusing subscription to {} '{}' ({} invalid filters refused on this shard so far)",
                    c.client_id_,
                    mqtt::valid_topic_filter(sub.filter)
                        ? fmt::format("a filter of more than mqtt.max_topic_levels = {} levels",
                                      cfg_.limits.max_topic_levels)
                        : std::string("invalid filter"),
                    sub.filter, invalid_filters_);
            codes.push_back(0x80);
            continue;
        }
        const uint8_t qos = sub.options & 3;
        if (!add_subscription(*c.slot, std::string(sub.filter), qos)) {
            if (log::at_doubling(subscriptions_over_))
                log::info("client {}: refusing subscription to '{}': it has mqtt.max_subscriptions = {} ({} refused "
                          "on this shard so far)",
                          c.client_id_, sub.filter, cfg_.limits.max_subscriptions, subscriptions_over_);
            codes.push_back(0x80);
            continue;
        }
        codes.push_back(qos);
    }
    send_after_backlog(c, backlogged);
    scratch_.clear();
    mqtt::encode_suback(scratch_, c.ver, sv.packet_id, codes);
    send_control(c, scratch_);
    ++m_.packets_suback;
    // Retained messages follow the SUBACK (MQTT-3.8.4-3 allows either order; clients expect this one).
    for (size_t i = 0; i < sv.entries.size(); ++i)
        if (codes[i] != 0x80 && c.slot) deliver_retained(*c.slot, sv.entries[i].filter, codes[i]);
    return true;
}

bool shard::on_unsubscribe(connection& c, std::span<const uint8_t> body, uint8_t flags) {
    ++m_.packets_unsubscribe;
    mqtt::unsubscribe_view uv{};
    const mqtt::error e = mqtt::decode_unsubscribe(body, flags, c.ver, uv);
    if (e != mqtt::error::none)
        return protocol_error(c, fmt::format("bad UNSUBSCRIBE: {}", mqtt::to_string(e)).c_str());
    for (std::string_view f : uv.filters)
        remove_subscription(*c.slot, std::string(f));
    scratch_.clear();
    mqtt::encode_unsuback(scratch_, c.ver, uv.packet_id, {});
    send_control(c, scratch_);
    ++m_.packets_unsuback;
    return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Sending

void shard::send_control(connection& c, const std::vector<uint8_t>& bytes) {
    append(c.sq.bytes(), bytes.data(), bytes.size());
    ++m_.packets_sent;
    mark_dirty(c, true);
}

void shard::send_ack(connection& c, mqtt::packet_type t, uint16_t pid) {
    const uint8_t first = static_cast<uint8_t>(static_cast<uint8_t>(t) << 4 | (t == mqtt::packet_type::pubrel ? 2 : 0));
    const uint8_t bytes[4] = {first, 2, static_cast<uint8_t>(pid >> 8), static_cast<uint8_t>(pid & 0xff)};
    append(c.sq.bytes(), bytes, sizeof bytes);
    ++m_.packets_sent;
    mark_dirty(c, true);
}

void shard::encode_frame(byte_vec& out, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                         bool retain, bool dup, uint16_t pid, bool with_payload) {
    const size_t rl = 2 + topic.size() + (qos ? 2 : 0) + payload.size();
    // One grow for the whole frame (less the payload when the caller queues it apart): the fixed header and topic
    // length are encoded in place and the pieces copied after them.
    const size_t vl = mqtt::varint_size(static_cast<uint32_t>(rl));
    uint8_t* d = grow(out, 1 + vl + rl - (with_payload ? 0 : payload.size()));
    d += mqtt::encode_publish_prefix(d, qos, retain, dup, static_cast<uint32_t>(rl),
                                     static_cast<uint16_t>(topic.size()));
    std::memcpy(d, topic.data(), topic.size());
    d += topic.size();
    if (qos) {
        d[0] = static_cast<uint8_t>(pid >> 8);
        d[1] = static_cast<uint8_t>(pid & 0xff);
        d += 2;
    }
    if (with_payload && !payload.empty()) std::memcpy(d, payload.data(), payload.size());
}

void shard::count_publish_sent(std::string_view topic, uint8_t qos, uint64_t n) {
    if (sys_topic(topic)) [[unlikely]]
        return;
    m_.packets_sent += n;
    m_.packets_publish_sent += n;
    m_.messages_sent += n;
    if (qos == 0)
        m_.messages_qos0_sent += n;
    else if (qos == 1)
        m_.messages_qos1_sent += n;
    else
        m_.messages_qos2_sent += n;
}

void shard::send_publish(connection& c, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                         bool retain, bool dup, uint16_t pid) {
    encode_frame(c.sq.bytes(), topic, payload, qos, retain, dup, pid);
    count_publish_sent(topic, qos);
    mark_dirty(c);
}

void shard::send_outgoing(connection& c, const session::outgoing& o, bool dup) {
    const session::message& m = *o.msg.get();
    // A large payload is sent from the message itself, which the session holds anyway until it is acknowledged
    // (QoS 1/2) or sent: only the frame's head, which differs per subscriber by packet id, is copied.
    const std::span<const uint8_t> frame = m.frame();
    const size_t head = m.frame_head();
    const bool share = frame.size() - head >= share_min_bytes;
    if (o.qos != 0) {
        // The message is held as this very frame: copied, with its first byte and packet id set.
        const size_t take = share ? head : frame.size();
        uint8_t* d = grow(c.sq.bytes(), take);
        std::memcpy(d, frame.data(), take);
        d[0] = static_cast<uint8_t>(0x30 | (dup ? 0x08 : 0) | o.qos << 1 | (m.retain() ? 1 : 0));
        d[head - 2] = static_cast<uint8_t>(o.pid >> 8);
        d[head - 1] = static_cast<uint8_t>(o.pid & 0xff);
    } else {
        encode_frame(c.sq.bytes(), m.topic(), m.payload(), 0, m.retain(), dup, 0, !share);
    }
    if (share) c.sq.append_payload(o.msg.get());
    count_publish_sent(m.topic(), o.qos);
    mark_dirty(c);
}

void shard::pump(session_slot& slot) {
    while (slot.conn) {
        connection& c = *slot.conn;
        // Messages the session queued (while it was offline, behind a full window or behind retained messages) were
        // admitted under its queue's limits: they wait there while the connection has mqtt.max_outgoing_bytes to
        // send, and go once it has sent them (on_send), rather than be dropped as for a client that does not read. A
        // reconnecting client's whole queue once went in one go, and every QoS 0 message past the limit was dropped.
        if (c.queued_bytes() > out_limit_) {
            c.pump_waits = true;
            return;
        }
        const session::outgoing* o = slot.s->next_ready();
        if (!o) return;
        send_outgoing(c, *o, false);
        if (!queue_holds_.empty()) [[unlikely]]
            note_queue_taken(slot);
    }
}

void shard::note_queue_taken(const session_slot& slot) {
    if (const auto it = queue_holds_.find(&slot); it != queue_holds_.end()) it->second.moved_ms = now_ms_;
}

// ---------------------------------------------------------------------------------------------------------------
// Routing

void shard::route(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, session::message_ref& msg,
                  bool local_origin, bool forward) {
    fan_out(route_lookup(topic), topic, payload, qos, msg, local_origin, {}, forward);
}

shard::route_entry& shard::route_slot(std::string_view topic) {
    return route_cache_[route_hash(topic) & (route_cache_size - 1)];
}

shard::route_entry* shard::checked_route(std::string_view topic) {
    route_entry& e = route_slot(topic);
    return e.checked && e.topic == topic ? &e : nullptr;
}

size_t shard::route_entry::bytes() const {
    static constexpr size_t inline_capacity = std::string().capacity(); // held in the string itself
    return (topic.capacity() > inline_capacity ? topic.capacity() : 0) + matches.capacity() * sizeof(match);
}

shard::route_entry& shard::route_lookup(std::string_view topic) {
    // Most traffic repeats a few topics: remember each topic's deduplicated matches until the trie next changes.
    route_entry& e = route_slot(topic);
    if (e.gen == trie_gen_ && e.topic == topic) return e;
    if (e.topic != topic) e.checked = false;
    matches_.clear();
    // A session appears twice only when two different filters match; with one filter no dedup is needed.
    const char* first_filter = nullptr;
    bool several_filters = false;
    const uint64_t visits = trie_.visits();
    const uint64_t mask = trie_.match(topic, [&](const routing::subscriber_entry& se, std::string_view filter) {
        if (!first_filter)
            first_filter = filter.data();
        else if (filter.data() != first_filter)
            several_filters = true;
        matches_.push_back(match{static_cast<session_slot*>(se.sub), static_cast<uint8_t>(se.options & 3)});
    });
    note_work(matches_.size() + (trie_.visits() - visits));
    if (several_filters && matches_.size() > 1) {
        // A session with overlapping subscriptions gets one copy at the highest granted QoS.
        std::sort(matches_.begin(), matches_.end(), [](const match& a, const match& b) { return a.slot < b.slot; });
        size_t w = 0;
        for (size_t i = 0; i < matches_.size(); ++i) {
            if (w > 0 && matches_[w - 1].slot == matches_[i].slot)
                matches_[w - 1].qos = std::max(matches_[w - 1].qos, matches_[i].qos);
            else
                matches_[w++] = matches_[i];
        }
        matches_.resize(w);
    }
    // The cache holds at most route_cache_budget bytes of topics and match lists: long topics, or many wildcard
    // subscribers matching many distinct topics, would otherwise keep a copy in each of the 4096 slots (a 60 KiB
    // topic in each is 250 MB; 2000 "sensor/#" subscribers, 130 MB). Reaching it empties the whole cache, which
    // gives back every slot's memory, stale generations' too, and lets hot topics in again at once; that happens
    // once per budget's worth of new entries, so its cost is spread over them. (Refusing to cache past the budget
    // instead left it full of whatever filled it, and every new topic uncached, until traffic hit those slots.)
    route_cache_bytes_ -= e.bytes();
    if (route_cache_bytes_ + topic.size() + matches_.size() * sizeof(match) > route_cache_budget) {
        for (route_entry& r : route_cache_) {
            // Moved out, not assigned over: a short string assigned into a long one keeps the long one's buffer.
            const route_entry gone = std::move(r);
            r = route_entry{};
        }
        route_cache_bytes_ = 0;
        if (log::at_doubling(route_cache_flushes_))
            log::info("shard {}: the route cache reached {} MiB of topics and matches and was emptied ({} times so "
                      "far)",
                      id_, route_cache_budget >> 20, route_cache_flushes_);
    }
    // Swapped into fresh storage when the old is much larger: a slot that once held a long topic gives it back
    // (a move assignment of a short string would copy into the old buffer and keep it).
    if (e.topic.capacity() > 2 * topic.size() + 64)
        std::string(topic).swap(e.topic);
    else
        e.topic.assign(topic);
    if (e.matches.capacity() > 2 * matches_.size() + 16)
        std::vector<match>(matches_.begin(), matches_.end()).swap(e.matches);
    else
        e.matches.assign(matches_.begin(), matches_.end());
    e.mask = mask;
    e.gen = trie_gen_;
    route_cache_bytes_ += e.bytes();
    return e;
}

void shard::fan_out(const route_entry& e, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                    session::message_ref& msg, bool local_origin, const raw_frames& raw, bool forward) {
    frame_q0_valid_ = false;
    uint64_t mask = e.mask;
    const std::vector<match>& hits = e.matches;
    note_work(hits.size() + 1);
    // Delivery never changes the trie or the session registry, so the matches stay valid through the loop.
    {
        // Ends the sharing however the loop is left (a throw included), so no later fan-out sees stale bytes.
        struct share_scope {
            shard& s;
            ~share_scope() {
                s.fan_share_ok_ = false;
                if (s.fan_shared_) s.fan_shared_->release(); // the send queues that took it hold their own refs
                s.fan_shared_ = nullptr;
            }
        } scope{*this};
        fan_share_ok_ = hits.size() >= 2;
        // A message routed from here (its topic and payload are not in msg) that no other shard needs is not needed
        // after its last local delivery.
        const size_t last = local_origin && (mask & ~(uint64_t{1} << id_)) == 0 ? hits.size() : 0;
        // (A message from another shard that may hold its publisher is for this shard's subscribers alone.)
        sole_subscriber_ = hits.size() == 1 && (last == 1 || remote_from_ != 0);
        remote_shared_ = remote_from_ != 0 && hits.size() > 1;
        for (size_t i = 0; i < hits.size(); ++i)
            deliver(*hits[i].slot, topic, payload, std::min(qos, hits[i].qos), msg, qos, false, raw, i + 1 == last);
        sole_subscriber_ = false;
    }
    if (!local_origin) return;
    mask &= ~(uint64_t{1} << id_);
    // The broker's own $SYS messages count in no message counter (as EMQ X's did not).
    const uint64_t counted = sys_topic(topic) ? 0 : 1;
    if (hits.empty() && mask == 0) {
        m_.messages_dropped += counted * raw.count;
        return;
    }
    if (!forward) {
        m_.messages_forward += counted * static_cast<uint64_t>(std::popcount(mask)); // carried by the retained update
        return;
    }
    // For one other shard's subscribers alone (with several, one shard's slow subscriber would slow the others').
    const bool one_shard = hits.empty() && (mask & (mask - 1)) == 0;
    while (mask) {
        const unsigned to = static_cast<unsigned>(__builtin_ctzll(mask));
        mask &= mask - 1;
        if (!raw.bytes.empty()) {
            // Verbatim QoS 0 frames travel as they are: the receiving shard copies them without re-encoding.
            auto run = std::make_unique<publish_run>(publish_run{raw.count, {}});
            append(run->frames, raw.bytes.data(), raw.bytes.size()); // one memcpy (see grow)
            const size_t weight = run->frames.size();
            push_weighed(to, k_publish_run, weight, run.release());
            m_.messages_forward += counted * raw.count;
            continue;
        }
        if (!msg) msg = session::message_ref::adopt(session::message::make(topic, payload, qos, false));
        // For that shard's subscribers alone, from a client: it may be held here for a queue there (whether it can
        // be is asked only where a gate would hold it: its session is not read for every message).
        if (holdable_forward(one_shard, qos)) {
            if (!gates_closed())
                push_holdable(to, msg.get());
            else
                push_gated(to, msg, topic);
            continue;
        }
        msg->add_ref();
        m_.messages_forward += counted;
        push_weighed(to, k_publish, msg->size(), msg.get());
    }
}

shard::remote_gate* shard::gate_for(std::string_view topic, unsigned to) {
    // (A gate of another shard's queue that had the topic before is passed over: that shard would tell anew, and a
    // filter of this one that takes it, told already, would not be.)
    if (!gate_topics_.empty())
        if (const auto it = gate_topics_.find(topic); it != gate_topics_.end() && it->second->shard == to)
            return it->second;
    for (const auto& [filter, g] : gate_filters_)
        if (g->shard == to && routing::topic_matches(filter, topic) &&
            (g->exempt.empty() || !g->exempt.contains(topic)))
            return g;
    return nullptr;
}

bool shard::ungated_filter_takes(std::string_view topic, unsigned to) const {
    // The filters there that take it, by the remote bits, against those of them gates here hold. (The same filter
    // shared by a fast and a slow subscriber counts once: the first message shows the others, k_gate_drop.)
    const size_t there = trie_.remote_matches(topic, to);
    const uint64_t bit = uint64_t{1} << to;
    size_t gated = 0;
    if (const auto it = gate_topics_.find(topic);
        it != gate_topics_.end() && it->second->shard == to && (trie_.remote_mask(topic) & bit))
        ++gated;
    for (const auto& [filter, g] : gate_filters_)
        if (g->shard == to && routing::topic_matches(filter, topic) && (trie_.remote_mask(filter) & bit)) ++gated;
    return there > gated;
}

void shard::answer_gate_ask(unsigned from, gate_close& q) {
    // The route's matches are one per session (route_lookup folds a session's overlapping filters into one).
    const route_entry& e = route_lookup(q.topic);
    const bool alone = e.matches.size() == 1 && reinterpret_cast<uintptr_t>(queue_key(e.matches[0].slot)) == q.queue;
    push(from, k_gate_pin, alone ? 1 : 0, new gate_close{q.queue, std::move(q.topic)});
}

void shard::gate_answered(unsigned from, gate_close& a, bool alone) {
    const auto it = gates_.find({from, a.queue});
    if (it == gates_.end()) return; // opened since
    remote_gate& g = it->second;
    // Those held for this answer are read again, and those that found every question out (they ask now); the others
    // wait for their own (until ca07190 all were read again at each answer, and one whose answer came earlier in the
    // same turn could find its topic's place taken by a later one and ask again). Not for a word from close_remote on
    // a topic not asked about: one comes with each message let go or on its way before the gate closed that finds the
    // queue alone at its mark.
    const bool asked = g.asking.erase(a.topic) != 0;
    if (asked) {
        size_t kept = 0;
        for (auto& k : g.askers) {
            const bool mine = k.topic == a.topic;
            if (!mine && g.asking.contains(k.topic)) {
                // (Not onto itself: libstdc++'s move assignment clears its source, the topic with it.)
                if (&g.askers[kept] != &k) g.askers[kept] = std::move(k);
                ++kept;
                continue;
            }
            unheld_.push_back(k.id);
            if (!mine || !alone) continue; // (let go: exempt, or the gate goes)
            std::erase_if(g.answered, remote_gate::of_client(k.id));
            if (g.answered.size() >= answered_max) g.answered.erase(g.answered.begin());
            g.answered.push_back(std::move(k));
        }
        g.askers.resize(kept);
    }
    if (alone) {
        // (Or told by close_remote: a message let go reached the queue alone at its mark.) Not exempt either way (a
        // k_gate_drop may have put it there meanwhile, where gate_for would pass it by).
        const bool was_exempt = g.exempt.erase(a.topic) != 0;
        if (asked || was_exempt) keep_topic(g.pinned, g.evict_at, std::move(a.topic));
        return;
    }
    // Others get it too: a wildcard gate lets it go; as on k_gate_drop (drop_gate_topic), the topic's own gate goes
    // (its clients are not held for a topic others get).
    const auto t = gate_topics_.find(a.topic);
    if (t != gate_topics_.end() && t->second == &g)
        forget_gate(from, a.queue);
    else
        keep_topic(g.exempt, g.evict_at, std::move(a.topic));
}

void shard::keep_topic(topic_set& set, size_t& evict_at, std::string topic) {
    if (set.size() >= hold_topics_max && !set.contains(topic)) {
        const size_t n = set.bucket_count();
        for (size_t i = 0; i < n; ++i) {
            const size_t b = (evict_at + i) % n;
            if (set.bucket_size(b) == 0) continue;
            set.erase(set.find(*set.begin(b)));
            evict_at = b + 1;
            break;
        }
    }
    set.insert(std::move(topic));
}

void shard::forget_topics(unsigned from, std::string_view filter, topic_set remote_gate::*which) {
    for (auto& [key, g] : gates_)
        if (g.shard == from && !(g.*which).empty())
            std::erase_if(g.*which, [&](const std::string& t) { return routing::topic_matches(filter, t); });
}

void shard::unpin(unsigned from, std::string_view filter) {
    forget_topics(from, filter, &remote_gate::pinned);
    for (auto& [key, g] : gates_) {
        if (g.shard != from) continue;
        // (Asked about anew by those read again with the answer too.)
        if (!g.answered.empty())
            std::erase_if(g.answered,
                          [&](const remote_gate::asker& e) { return routing::topic_matches(filter, e.topic); });
    }
    read_refused_again(filter, from);
}

// A client refused a message on a topic the filter takes is read again now: for more than one shard, its message goes
// at once; asked about, in a round trip (until stop 76 it waited for a turn of the slow queue, which may take nothing
// for publisher_hold_ms). Others keep their place. On the queue's own shard only where the topic is asked about now
// (ungated_filter_takes: a filter there that no gate holds takes it), a guard: push_gated counts filters there, not
// subscribers, and a client read again for nothing would lose its place and its hold's clock. (One that the answer
// finds gated all the same, the queue still the topic's only subscriber there, the new filter the slow session's own
// say, waits at the back with its clock started anew: the queue's shard still opens the gate once the queue has not
// moved for publisher_hold_ms.)
void shard::read_refused_again(std::string_view filter, unsigned on) {
    for (auto& [key, g] : gates_) {
        if (g.refused_topics.empty()) continue;
        const bool asks = g.shard == on;
        bool takes = false;
        if (!routing::has_wildcard(filter))
            takes = g.refused_topics.contains(filter);
        else
            for (const auto& [topic, n] : g.refused_topics)
                if ((takes = routing::topic_matches(filter, topic))) break;
        if (takes && g.drop_waiters([&](const remote_gate::waiter& w) {
                if (w.topic.empty() || !routing::topic_matches(filter, w.topic)) return false;
                if (asks && !ungated_filter_takes(w.topic, g.shard)) return false;
                unheld_.push_back(w.id);
                return true;
            }) != 0)
            unask_turns(g);
    }
}

void shard::unfilter_gate(unsigned from, const gate_close& u) {
    const auto it = gates_.find({from, u.queue});
    if (it == gates_.end() || it->second.topics.erase(u.topic) == 0) return;
    remote_gate& g = it->second;
    unindex_gate(g, u.topic);
    if (g.topics.empty()) {
        forget_gate(from, g.queue); // (holds nothing: as a gate whose topic reached no queue there)
        return;
    }
    // Its clients refused a message on a topic that none of the gate's other filters takes wait for nothing now.
    std::vector<std::string> gone;
    for (const auto& [topic, n] : g.refused_topics)
        if (routing::topic_matches(u.topic, topic) &&
            std::none_of(g.topics.begin(), g.topics.end(),
                         [&](const std::string& f) { return routing::topic_matches(f, topic); }))
            gone.push_back(topic);
    if (!gone.empty() && g.drop_waiters([&](const remote_gate::waiter& w) {
            if (std::find(gone.begin(), gone.end(), w.topic) == gone.end()) return false;
            unheld_.push_back(w.id);
            return true;
        }) != 0)
        unask_turns(g);
}

void shard::push_gated(unsigned to, session::message_ref& msg, std::string_view topic) {
    remote_gate* g = gate_for(topic, to);
    if (!g || leaving_) {
        push_holdable(to, msg.get()); // (one that has left is taken there as if no gate had closed yet)
        return;
    }
    // A topic another filter there takes too is asked about, and its publisher held only for the answer, a round
    // trip: its other subscribers are not held to the slow one's pace (until stop 74 its first message waited for a
    // turn of the slow queue, and only the word that it had reached others too, k_gate_drop, let it go: 0.4 s per new
    // topic behind a slow '#' subscriber). That filter may be the slow session's own (at QoS 0, or one the gate was
    // not told of): the topic is gated if the queue is its only subscriber there (k_gate_pin), else let go. (Sent on
    // while asking, as a2e9f4a did, each new topic's first messages passed the queue's mark: eight publishers on new
    // topics overflowed its burst room.) A client read again with the answer that its topic reaches the queue alone
    // keeps it until its message goes, credit may come later (until then other answers may have taken the topic's
    // place in `pinned`: without it, read again with the credit, the client would ask again, and so on).
    bool answered = false;
    size_t answered_at = 0;
    if (!g->answered.empty() && publisher_) {
        const auto a = std::find_if(g->answered.begin(), g->answered.end(), remote_gate::of_client(publisher_->id));
        if (a != g->answered.end()) {
            answered = a->topic == topic;
            answered_at = static_cast<size_t>(a - g->answered.begin());
            if (!answered) g->answered.erase(a);
        }
    }
    const bool asking = !answered && !g->asking.empty() && g->asking.contains(topic);
    if (asking || (!answered && !g->pinned.contains(topic) && ungated_filter_takes(topic, to))) {
        // (With hold_topics_max questions out, its client waits for the first answer and asks then.)
        if (!asking && g->asking.size() < hold_topics_max) {
            g->asking.emplace(topic);
            push(to, k_gate_ask, 0, new gate_close{g->queue, std::string(topic)});
        }
        if (refusable_ && publisher_holdable(*publisher_)) {
            connection& p = *publisher_;
            p.queue_held = true;
            p.hold_listed = true;
            if (std::none_of(g->askers.begin(), g->askers.end(), remote_gate::of_client(p.id)))
                g->askers.push_back({p.id, std::string(topic)});
            refused_ = true;
            return;
        }
        push_holdable(to, msg.get()); // (one that cannot be held goes as to a queue whose gate has not closed yet)
        return;
    }
    g->used_ms = now_ms_;
    // Credit goes to those waiting first: a client not held that finds others waiting is held behind them (else
    // the clients read as their bytes come would spend each credit before the turn's end, when the waiting are
    // read). One that finds no credit waits, its message refused (or, where it cannot be, sent still: the queue
    // takes it past its mark): the queue's shard gives it a turn among its own held clients.
    const bool others_wait = !g->waiting.empty() && (publisher_->id != gate_reading_ || g != gate_reading_gate_);
    // One that cannot be held is not counted there either (its queue drops past its limit).
    uint32_t kind = k_publish;
    if (g->credit != 0 && !others_wait) {
        --g->credit;
        kind = k_publish_credited;
    } else if (publisher_holdable(*publisher_)) {
        kind = k_publish_held;
    }
    // A client's message that would go past the mark is refused rather (refusable_): a turn is asked for it, and it
    // is sent with the credit its turn brings.
    const bool refuse = kind == k_publish_held && refusable_;
    if (!refuse) {
        if (answered) g->answered.erase(g->answered.begin() + static_cast<std::ptrdiff_t>(answered_at));
        msg->add_ref();
        ++m_.messages_forward;
        push_weighed(to, kind, msg->size(), msg.get());
    }
    if (kind != k_publish_held) return;
    connection& p = *publisher_;
    p.queue_held = true;
    p.hold_listed = true;
    g->add_waiter(p.id, now_ms_, topic, refuse);
    if (refuse) {
        // A turn asked there for each client waiting, no more: one let go at its hold's limit (expire_gates) left its
        // turn asked, which serves it again when it is held anew (until stop 75 each such hold asked one more, and
        // the turns of the other shard's clients, asked there once each, came ever fewer among them).
        ask_turns(*g);
        refused_ = true;
    } else {
        ++g->asked; // the held message asks for a turn there
    }
    if (log::at_doubling(gated_holds_))
        log::info("client {} is not read until a queue on shard {} it publishes {} to is below three quarters of its "
                  "limit again (at most mqtt.publisher_hold_ms = {}; {} such holds so far)",
                  p.client_id(), g->shard, topic, cfg_.limits.publisher_hold_ms, gated_holds_);
}

void shard::push_holdable(unsigned to, session::message* msg) {
    if (!ungated_.empty() && refusable_) {
        // A client's message that would fill the newer half while the older one is not taken yet is refused (left
        // unread, not answered) rather than sent past the bound: it is sent once that shard has taken the older half.
        // (One of a client that has left, its QoS 2 message, is forgotten: it sends it again if it comes back.)
        const ungated_flow& f = ungated_[to];
        if (f.prev_n != 0 &&
            (f.open_n + 1 >= ungated_half_ || f.open_bytes + msg->data_size() >= ungated_bytes_half_) &&
            !transit_passed(to, f.prev_end) && (leaving_ || publisher_holdable(*publisher_))) {
            refused_ = true;
            if (leaving_)
                forgotten(msg->topic());
            else
                hold_in_transit(to, f);
            return;
        }
    }
    msg->add_ref();
    ++m_.messages_forward;
    push_weighed(to, k_publish_holdable, msg->size(), msg);
    if (ungated_.empty()) return;
    ungated_flow& f = ungated_[to];
    ++f.open_n;
    f.open_bytes += msg->data_size();
    if (f.open_n < ungated_half_ && f.open_bytes < ungated_bytes_half_) return;
    // The newer half is full: the older one, taken by the time this turn began (snapshot_transit), makes way for it.
    if (f.prev_n != 0 && transit_passed(to, f.prev_end)) f.prev_n = f.prev_bytes = 0;
    if (f.prev_n == 0) {
        f.prev_n = std::exchange(f.open_n, 0);
        f.prev_bytes = std::exchange(f.open_bytes, 0);
        f.prev_end = outbox_.sent(to);
        return;
    }
    // One that cannot be held sends on (the queue's burst room past its mark is all it has, as before).
    if (leaving_ || !publisher_holdable(*publisher_)) return;
    hold_in_transit(to, f);
}

void shard::hold_in_transit(unsigned to, const ungated_flow& f) {
    connection& p = *publisher_;
    p.queue_held = true;
    transit_held_.push_back(transit_wait{p.id, to, f.prev_end});
    if (log::at_doubling(transit_holds_))
        log::info("client {} is not read until shard {} has taken more of the messages routed to it for queues that "
                  "could not hold their publishers yet ({} on their way; at most a share of the room "
                  "mqtt.publisher_hold_burst = {} gives past a queue's mark; {} such holds so far)",
                  p.client_id(), to, f.prev_n + f.open_n, cfg_.limits.publisher_hold_burst, transit_holds_);
}

void shard::ease_transit() {
    // Those whose wait is over are read again with the others let go this turn (unheld_).
    std::erase_if(transit_held_, [&](const transit_wait& w) {
        if (!transit_passed(w.to, w.at)) return false;
        unheld_.push_back(w.id);
        return true;
    });
}

void shard::snapshot_transit() {
    // Before this turn's drain: a word to close that shard sent before it reported what it took is in the queue by
    // then (drain_smp publishes it first), unless it waits in that shard's backlog for room: the words it sent are
    // counted too (node::gate_closes), and transit_passed waits for those until they are read here.
    for (unsigned to = 0; to < n_; ++to)
        if (ungated_[to].prev_n != 0) {
            transit_taken_[to] = node_.smp.taken(id_, to);
            transit_closes_[to] = node_.gate_closes[to * n_ + id_].load(std::memory_order_acquire);
        }
}

bool shard::all_direct(const route_entry& e) const {
    for (const match& m : e.matches)
        if (!m.slot->conn || !m.slot->s->direct()) return false;
    return true;
}

void shard::deliver_run(const publish_run& r) {
    // The frames were framed and checked on the publishing shard; they all carry the same topic.
    const uint8_t* p = r.frames.data();
    const size_t n = r.frames.size();
    auto frame_at = [&](size_t off, std::string_view& topic, std::span<const uint8_t>& payload) {
        mqtt::fixed_header h{};
        (void)mqtt::parse_fixed_header(p + off, n - off, h);
        (void)qos0_parts(p + off, h, topic, payload);
        return size_t{h.header_len} + h.remaining_length;
    };
    std::string_view topic;
    std::span<const uint8_t> payload;
    size_t len = frame_at(0, topic, payload);
    const route_entry& e = route_lookup(topic);
    if (all_direct(e)) {
        session::message_ref msg;
        fan_out(e, topic, payload, 0, msg, false, raw_frames{std::span<const uint8_t>(p, n), r.count});
    } else {
        // A subscriber here has a queue or is offline: its messages must be stored one by one.
        for (size_t off = 0; off < n; off += len) {
            len = frame_at(off, topic, payload);
            session::message_ref msg;
            fan_out(e, topic, payload, 0, msg, false, raw_frames{std::span<const uint8_t>(p + off, len)});
        }
    }
}

void shard::queue_fanned(connection& c, std::span<const uint8_t> bytes, size_t take) {
    // Large frames going to several subscribers are copied once into shared bytes that every send queue
    // references; small ones are cheaper to copy than to gather.
    if (!fan_share_ok_ || bytes.size() < share_min_bytes) {
        append(c.sq.bytes(), bytes.data(), take);
        return;
    }
    if (!fan_shared_) fan_shared_ = shared_bytes::make(bytes);
    c.sq.append_shared(fan_shared_, take);
}

void shard::drop_qos0(session_slot& slot, uint64_t n, std::string_view topic) {
    const uint64_t before = slot.s->dropped();
    slot.s->count_dropped(n);
    if (slot.conn && slot.conn->queued_bytes() <= cfg_.limits.max_outgoing_bytes)
        note_dropped(slot, before,
                     "client behind while the shard's send queues are over its share ({}) of "
                     "mqtt.max_outgoing_bytes_total",
                     out_share_, topic);
    else
        note_dropped(slot, before, "client not reading, over mqtt.max_outgoing_bytes = {}",
                     cfg_.limits.max_outgoing_bytes, topic);
}

void shard::weigh_heavy(connection& c, size_t taken) {
    const size_t bytes = c.queued_bytes();
    const auto [it, added] = heavy_.try_emplace(&c);
    heavy_queue& h = it->second;
    if (added) h.moved_ms = now_ms_;
    h.taken += taken;
    if (h.taken >= out_mark_) {
        h.moved_ms = now_ms_;
        h.taken = 0;
    }
    c.heavy = true;
    heavy_bytes_ += bytes - h.counted; // (modulo 2^64: the sum stays right when the queue shrank)
    h.counted = bytes;
    // Under half the mark, not the mark: a queue about the mark would come and go every turn.
    if (bytes <= out_mark_ / 2) {
        heavy_bytes_ -= bytes;
        heavy_.erase(it);
        c.heavy = false;
    }
    check_out_share();
}

void shard::forget_heavy(connection& c) {
    if (const auto it = heavy_.find(&c); it != heavy_.end()) {
        heavy_bytes_ -= it->second.counted;
        heavy_.erase(it);
    }
    c.heavy = false;
    check_out_share();
}

void shard::check_out_share() {
    // At the stop begin_shutdown closes every connection, and each close takes a count out: no line about the limit
    // for connections that are all going.
    if (stopping_ || (out_pressed_ ? heavy_bytes_ > out_under_ : heavy_bytes_ <= out_share_)) return;
    out_pressed_ = !out_pressed_;
    out_limit_ = out_pressed_ ? out_mark_ : cfg_.limits.max_outgoing_bytes;
    if (out_pressed_) {
        pressed_logged_ = log::at_doubling(pressed_times_);
        if (pressed_logged_)
            log::warn("{} bytes wait to be sent to {} connections with more than {} each, over the shard's "
                      "share ({}) of mqtt.max_outgoing_bytes_total = {}: until they are under {}, no send queue is "
                      "given more once it holds {} (QoS 0 past it is dropped, QoS 1 and 2 wait in their sessions), and "
                      "connections whose socket took less than that in mqtt.send_stall_timeout = {} ms are closed, the "
                      "largest first ({} times so far)",
                      heavy_bytes_, heavy_.size(), out_mark_ / 2, out_share_, cfg_.limits.max_outgoing_bytes_total,
                      out_under_, out_mark_, cfg_.limits.send_stall_timeout_ms, pressed_times_);
    } else if (pressed_logged_) {
        log::info("{} bytes wait to be sent to connections with more than {} each, under {} again: send "
                  "queues take up to mqtt.max_outgoing_bytes = {} again",
                  heavy_bytes_, out_mark_ / 2, out_under_, cfg_.limits.max_outgoing_bytes);
    }
}

void shard::close_stalled(int64_t now) {
    // The largest first, and only as many as bring the counted bytes under seven eighths of the share (close takes
    // each one's out; those already on their way out count as gone): a connection whose socket takes little may be one
    // whose client is merely slow to read while it is busy elsewhere. Not one on its way out (a failed send or an ended
    // socket, each closed by its own path once any hold on it ends), nor one whose sends the shard holds itself
    // (smp_wait): its socket is given nothing meanwhile, so that time is not the client's, and its clock starts again.
    struct candidate {
        size_t bytes;
        int64_t moved_ms;
        size_t taken;
        connection* c;
    };
    std::vector<candidate> stalled;
    uint64_t leaving = 0;
    for (auto& [c, h] : heavy_) {
        if (c->send_failed || c->left_how != 0) {
            leaving += h.counted;
        } else if (c->smp_wait) {
            h.moved_ms = now;
            h.taken = 0;
        } else if (now - h.moved_ms >= cfg_.limits.send_stall_timeout_ms) {
            stalled.push_back({h.counted, h.moved_ms, h.taken, c});
        }
    }
    std::sort(stalled.begin(), stalled.end(), [](const candidate& a, const candidate& b) { return a.bytes > b.bytes; });
    for (const candidate& s : stalled) {
        if (heavy_bytes_ <= out_under_ + leaving) break; // (no subtraction: a stale `leaving` only stops it early)
        if (s.c->st != connection::state::connected) continue; // (closed by an earlier one's will: it left heavy_)
        const uint64_t held = heavy_bytes_;
        if (close_now(*s.c, "send_stalled"))
            log::warn("closed {} ({}): its socket took {} bytes in the last {} ms (less than {} in "
                      "mqtt.send_stall_timeout = {}) while {} bytes waited to be sent to it, and the shard's send "
                      "queues held {} bytes, over seven eighths ({}) of its share ({}) of "
                      "mqtt.max_outgoing_bytes_total = {}",
                      s.c->client_id(), s.c->peer, s.taken, now - s.moved_ms, out_mark_,
                      cfg_.limits.send_stall_timeout_ms, s.bytes, held, out_under_, out_share_,
                      cfg_.limits.max_outgoing_bytes_total);
    }
}

// Counts what the session dropped since `before` and warns when its drop count reaches 1, 2, 4, 8...: an operator
// learns that and why it loses messages, and a subscriber that stays behind cannot flood the log.
void shard::note_dropped(session_slot& slot, uint64_t before, const char* why, uint64_t limit, std::string_view topic,
                         bool topic_dropped) {
    const uint64_t after = slot.s->dropped();
    m_.messages_dropped += after - before;
    if (std::bit_width(before) == std::bit_width(after)) return;
    if (topic_dropped)
        log::warn("session {}: {}, message on {} dropped ({} so far)", slot.s->client_id(),
                  fmt::format(fmt::runtime(why), limit), topic, after);
    else
        log::warn("session {}: {} on {} ({} so far)", slot.s->client_id(), fmt::format(fmt::runtime(why), limit), topic,
                  after);
}

void shard::deliver(session_slot& slot, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                    session::message_ref& msg, uint8_t msg_qos, bool retain, const raw_frames& raw, bool last_use) {
    connection* c = slot.conn;
    if (qos == 0 && c && slot.s->direct()) {
        if (c->queued_bytes() > out_limit_) {
            drop_qos0(slot, raw.count, topic); // backpressure: a QoS 0 message for a client that does not read
            return;
        }
        if (retain) {
            send_publish(*c, topic, payload, 0, true, false, 0);
            return;
        }
        if (!raw.bytes.empty()) {
            // A run is held to the limit frame by frame, as if its PUBLISHes had come one at a time: the frames that
            // start within the room left are sent and the rest are dropped.
            size_t take = raw.bytes.size();
            uint64_t sent = raw.count;
            const size_t room = out_limit_ - c->queued_bytes();
            if (raw.count > 1 && take > room) take = mqtt::frames_starting_within(raw.bytes, room, sent);
            queue_fanned(*c, raw.bytes, take);
            count_publish_sent(topic, 0, sent);
            mark_dirty(*c);
            if (sent < raw.count) drop_qos0(slot, raw.count - sent, topic);
            return;
        }
        // Fan-out: the QoS 0 frame is the same for every subscriber; encode it once per routed message.
        if (!frame_q0_valid_) {
            frame_q0_.clear();
            encode_frame(frame_q0_, topic, payload, 0, false, false, 0);
            frame_q0_valid_ = true;
        }
        queue_fanned(*c, {frame_q0_.data(), frame_q0_.size()}, frame_q0_.size());
        count_publish_sent(topic, 0);
        mark_dirty(*c);
        return;
    }
    if (!msg) msg = session::message_ref::adopt(session::message::make(topic, payload, msg_qos, retain));
    offer_to(slot, last_use ? session::message_ref(std::move(msg)) : session::message_ref(msg), qos, topic);
}

void shard::offer_to(session_slot& slot, session::message_ref&& msg, uint8_t qos, std::string_view topic) {
    const session::outgoing* o = nullptr;
    const uint64_t dropped_before = slot.s->dropped();
    // A queue at its mark takes the message of a publisher it holds (from this message on) even past its limit: a
    // client is held only once it has published, so every client not held yet would have its first message dropped
    // by a full queue. It passes its limit by at most one message per held client.
    // (Or one that takes it past its mark: takes_past_mark.)
    const bool hold = (publisher_ || remote_from_) && qos != 0 && (!leaving_ || msg->qos() == 2) &&
                      (at_hold_mark(*slot.s) || takes_past_mark(*slot.s, msg->data_size()) ||
                       (!queue_holds_.empty() && queue_closed(slot))) &&
                      may_hold_publisher(slot);
    if (remote_kind_ > k_publish_holdable) [[unlikely]]
        gated_arrived(slot, qos);
    // A message held so is taken even past the slack while what the queue took past it stays within
    // mqtt.max_cross_shard_bytes (session::limits::burst_kib; with mqtt.max_queued_bytes, while the queue's bytes stay
    // within that past the byte limit's quarter), which bounds what another shard has on its way here: what it routed
    // before it could know of this hold (or within the credit or turn it was given) has taken its memory already and
    // its publisher was answered, so that dropped here it would be lost. Those make the queue pass its slack in a
    // burst, and a client of this shard is held at its next message then, which must not be lost either (one per held
    // client).
    const bool refuse = hold && refusable_;
    // A connection with mqtt.max_outgoing_bytes waiting to be sent takes no more into its window either: the message
    // waits in the queue, under its limits (which hold its publishers), and goes as the connection sends (pump). Sent
    // at once, a window of mqtt.max_inflight messages to a client that does not read sat in its send queue past that
    // limit (a window of 2000 held 21 MB against 1 MiB).
    bool sends = slot.conn != nullptr;
    if (sends && slot.conn->queued_bytes() > out_limit_) [[unlikely]] {
        sends = false;
        slot.conn->pump_waits = true;
    }
    switch (slot.s->offer(std::move(msg), qos, sends, &o, hold, refuse)) {
    case session::session::offer_result::send:
        send_outgoing(*slot.conn, *o, false);
        break;
    case session::session::offer_result::queued:
        if (slot.s->dropped() != dropped_before) [[unlikely]]
            note_dropped(slot, dropped_before,
                         "queue full: its oldest QoS 0 messages dropped to make room for a QoS {} message", qos, topic,
                         false);
        if (hold) [[unlikely]]
            hold_publisher(slot, topic);
        break;
    case session::session::offer_result::dropped:
        // Past even the limit's slack: its message is lost, but it sends no more meanwhile.
        if (hold) [[unlikely]]
            hold_publisher(slot, topic);
        if (cfg_.limits.max_queued_messages != 0 && slot.s->queue_len() >= cfg_.limits.max_queued_messages)
            note_dropped(slot, slot.s->dropped() - 1, "queue full (mqtt.max_queued_messages = {})",
                         cfg_.limits.max_queued_messages, topic);
        else
            note_dropped(slot, slot.s->dropped() - 1, "its queue would pass mqtt.max_queued_bytes = {}",
                         cfg_.limits.max_queued_bytes, topic);
        break;
    case session::session::offer_result::refused:
        refuse_publisher(slot, topic);
        break;
    }
}

void shard::refuse_publisher(const session_slot& slot, std::string_view topic) {
    refused_ = true;
    if (leaving_) {
        forgotten(topic);
        return;
    }
    hold_publisher(slot, topic);
    if (log::at_doubling(++refusals_))
        log::info("session {}: {} messages ({} bytes) queued, past its limit's slack: client {}'s message on {} is "
                  "not taken nor answered, it is read again in its turn ({} refused on this shard so far)",
                  slot.s->client_id(), slot.s->queue_len(), slot.s->queued_bytes(), publisher_->client_id(), topic,
                  refusals_);
}

bool shard::retain_from(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos) {
    const retain_check rc = check_retain(topic, payload);
    if (rc != retain_check::store) {
        not_retained(rc, topic, payload.size(), qos);
        return false;
    }
    return share_retained(retained_update(topic, payload, qos), n_);
}

shard::retain_check shard::check_retain(std::string_view topic, std::span<const uint8_t> payload) const {
    if (!cfg_.limits.retain_available || !node_.retainer_active.load(std::memory_order_relaxed))
        return retain_check::off;
    if (payload.size() > cfg_.limits.max_retained_payload) return retain_check::too_large;
    // mqtt.max_retained_messages is weighed here only, by the shard the PUBLISH came to: what it admits every shard
    // stores (store_retained takes no limit), so the copies stay the same. Near the limit the count
    // can pass it by the new topics stored on several shards at the same moment.
    if (retained_.full_for(topic, payload.empty(), cfg_.limits.max_retained_messages)) return retain_check::full;
    return retain_check::store;
}

void shard::not_retained(retain_check why, std::string_view topic, size_t payload_size, uint8_t qos) {
    if (why == retain_check::too_large) {
        const bool replaced = retained_.find(topic) != nullptr;
        if (log::at_doubling(retained_too_large_))
            log::warn("retained message on {} not stored: {} bytes exceed mqtt.max_retained_payload = {}{} ({} refused "
                      "for their size on this shard so far)",
                      topic, payload_size, cfg_.limits.max_retained_payload,
                      replaced ? "; the topic's earlier retained message is cleared" : "", retained_too_large_);
        if (replaced) share_retained(retained_update(topic, {}, qos), n_, k_retain_clear);
    } else if (why == retain_check::full) {
        if (log::at_doubling(retained_full_))
            log::warn("retained message on {} not stored: mqtt.max_retained_messages = {} reached ({} refused on this "
                      "shard so far)",
                      topic, cfg_.limits.max_retained_messages, retained_full_);
    }
}

session::message_ref shard::retained_update(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos) {
    auto m = session::message_ref::adopt(session::message::make(topic, payload, qos, true));
    // The node-wide order of retained updates: where two shards' updates of a topic cross on the way, every shard
    // keeps the later one (retained_store::store).
    m->set_stamp(node_.retained_seq.fetch_add(1, std::memory_order_relaxed) + 1);
    return m;
}

bool shard::share_retained(const session::message_ref& m, unsigned skip, msg_kind kind) {
    // Every shard keeps a full copy of the retained store, so a subscribe is answered locally and a store made
    // before a PUBACK is visible to any later subscribe on any shard (README, "Design decisions").
    // The update is also the live copy for the other shards' subscribers (handle_smp): sent apart, a subscriber whose
    // route had not reached this shard yet missed it live, having been sent the topic's older retained message by its
    // own shard, which then stored this one and sent it nowhere. (`skip` was sent it as a message that may hold its
    // client, and stores it as it arrives: on_publish.)
    for (unsigned to = 0; to < n_; ++to) {
        if (to == id_ || to == skip) continue;
        m->add_ref();
        push_weighed(to, kind, m->size(), m.get());
    }
    store_retained(m);
    return n_ > 1;
}

void shard::store_live(session::message_ref& msg) {
    store_retained(msg);
    msg = session::message_ref::adopt(session::message::make(msg->topic(), msg->payload(), msg->qos(), false));
}

void shard::store_retained(const session::message_ref& m) {
    // No limit here: the shard the PUBLISH came to weighed mqtt.max_retained_messages (retain_from), for every shard.
    const uint64_t early = retained_.tombstones_dropped_early();
    const auto r = retained_.store(session::message_ref(m), 0, now_ms_, n_ > 1);
    if (r == retained_store::store_result::stale)
        log::debug("retained update of {} from another shard overtaken by a later one", m->topic());
    if (retained_.tombstones_dropped_early() != early && log::at_doubling(tombstones_early_))
        log::warn("retained clears come faster than this shard keeps their tombstones (at most {} clears and {} KiB of "
                  "topics for {} ms): {} dropped early so far",
                  retained_.max_tombstones(), retained_.max_tombstone_bytes() >> 10, tombstone_keep_ms,
                  retained_.tombstones_dropped_early());
    m_.messages_retained = retained_.size();
}

void shard::deliver_retained(session_slot& slot, std::string_view filter, uint8_t granted) {
    if (!node_.retainer_active.load(std::memory_order_relaxed)) return;
    if (slot.s->held()) {
        // Behind the reads already under way; a filter subscribed again starts over (MQTT-3.8.4-3: its retained
        // messages are sent again).
        auto r = reader_of(slot);
        r->drop(filter);
        r->reads.push_back({std::string(filter), {}, granted, retained_.applied(), slot.s->dropped()});
        return;
    }
    std::string after;
    const uint64_t upto = retained_.applied();
    size_t slice = std::min<size_t>(cfg_.budgets.retained_read_slice, read_budget_);
    if (slice > 0 && read_retained(slot, filter, after, granted, slice, upto) == read_status::done) return;
    slot.s->hold(true);
    readers_.push_back({&slot, {}});
    readers_.back().reads.push_back({std::string(filter), std::move(after), granted, upto, slot.s->dropped()});
    log::debug("client {}: the retained messages for '{}' continue over the next turns", slot.s->client_id(), filter);
}

shard::read_status shard::read_retained(session_slot& slot, std::string_view filter, std::string& after,
                                        uint8_t granted, size_t& budget, uint64_t upto) {
    const uint64_t pace = std::min(read_pace_bytes, out_limit_ / 2); // (out_mark_'s half while over the share)
    bool blocked = false;
    size_t sent = 0;
    const retained_store::scan_result res = retained_.scan(
        filter, after, budget,
        [&](const session::message_ref& m) {
            connection* c = slot.conn;
            if (!c || c->queued_bytes() > pace) {
                blocked = true;
                return false;
            }
            const uint8_t qos = std::min(granted, m->qos());
            if (qos == 0 && m->payload().size() < share_min_bytes) {
                send_publish(*c, m->topic(), m->payload(), 0, true, false, 0); // copied: no reference to take
                ++sent;
                return true;
            }
            const session::outgoing* o = slot.s->admit(session::message_ref(m), qos);
            if (!o) {
                blocked = true;
                return false;
            }
            send_outgoing(*c, *o, false);
            ++sent;
            return true;
        },
        upto);
    budget -= res.looked;
    read_budget_ -= res.looked;
    // The subscriber takes, though from the read: its live messages wait behind it, and a hold of their publishers
    // must not count the queue stuck (it was, after publisher_hold_ms, and what passed the limit was dropped: QoS 1
    // messages acknowledged to their publisher, lost to a subscriber that read on all the time).
    if (sent != 0 && !queue_holds_.empty()) [[unlikely]]
        note_queue_taken(slot);
    if (res.done) return read_status::done;
    return blocked ? read_status::blocked : read_status::sliced;
}

void shard::serve_reads() {
    for (size_t n = readers_.size(); n > 0; --n) {
        if (read_budget_ == 0) {
            reads_runnable_ = true; // the rest wait for the next turn
            return;
        }
        const auto front = readers_.begin();
        retained_reads& r = *front;
        if (!r.slot->conn) {
            r.offline = true;
            offline_readers_.splice(offline_readers_.end(), readers_, front);
            continue;
        }
        size_t slice = std::min<size_t>(cfg_.budgets.retained_read_slice, read_budget_);
        read_status st = read_status::done;
        while (!r.reads.empty() && slice > 0) {
            retained_reads::read& rd = r.reads.front();
            // (Once the session has dropped a message, a live copy may have been the one: the read sends all.)
            const uint64_t upto = r.slot->s->dropped() == rd.dropped ? rd.upto : UINT64_MAX;
            st = read_retained(*r.slot, rd.filter, rd.after, rd.granted, slice, upto);
            if (st != read_status::done) break;
            r.reads.pop_front();
        }
        if (r.reads.empty()) {
            end_reads(front, true);
            continue;
        }
        if (st != read_status::blocked) reads_runnable_ = true;
        readers_.splice(readers_.end(), readers_, front);
    }
}

std::list<retained_reads>::iterator shard::reader_of(session_slot& slot) {
    const auto of_slot = [&](const retained_reads& r) { return r.slot == &slot; };
    auto it = std::find_if(readers_.begin(), readers_.end(), of_slot);
    if (it == readers_.end()) it = std::find_if(offline_readers_.begin(), offline_readers_.end(), of_slot);
    RINGMQ_ASSERT(it != offline_readers_.end());
    return it;
}

void shard::end_reads(std::list<retained_reads>::iterator r, bool release) {
    session_slot& slot = *r->slot;
    (r->offline ? offline_readers_ : readers_).erase(r);
    if (!release) return;
    slot.s->hold(false);
    pump(slot);
}

void shard::resume_reads(session_slot& slot) {
    auto r = reader_of(slot);
    if (!r->offline) return;
    r->offline = false;
    readers_.splice(readers_.end(), offline_readers_, r);
}

void shard::publish_from(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, bool retain) {
    const bool retained_everywhere = retain && retain_from(topic, payload, qos);
    session::message_ref msg;
    route(topic, payload, qos, msg, true, !retained_everywhere);
}

bool shard::add_subscription(session_slot& slot, const std::string& filter, uint8_t qos) {
    auto& subs = slot.s->subscriptions;
    const uint32_t limit = cfg_.limits.max_subscriptions;
    const bool had = subs.contains(filter);
    if (limit != 0 && subs.size() >= limit && !had) return false;
    subs[filter] = qos;
    bool active = false;
    const size_t before = trie_.subscription_count();
    trie_.subscribe(filter, &slot, qos, &active);
    note_subscriptions(before);
    ++trie_gen_;
    if (active)
        broadcast_route(k_route_add, filter);
    else if (!had && !queue_holds_.empty())
        tell_join(filter, &slot);
    release_for_new_route(filter, &slot);
    // A message a subscriber here takes too is held for no queue elsewhere (fan_out: one_shard). (With the filter had
    // already, its messages went here too: none was refused.)
    if (!had && !gates_.empty()) read_refused_again(filter, id_);
    return true;
}

void shard::tell_join(const std::string& filter, const session_slot* by) {
    // A topic a gate there pinned (the queue here its only subscriber) may reach this subscriber too, by a filter
    // another session here had, so no route's start tells that shard (until stop 75 the topic stayed gated, its
    // publishers held at the slow queue's pace for the new subscriber too). (A held queue's own session adds no
    // subscriber to what it gets, as in release_for_new_route.)
    uint64_t told = 0;
    for (const auto& [slot, h] : queue_holds_)
        if (slot != by)
            for (const queue_hold_source& src : h.remote)
                told |= uint64_t{1} << src.shard;
    // Counted as route updates are, so that a client subscribing so is held with them (own_received).
    if (told != 0) ++routes_broadcast_;
    for (; told != 0; told &= told - 1)
        push_weighed(static_cast<unsigned>(__builtin_ctzll(told)), k_gate_join, route_weight(filter),
                     new std::string(filter));
}

void shard::remove_subscription(session_slot& slot, const std::string& filter) {
    const auto sub = slot.s->subscriptions.find(filter);
    if (sub == slot.s->subscriptions.end()) return;
    const uint8_t qos = sub->second & 3; // (options: QoS in bits 0-1)
    slot.s->subscriptions.erase(sub);
    if (slot.s->held()) {
        // The client no longer wants that filter's retained messages either.
        auto r = reader_of(slot);
        r->drop(filter);
        if (r->reads.empty()) end_reads(r, true);
    }
    bool idle = false;
    const size_t before = trie_.subscription_count();
    trie_.unsubscribe(filter, &slot, &idle);
    note_subscriptions(before);
    ++trie_gen_;
    if (idle) broadcast_route(k_route_del, filter);
    // Clients held for this queue (here or at gates on other shards) on a topic of that filter may publish to this
    // session through it only: their messages go elsewhere now, and they would wait for room they no longer need, up to
    // publisher_hold_ms for a subscriber that takes nothing. All are read again; one still routed here (by another of
    // its filters) is held again once the queue is found at its mark again. Not where the queue is still fed what they
    // were held for (still_fed): a slow session leaving a filter of its own, ex/p/+ beside ex/# (until stop 76) or
    // ex/p/# beside ex/p/+/x (until stop 77), opened its gates, and what its publishers had on the way passed its
    // limit: probes lost 203-277 and 398 acknowledged QoS 1/2 messages in 20 s. The gates told the filter drop it
    // (k_gate_unfilter): a message let through on credit, on a topic of it alone, would reach nothing here, and the
    // word back (k_gate_drop) find the gate by that filter and let it go; and a client refused on such a topic would
    // wait for the queue's turn for nothing.
    const auto it = queue_holds_.find(&slot);
    if (it == queue_holds_.end() || !held_on(it->second, filter)) return;
    std::vector<const std::string*> takers; // the session's filters that still_fed found taking what it did
    if (!still_fed(it->second, *slot.s, filter, qos, takers)) {
        release_publishers(slot, false);
        return;
    }
    const uint64_t key = reinterpret_cast<uintptr_t>(queue_key(&slot));
    for (queue_hold_source& src : it->second.remote) {
        if (!src.filters.contains(filter)) continue;
        // First the gate is told those it was not (one subscribed after the gate closed): without them it would read
        // its clients again, or go, though the queue is still fed. (One that takes only another gate's topics holds
        // no more there than close_remote would have it hold at that topic's first message.)
        for (const std::string* f : takers)
            if (src.filters.insert(*f).second) push_close(src.shard, k_gate_close, 0, new gate_close{key, *f});
        src.filters.erase(filter);
        push(src.shard, k_gate_unfilter, 0, new gate_close{key, std::string(filter)});
    }
}

bool shard::still_fed(const queue_hold& h, const session::session& s, std::string_view filter, uint8_t qos,
                      std::vector<const std::string*>& takers) {
    const auto& subs = s.subscriptions;
    if (subs.size() > cover_scan_max) return false;
    const auto keeps = [qos](uint8_t options) { return (options & 3) >= qos; }; // (options: QoS in bits 0-1)
    // (A QoS 0 one is never told to a gate, close_remote: not a taker.)
    const auto take = [&](const std::string& f, uint8_t options) {
        if ((options & 3) != 0 && std::find(takers.begin(), takers.end(), &f) == takers.end()) takers.push_back(&f);
    };
    for (const auto& [f, options] : subs)
        if (keeps(options) && routing::filter_covers(f, filter)) {
            take(f, options);
            return true;
        }
    // Or every topic its publishers were held on that the filter took is taken by another: known where the records
    // are whole (a topic past hold_topics_max is not kept), and one at least is among them (a gate told the filter,
    // and no topic recorded: which topics it holds is not known here).
    size_t looks = 0;
    bool any = false;
    const auto fed = [&](const topic_set& topics) {
        if (topics.size() >= hold_topics_max) return false;
        for (const std::string& t : topics) {
            if (!routing::topic_matches(filter, t)) continue;
            any = true;
            auto o = subs.begin();
            for (; o != subs.end(); ++o) {
                if (++looks > fed_scan_max) return false;
                if (keeps(o->second) && routing::topic_matches(o->first, t)) break;
            }
            if (o == subs.end()) return false;
            take(o->first, o->second);
        }
        return true;
    };
    return fed(h.topics) &&
           std::all_of(h.remote.begin(), h.remote.end(),
                       [&](const queue_hold_source& src) { return fed(src.topics); }) &&
           any;
}

void shard::broadcast_route(uint32_t kind, const std::string& filter) {
    if (n_ < 2) return;
    ++routes_broadcast_;
    const size_t weight = route_weight(filter);
    for (unsigned to = 0; to < n_; ++to)
        if (to != id_) push_weighed(to, kind, weight, new std::string(filter));
}

size_t shard::route_weight(const std::string& filter) {
    // Weighed by what it holds, as a message is, so that updates toward a shard that does not take them count in
    // mqtt.max_cross_shard_bytes (a client churning long filters grew its backlog by theirs, each weighing nothing).
    return sizeof(std::string) + (filter.size() <= std::string().capacity() ? 0 : filter.size() + 1);
}

void shard::went_offline(session_slot& slot) {
    slot.offline_since_ms = std::max<int64_t>(now_ms_, 1); // (the publisher hold's too: may_hold_publisher)
    if (cfg_.limits.session_expiry_ms == 0) return;
    expiry_.push_back({slot.offline_since_ms, slot.s->client_id()});
    expiry_bytes_ += slot.s->client_id().size();
    // Clients that come and go leave stale entries behind, each a copy of its id: swept once they outnumber the
    // sessions, or their ids' bytes are twice those the last sweep kept and 1 MiB more (one client with a 64 KiB id
    // going offline 2,000 times held 100 MB).
    if (expiry_.size() > 2 * sessions_.size() + 1024 || expiry_bytes_ > 2 * expiry_kept_bytes_ + (size_t{1} << 20)) {
        std::erase_if(expiry_, [this](const expiry_entry& e) {
            const session_slot* s = sessions_.find(e.client_id);
            return !s || s->offline_since_ms != e.offline_since_ms;
        });
        expiry_bytes_ = 0;
        for (const expiry_entry& e : expiry_)
            expiry_bytes_ += e.client_id.size();
        expiry_kept_bytes_ = expiry_bytes_;
    }
}

void shard::requeue_unsent(connection& c, session_slot& slot) {
    // Routed to the connection in the turn that also handled its DISCONNECT (the loop applies other shards' messages
    // before the turn's completions), or queued behind a send that had not finished: they never reached the socket,
    // and a QoS 0 message has nothing else to keep it, so it would be lost while the session that wanted it stays.
    // QoS 1/2 messages are in the window and go again from there. Of the batch in flight, what the socket took may
    // have reached the client and is not sent again (at most once); the rest goes back too: now when a send of it
    // failed, else when its pending send completes (requeue_lost_flight; the close, or the close that follows a
    // takeover, ends it). Until then the session's queue waits (session::wait_flight), so that a client back at once,
    // or the connection taking the session over, is sent nothing queued before those leftovers, which are older. Not
    // while the shard stops: the sessions go with it.
    if (stopping_) return;
    if (c.send_busy && c.sq.flight_unsent()) {
        lost_flights_.add(c.id, &slot, now_ms_);
        slot.s->wait_flight(true);
        log::debug("client {}: its connection closes with a send pending; the session's queue waits for that send to "
                   "end",
                   c.client_id_);
    }
    requeue_untaken(c, slot);
}

void shard::requeue_lost_flight(connection& c) {
    session_slot* slot = lost_flights_.take(c.id);
    if (!slot) return;
    // It went back at the close: anything newer would go in front of it. (Only the answers of a close that sends them,
    // no PUBLISH among them, can be queued.)
    RINGMQ_DASSERT(!c.sq.has_queued() || c.answer_on_close);
    if (!stopping_) requeue_untaken(c, *slot);
    end_flight_wait(*slot);
}

void shard::end_flight_wait(session_slot& slot) {
    // A session whose connections closed twice with sends pending waits for both.
    if (lost_flights_.holds(&slot)) return;
    slot.s->wait_flight(false);
    if (slot.conn && !stopping_) pump(slot);
}

void shard::give_up_flights(int64_t now) {
    lost_flights_.pop_overdue(now, [this](session_slot& slot) {
        log::warn("client {}: the send pending when its connection closed has not ended in {} ms; what it had not "
                  "sent of its QoS 0 messages is given up and the session's queue goes on",
                  slot.s->client_id(), flight_wait_ms);
        end_flight_wait(slot);
    });
}

void shard::forget_lost_flights(const session_slot* slot) { lost_flights_.forget(slot); }

void shard::requeue_untaken(connection& c, session_slot& slot) {
    // The batch in flight counts only when no send of it is pending (one failed, or the pending one has ended).
    const bool flight = !c.send_busy && c.sq.flight_unsent();
    if (!flight && !c.sq.has_queued()) return;
    std::vector<uint8_t> bytes;
    size_t taken = 0;
    if (flight) {
        taken = c.sq.copy_flight(bytes);
        c.sq.finish_batch(); // nothing sends it again: the connection closes
    }
    const size_t flight_end = bytes.size();
    c.sq.copy_queued(bytes);
    c.sq.drop_queued();           // so that nothing can send them as well
    std::vector<uint8_t> answers; // answer_on_close: the queued packets besides PUBLISH, sent before the close
    struct frame {
        size_t body; // where the QoS 0 PUBLISH's body starts
        uint32_t len;
        uint8_t flags;
    };
    std::vector<frame> frames;
    const auto topic_of = [&bytes](const frame& f) {
        const uint8_t* t = bytes.data() + f.body;
        const size_t len = f.len < 2 ? 0 : std::min<size_t>(t[0] << 8 | t[1], f.len - 2);
        return std::string_view(reinterpret_cast<const char*>(t + 2), len);
    };
    uint64_t counted = 0; // those counted as sent when queued (count_publish_sent leaves $SYS out)
    size_t from_flight = 0;
    for (size_t off = 0; off < bytes.size();) {
        mqtt::fixed_header h{};
        if (mqtt::parse_fixed_header(bytes.data() + off, bytes.size() - off, h) != mqtt::error::none) break;
        const size_t end = off + h.header_len + h.remaining_length;
        if (end > bytes.size()) break;
        if (c.answer_on_close && off >= flight_end && h.type != mqtt::packet_type::publish)
            answers.insert(answers.end(), bytes.begin() + static_cast<ptrdiff_t>(off),
                           bytes.begin() + static_cast<ptrdiff_t>(end));
        // A frame the socket took whole may have reached the client; one it took only part of never can have.
        if (end > taken && h.type == mqtt::packet_type::publish && (h.flags & 0x06) == 0) {
            frames.push_back(frame{off + h.header_len, h.remaining_length, h.flags});
            counted += !sys_topic(topic_of(frames.back()));
            from_flight += off < flight_end;
        }
        off = end;
    }
    if (!answers.empty()) append(c.sq.bytes(), answers.data(), answers.size());
    if (frames.empty()) return;
    // A client closed for not reading can leave megabytes of them: only the newest that the queue can take are made
    // into messages (the byte limit is weighed by requeue_front).
    const uint32_t max_queued = cfg_.limits.max_queued_messages;
    const size_t room =
        max_queued == 0 ? frames.size() : max_queued - std::min<size_t>(slot.s->queue_len(), max_queued);
    const size_t skipped = frames.size() - std::min(frames.size(), room);
    std::vector<session::message_ref> msgs;
    std::vector<size_t> frame_of; // each message's frame, for the warning's topic below
    msgs.reserve(frames.size() - skipped);
    frame_of.reserve(frames.size() - skipped);
    for (size_t i = skipped; i < frames.size(); ++i) {
        const frame& f = frames[i];
        mqtt::publish_view pv{};
        if (mqtt::decode_publish({bytes.data() + f.body, f.len}, f.flags, c.ver, pv, nullptr, true) ==
            mqtt::error::none) {
            msgs.push_back(session::message_ref::adopt(session::message::make(pv.topic, pv.payload, 0, pv.retain)));
            frame_of.push_back(i);
        }
    }
    const size_t n = frames.size();
    // They were counted as sent when they were queued; those that go back are counted when they go. (The sent counts
    // can so step back a little on such a close: once for the queued part, once more when a pending send ends.)
    m_.packets_sent -= counted;
    m_.packets_publish_sent -= counted;
    m_.messages_sent -= counted;
    m_.messages_qos0_sent -= counted;
    const uint64_t before = slot.s->dropped();
    slot.s->count_dropped(skipped);
    const uint64_t first = slot.s->requeue_front(msgs); // the oldest of msgs that did not go back
    const uint64_t dropped = skipped + first;
    log::debug("client {}: {} QoS 0 message{} not yet sent went back to its session ({} from the batch in flight, {} "
               "dropped)",
               c.client_id_, n, n == 1 ? "" : "s", from_flight, dropped);
    if (dropped == 0) return;
    // The warning names the newest of those dropped, the oldest being (until stop 73 it named the newest of all, which
    // had gone back to the session and was delivered).
    const std::string_view topic = topic_of(frames[first != 0 ? frame_of[first - 1] : skipped - 1]);
    if (cfg_.limits.max_queued_messages != 0 && slot.s->queue_len() >= cfg_.limits.max_queued_messages)
        note_dropped(slot, before, "queue full (mqtt.max_queued_messages = {}) for what its connection had not sent",
                     cfg_.limits.max_queued_messages, topic);
    else
        note_dropped(slot, before,
                     "its queue would pass mqtt.max_queued_bytes = {} with what its connection had not sent",
                     cfg_.limits.max_queued_bytes, topic);
}

void shard::expire_sessions(int64_t now) {
    const int64_t interval = cfg_.limits.session_expiry_ms;
    if (interval == 0) return;
    size_t budget = 4096; // per tick, so a mass expiry never holds the shard for long
    size_t expired = 0;
    uint64_t lost = 0;
    while (!expiry_.empty() && expiry_.front().offline_since_ms + interval <= now && budget-- > 0) {
        const expiry_entry& e = expiry_.front();
        session_slot* slot = sessions_.find(e.client_id);
        if (slot && !slot->conn && slot->offline_since_ms == e.offline_since_ms) {
            // Its messages go with it, never delivered: dropped, as a full queue's are.
            const uint64_t n = slot->s->undelivered();
            log::debug("session {} expired: offline for {} ms, over mqtt.session_expiry_interval = {} ms; {} message{} "
                       "dropped",
                       e.client_id, now - e.offline_since_ms, interval, n, n == 1 ? "" : "s");
            lost += n;
            drop_session(slot); // (counts them in messages/dropped)
            ++expired;
        }
        expiry_bytes_ -= e.client_id.size();
        expiry_.pop_front();
    }
    expiry_kept_bytes_ = std::min(expiry_kept_bytes_, expiry_bytes_); // (a mass expiry lowers the sweep's mark too)
    if (expired != 0)                                                 // one line per tick however many went
        log::info("{} offline session{} expired (mqtt.session_expiry_interval = {} ms), {} undelivered message{} "
                  "dropped",
                  expired, expired == 1 ? "" : "s", interval, lost, lost == 1 ? "" : "s");
}

void shard::drop_session(session_slot* slot) {
    // Its messages go with it, never delivered: an expired session's, a clean one's as its connection ends or a clean
    // CONNECT replaces it (until stop 74 only expiry's were counted).
    m_.messages_dropped += slot->s->undelivered();
    forget_lost_flights(slot);
    if (!queue_holds_.empty() || !stuck_queues_.empty()) release_publishers(*slot, false);
    if (slot->s->held()) end_reads(reader_of(*slot), false);
    const size_t before = trie_.subscription_count();
    for (const auto& [filter, qos] : slot->s->subscriptions) {
        bool idle = false;
        trie_.unsubscribe(filter, slot, &idle);
        ++trie_gen_;
        if (idle) broadcast_route(k_route_del, filter);
    }
    note_subscriptions(before);
    sessions_.erase(slot->s->client_id()); // the id is only read to find the slot, before it is destroyed
    node_.sessions.fetch_sub(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------------------------
// Admin facade (runs on this shard's thread, called from drained admin calls)

namespace {

client_row make_client_row(const connection& c) {
    client_row r;
    r.client_id = c.client_id_;
    r.username = c.username ? *c.username : "undefined";
    r.ipaddress = c.peer.host();
    r.port = c.peer.port;
    r.clean_sess = c.clean;
    r.proto_ver = static_cast<int>(c.ver);
    r.keepalive = c.keepalive;
    r.connected_at = c.connected_wall;
    return r;
}

session_row make_session_row(const session_slot& slot) {
    const session::session& s = *slot.s;
    session_row r;
    r.client_id = s.client_id();
    r.clean_sess = s.clean();
    r.max_inflight = s.lim().max_inflight;
    r.inflight_queue = s.inflight_len();
    r.message_queue = s.queue_len();
    r.message_dropped = s.dropped();
    r.awaiting_rel = s.awaiting_rel();
    for (const session::outgoing& o : s.window()) {
        if (o.released)
            ++r.awaiting_comp;
        else
            ++r.awaiting_ack;
    }
    r.created_at = slot.created_at;
    return r;
}

// Walks `table` (an unordered container) in bucket order from `cur`, calling visit(entry, steps) for each entry;
// visit returns false once it has all the rows the request wants (the walk ends there, inside a bucket perhaps: no
// chunk of this request follows). Otherwise a call stops only between buckets, once it has list_chunk_rows rows or
// passed about list_walk_steps entries and buckets: an entry added to or removed from a bucket between two calls
// changes nothing for the walk. A rehash since `cur` was saved starts it again, reported so that the request drops
// the rows it took in the old order.
template <class Table, class Visit>
list_chunk walk_buckets(const Table& table, list_cursor& cur, size_t offset, const size_t& got, Visit visit) {
    constexpr size_t list_walk_steps = 16384; // about a millisecond
    list_chunk r;
    if (cur.buckets != table.bucket_count() || cur.index > offset) {
        r.restarted = cur.buckets != 0;
        cur = {table.bucket_count(), 0, 0};
    }
    size_t steps = 0;
    while (cur.bucket < cur.buckets) {
        for (auto it = table.begin(cur.bucket); it != table.end(cur.bucket); ++it)
            if (!visit(*it, ++steps)) return r;
        ++cur.bucket;
        if (got >= list_chunk_rows || ++steps >= list_walk_steps) break;
    }
    r.ended = cur.bucket == cur.buckets;
    return r;
}

} // namespace

list_chunk shard::clients(list_cursor& cur, size_t offset, size_t want, std::vector<client_row>& out) const {
    size_t got = 0;
    return walk_buckets(conns_, cur, offset, got, [&](const auto& entry, size_t) {
        const connection& c = *entry.second;
        if (c.st != connection::state::connected) return true;
        if (got == want) return false;
        if (cur.index++ >= offset) {
            out.push_back(make_client_row(c));
            ++got;
        }
        return true;
    });
}

bool shard::client(std::string_view id, client_row& out) const {
    const session_slot* slot = sessions_.find(id);
    if (!slot || !slot->conn) return false;
    out = make_client_row(*slot->conn);
    return true;
}

list_chunk shard::sessions(list_cursor& cur, size_t offset, size_t want, std::vector<session_row>& out) const {
    size_t got = 0;
    return walk_buckets(sessions_.entries(), cur, offset, got, [&](const auto& slot, size_t) {
        if (got == want) return false;
        if (cur.index++ >= offset) {
            out.push_back(make_session_row(*slot));
            ++got;
        }
        return true;
    });
}

bool shard::session(std::string_view id, session_row& out) const {
    const session_slot* slot = sessions_.find(id);
    if (!slot) return false;
    out = make_session_row(*slot);
    return true;
}

list_chunk shard::subscriptions(list_cursor& cur, size_t offset, size_t want,
                                std::vector<subscription_row>& out) const {
    // A session's subscriptions are a hash map of their own, whose order an insert may change: a call never stops
    // inside one but where the request's rows are all taken (its last chunk), and one session's map is walked in
    // one call (a session of tens of thousands of filters costs that call as much).
    size_t got = 0;
    return walk_buckets(sessions_.entries(), cur, offset, got, [&](const auto& entry, size_t& steps) {
        const session_slot& slot = *entry;
        const size_t n = slot.s->subscriptions.size();
        if (cur.index + n <= offset) { // before the page: counted, not walked
            cur.index += n;
            return true;
        }
        size_t j = cur.index;
        for (const auto& [filter, qos] : slot.s->subscriptions) {
            if (got == want) return false;
            ++steps;
            if (j++ >= offset) {
                out.push_back(subscription_row{slot.s->client_id(), filter, static_cast<uint8_t>(qos & 3)});
                ++got;
            }
        }
        cur.index += n;
        return true;
    });
}

void shard::client_subscriptions(std::string_view id, std::vector<subscription_row>& out) const {
    const session_slot* slot = sessions_.find(id);
    if (!slot) return;
    for (const auto& [filter, qos] : slot->s->subscriptions)
        out.push_back(subscription_row{slot->s->client_id(), filter, static_cast<uint8_t>(qos & 3)});
}

bool shard::kick(std::string_view id) {
    const session_slot* slot = sessions_.find(id);
    if (!slot || !slot->conn) return false;
    connection& c = *slot->conn;
    if (close_now(c, "kick")) log::info("client {} ({}) kicked by the admin API", c.client_id_, c.peer);
    return true;
}

bool shard::close_now(connection& c, const char* reason) {
    if (c.queue_held && c.st == connection::state::connected) [[unlikely]] {
        handle_kept_as_left(c);
        if (c.st == connection::state::closing) return false; // its own DISCONNECT came first
    }
    close(c, reason, true);
    return true;
}

shard::subscribe_result shard::subscribe(std::string_view id, std::string_view filter, uint8_t qos) {
    session_slot* found = sessions_.find(id);
    if (!found) return subscribe_result::no_session;
    session_slot& slot = *found;
    if (!add_subscription(slot, std::string(filter), qos)) return subscribe_result::too_many;
    deliver_retained(slot, filter, qos);
    return subscribe_result::done;
}

bool shard::unsubscribe(std::string_view id, std::string_view filter) {
    session_slot* slot = sessions_.find(id);
    if (!slot) return false;
    remove_subscription(*slot, std::string(filter));
    return true;
}

void shard::publish(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, bool retain) {
    publish_from(topic, payload, qos, retain);
}

void shard::snapshot(shard_snapshot& out) const {
    out.m = m_;
    out.s = st_;
    fill_gauges(out.s);
    out.connections = conns_.size();
    out.first_routes = trie_.first_holder_count();
}

// Releases what one cross-shard message owns, for a message that will never be handled (single-threaded by then).
void release_message(const reactor::smp_msg& m) {
    switch (m.kind) {
    case k_handoff: {
        std::unique_ptr<handoff> h(static_cast<handoff*>(m.ptr));
        ::close(h->fd);
        break;
    }
    case k_route_add:
    case k_route_del:
        delete static_cast<std::string*>(m.ptr);
        break;
    case k_admin_call:
    case k_admin_done:
        break; // owned by the admin shard's request frames
    case k_publish:
    case k_retain:
    case k_retain_clear:
    case k_publish_holdable:
    case k_publish_credited:
    case k_publish_held:
        static_cast<session::message*>(m.ptr)->release();
        break;
    case k_gate_close:
    case k_gate_ask:
    case k_gate_pin:
    case k_gate_unfilter:
        delete static_cast<gate_close*>(m.ptr);
        break;
    case k_gate_drop:
    case k_gate_join:
        delete static_cast<std::string*>(m.ptr);
        break;
    case k_publish_run:
        delete static_cast<publish_run*>(m.ptr);
        break;
    default:
        break;
    }
}

// Releases messages left in the queues after every shard stopped (single-threaded by then); what waited in a shard's
// backlog is released by the shard's destructor.
void release_leftovers(node& n) {
    for (unsigned from = 0; from < n.smp.size(); ++from)
        for (unsigned to = 0; to < n.smp.size(); ++to)
            if (from != to) n.smp.queue(from, to).drain(release_message, SIZE_MAX);
}

// An idle connection must stay in mimalloc's 320-byte class (RSS per idle connection is a target).
static_assert(sizeof(connection) <= 320);

} // namespace ringmq::broker
