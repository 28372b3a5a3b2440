#include "admin/server.hpp"

#include "admin/sysinfo.hpp"
#include "io/ops.hpp"
#include "io/timer.hpp"
#include "mqtt/codec.hpp"
#include "util/clock.hpp"
#include "util/log.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>

namespace ringmq::admin {

namespace {
constexpr unsigned reap_batch = 64;
constexpr size_t recv_size = 16384;
constexpr size_t max_header_bytes = 16384;
// How long a connection over admin.max_connections is kept in all: its 503 sent, what its client sends read and
// dropped.
constexpr uint32_t over_limit_wait_ms = 2000;
} // namespace

// Scatter-gather state of one on_shards() call; lives in the awaiting coroutine's frame.
struct server::gather {
    server& s;
    std::vector<broker::admin_call>& calls;
    const std::vector<unsigned>& targets;
    size_t pending = 0;
    std::coroutine_handle<> waiter;

    bool await_ready() const noexcept { return calls.empty(); }
    void await_suspend(std::coroutine_handle<> h) {
        waiter = h;
        pending = calls.size();
        for (size_t i = 0; i < calls.size(); ++i) {
            calls[i].waiter = this;
            s.push(targets[i], &calls[i]);
        }
    }
    void await_resume() const noexcept {}
    void done() {
        if (--pending == 0) waiter.resume();
    }
};

server::server(broker::node& n, int listen_fd, listener_info li)
    : node_(n), cfg_(n.cfg), id_(n.mqtt_shards), listen_fd_(listen_fd), li_(std::move(li)),
      outbox_(n.smp, n.mqtt_shards), peers_(n.smp, n.cfg.budgets.ring_wakeups) {
    node_.smp.set_waker(id_, [this] { waker_.wake(); });
    sys_active_ = cfg_.sys.enabled;
}

server::~server() = default;

bool server::open_users(std::string& why) {
    bool created = false;
    if (!users_.open(cfg_.admin.users_file, cfg_.admin.default_user, cfg_.admin.default_password, &created, why))
        return false;
    if (created)
        log::warn("admin: created {} with the default user '{}' and admin.default_password (not logged): change it "
                  "with PUT /api/v2/change_pwd/{} or the users API",
                  cfg_.admin.users_file, cfg_.admin.default_user, cfg_.admin.default_user);
    else if (const size_t n = users_.list().size(); n == 0)
        log::warn("admin: {} holds no users: every API request will be refused until one is added to the file",
                  cfg_.admin.users_file);
    else // the defaults only seed a new file: an operator who changed them in the config must see they were not used
        log::info("admin: {} user{} from {} (admin.default_user and admin.default_password only seed a new file)", n,
                  n == 1 ? "" : "s", cfg_.admin.users_file);
    if ((users_.file_mode() & 077) != 0)
        log::warn("admin: {} is accessible to other users (mode {:04o}): it holds the password keys; chmod 600 it (the "
                  "next change of the users rewrites it 0600)",
                  cfg_.admin.users_file, users_.file_mode());
    return true;
}

void server::request_stop() {
    stop_requested_.store(true, std::memory_order_release);
    waker_.wake();
}

bool server::run() {
    log::set_shard_tag(-2);
    std::string why;
    if (!waker_.usable(why) || !ring_.init(256, why)) {
        log::fatal("admin: {}", why);
        failed.store(true);
        return false;
    }
    waker_.arm(ring_);
    waker_.announce(node_.smp, id_, ring_);
    peers_.attach(ring_);
    arm_accept();
    reactor::spawn(gate_, sys_publisher());
    ready.store(true);
    loop();
    return true;
}

void server::loop() {
    io::reaped batch[reap_batch];
    for (;;) {
        if (!stopping_ && stop_requested_.load(std::memory_order_acquire)) begin_shutdown();
        publish_smp();
        if (stopping_ && gate_.count() == 0 && !accept_armed_) break;
        // A backlog for a shard's full queue moves only as that shard takes from it: sleep until it has emptied the
        // queue (smp_outbox::arm_wakes) rather than go round the loop.
        const bool waits = outbox_.pending();
        if (waits)
            outbox_.arm_wakes(reactor::smp_outbox::no_level);
        else
            outbox_.disarm_wakes();
        node_.smp.set_sleeping(id_, true);
        if (node_.smp.has_incoming(id_) || (stop_requested_.load() && !stopping_) || (waits && outbox_.woken())) {
            node_.smp.set_sleeping(id_, false);
            ring_.submit();
        } else {
            ring_.submit_and_wait(-1);
            node_.smp.set_sleeping(id_, false);
        }
        const unsigned n = ring_.reap(batch, reap_batch);
        drain_smp();
        for (unsigned i = 0; i < n; ++i)
            if (batch[i].c) batch[i].c->on_complete(batch[i].res, batch[i].flags);
    }
}

void server::begin_shutdown() {
    stopping_ = true;
    if (accept_armed_) {
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_cancel(s, &accept_op_, 0);
        io::set_completion(s, nullptr);
    }
    // The waker stays armed: a request in progress still waits for the MQTT shards' answers, and where they wake this
    // shard through its eventfd (node.ring_wakeups off) each answer needs the read re-posted.
    // Pending recvs complete (0) and their coroutines finish; a request in progress completes first.
    for (int fd : open_fds_)
        ::shutdown(fd, SHUT_RDWR);
}

void server::arm_accept() {
    if (stopping_ || accept_armed_) return;
    io_uring_sqe* s = ring_.sqe();
    io_uring_prep_multishot_accept(s, listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    io::set_completion(s, &accept_op_);
    accept_armed_ = true;
}

void server::on_accept(int res, uint32_t flags) {
    if (!(flags & IORING_CQE_F_MORE)) accept_armed_ = false;
    if (res >= 0) {
        accept_pacer_.accepted();
        if (stopping_) {
            ::close(res);
        } else {
            int one = 1;
            setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            open_fds_.insert(res);
            if (serving_ < cfg_.admin.max_connections || reclaim()) {
                ++serving_;
                reactor::spawn(gate_, serve(res));
            } else if (refuse(res, too_many_connections())) {
                // Past admin.max_connections a connection gets a 503 rather than a reset.
                if (log::at_doubling(over_limit_total_))
                    log::warn("admin: {} connections open, over admin.max_connections = {}: answering 503 ({} so far)",
                              serving_, cfg_.admin.max_connections, over_limit_total_);
            } else {
                // A flood beyond both: closed at once, so it holds no memory and no descriptor.
                open_fds_.erase(res);
                ::close(res);
                if (log::at_doubling(over_limit_closed_))
                    log::warn("admin: {} connections are being answered 503 already: closing one more at once ({} "
                              "so far)",
                              refusing_, over_limit_closed_);
            }
        }
    } else if (res != -ECANCELED && !stopping_ && accept_pacer_.failed(res)) {
        accept_paused_ = true;
        reactor::spawn(gate_, accept_later());
    }
    if (!accept_armed_ && !stopping_ && !accept_paused_) arm_accept();
}

bool server::reclaim() {
    // Without this, admin.max_connections clients that connect and send nothing (or trickle a request) would keep
    // the operators out for admin.idle_timeout (admin.request_timeout), and again each time they reconnect. The
    // longest waiter goes first, a request under way counted from its first byte; a connection whose request is
    // being handled or answered is never taken. admin.reclaim_after lets a new client send its request before a
    // flood of newer connections could take its slot.
    if (waiting_.empty()) return false;
    const auto oldest = waiting_.begin();
    const int64_t waited = mono_ms() - oldest->first.first;
    if (waited < static_cast<int64_t>(cfg_.admin.reclaim_after_ms)) return false;
    recv_wait& w = *oldest->second;
    waiting_.erase(oldest);
    w.reclaimed = true;
    --serving_;
    // Ends that recv with -ECANCELED. Cancels by user_data are matched as they are issued, in submission order: a
    // later operation at the same address (the frame freed and reused) is queued after this and cannot be hit, and a
    // recv that has completed already makes this one -ENOENT (serve() sees reclaimed either way).
    io_uring_sqe* s = ring_.sqe();
    io_uring_prep_cancel(s, w.recv, 0);
    io::set_completion(s, nullptr);
    if (log::at_doubling(reclaimed_total_))
        log::warn("admin: all admin.max_connections = {} slots taken and a new connection came: it takes the slot of "
                  "the one that waited longest for its client ({} ms, admin.reclaim_after = {} ms) ({} so far)",
                  cfg_.admin.max_connections, waited, cfg_.admin.reclaim_after_ms, reclaimed_total_);
    return true;
}

reactor::task<void> server::accept_later() {
    co_await io::sleep_for(ring_, listener::accept_pacer::pause_ms);
    accept_paused_ = false;
    arm_accept();
}

void server::push(unsigned to, broker::admin_call* call) {
    outbox_.push(to, reactor::smp_msg{broker::k_admin_call, id_, call});
}

void server::publish_smp() {
    outbox_.publish([this](unsigned to) { peers_.wake(to); });
}

void server::drain_smp() {
    for (unsigned from = 0; from < node_.mqtt_shards; ++from) {
        const size_t n = node_.smp.queue(from, id_).drain(
            [](const reactor::smp_msg& m) {
                if (m.kind != broker::k_admin_done) return;
                auto* call = static_cast<broker::admin_call*>(m.ptr);
                static_cast<gather*>(call->waiter)->done(); // may resume the request coroutine
            },
            4096);
        // What a shard sends here weighs only its count; the shard may sleep on it (smp_outbox::arm_wakes).
        if (n != 0 && node_.smp.note_taken(from, id_, n, 0) && node_.smp.claim_wake(from)) peers_.wake(from);
    }
}

reactor::task<void> server::on_shards(const std::vector<unsigned>& shards, const shard_fn& fn) {
    std::vector<broker::admin_call> calls(shards.size());
    for (auto& c : calls)
        c.fn = fn;
    gather g{*this, calls, shards};
    co_await g;
}

reactor::task<void> server::on_shard(unsigned shard, const shard_fn& fn) {
    const std::vector<unsigned> one(1, shard);
    co_await on_shards(one, fn);
}

reactor::task<void> server::on_all(const shard_fn& fn) {
    std::vector<unsigned> all(node_.mqtt_shards);
    for (unsigned i = 0; i < all.size(); ++i)
        all[i] = i;
    co_await on_shards(all, fn);
}

reactor::task<void> server::collect(std::vector<broker::shard_snapshot>& out) {
    out.assign(node_.mqtt_shards, {});
    const shard_fn fn = [&out](broker::shard_control& c) { c.snapshot(out[c.shard_id()]); };
    co_await on_all(fn);
}

bool server::refuse(int fd, std::string why) {
    // As many of these at a time as admin.max_connections, each with a small buffer and a fixed deadline.
    if (refusing_ >= cfg_.admin.max_connections) return false;
    ++refusing_;
    reactor::spawn(gate_, answer_and_close(fd, std::move(why)));
    return true;
}

reactor::task<void> server::answer_and_close(int fd, std::string why) {
    // Answered before any more of its request is read (nothing of it is kept), then read and dropped until the client
    // closes or over_limit_wait_ms have passed in all: a close with unread data would reset the connection, and the
    // client could lose the answer. A client trickling bytes cannot hold the connection past the deadline.
    co_await answer_last(fd, 503, why);
    --refusing_;
    open_fds_.erase(fd);
    ::close(fd);
}

std::string server::too_many_connections() const {
    return fmt::format("too many admin connections (admin.max_connections = {})", cfg_.admin.max_connections);
}

reactor::task<void> server::answer_last(int fd, int status, std::string why) {
    http_response resp;
    json_error(resp, status, why);
    const std::string out = serialize(resp, false);
    const int64_t deadline = mono_ms() + over_limit_wait_ms;
    auto left_ms = [&] { return static_cast<uint32_t>(std::max<int64_t>(deadline - mono_ms(), 1)); };
    size_t sent = 0;
    while (sent < out.size() && !stopping_ && mono_ms() < deadline) {
        const int w = co_await io::send_some(ring_, fd, out.data() + sent, out.size() - sent, left_ms());
        if (w <= 0) break;
        sent += static_cast<size_t>(w);
    }
    if (sent == out.size()) {
        ::shutdown(fd, SHUT_WR);
        while (!stopping_ && mono_ms() < deadline)
            if (co_await io::recv_some(ring_, fd, discard_.data(), discard_.size(), left_ms()) <= 0) break;
    }
}

reactor::task<void> server::serve(int fd) {
    http_parser parser(max_header_bytes, cfg_.admin.max_body_bytes);
    std::vector<char> buf(recv_size);
    std::string out;
    bool open = true;
    const uint32_t idle_ms = cfg_.admin.idle_timeout_ms;
    const uint32_t request_ms = cfg_.admin.request_timeout_ms;
    // When the first byte of the request in progress arrived, 0 between requests. The whole request has
    // admin.request_timeout, not each read: a client sending a byte now and then would otherwise hold one of the
    // admin.max_connections slots, before any authentication, for as long as it liked.
    int64_t began = 0;
    int64_t idle_since = mono_ms(); // when the last response went out (or the connection came)
    recv_wait me;
    while (open && !stopping_) {
        uint32_t wait_ms = idle_ms;
        if (began != 0)
            wait_ms = static_cast<uint32_t>(std::clamp<int64_t>(began + request_ms - mono_ms(), 1, idle_ms));
        io::recv_some recv(ring_, fd, buf.data(), buf.size(), wait_ms);
        me.recv = recv.record();
        const std::pair<int64_t, int> key{began != 0 ? began : idle_since, fd};
        waiting_.emplace(key, &me);
        const int n = co_await recv;
        if (me.reclaimed) {
            // Its slot went to a new connection (reclaim(), which took it off waiting_). A client that had begun a
            // request, or sent one as the slot was taken (read, or left unread by the cancel), is told why: a close
            // with its bytes unread would reset the connection. (That includes one whose own request_timeout fired
            // in the same batch: 503 rather than 408, closed all the same.) An idle one is closed quietly, as
            // admin.idle_timeout would. Its answer is one of refuse()'s, at most admin.max_connections at a time;
            // past that, closed at once, so clients trickling a byte each cannot make closings pile up.
            int unread = 0;
            if (began == 0 && n <= 0) ::ioctl(fd, FIONREAD, &unread);
            if ((began != 0 || n > 0 || unread > 0) && !stopping_ &&
                refuse(fd, fmt::format("{}: this connection's slot was given to a new one after it waited {} ms for "
                                       "its client",
                                       too_many_connections(), mono_ms() - key.first)))
                co_return; // refuse() closes fd
            break;
        }
        waiting_.erase(key);
        if (n <= 0) {
            // Peer closed, error, or a timeout (-ECANCELED): idle between requests closes quietly, a request cut
            // short is answered.
            if (n == -ECANCELED && began != 0 && !stopping_) {
                const bool whole = mono_ms() >= began + request_ms;
                const std::string why =
                    whole ? fmt::format("request not received whole within admin.request_timeout = {} ms", request_ms)
                          : fmt::format("no more of the request under way for admin.idle_timeout = {} ms", idle_ms);
                if (log::at_doubling(request_timeouts_))
                    log::info("admin: answering 408 and closing a connection: {} ({} so far)", why, request_timeouts_);
                co_await answer_last(fd, 408, why);
            }
            break;
        }
        size_t off = 0;
        while (off < static_cast<size_t>(n) && open) {
            size_t used = 0;
            const auto st = parser.feed(buf.data() + off, static_cast<size_t>(n) - off, used);
            off += used;
            http_response resp;
            bool keep_alive = true;
            if (st == http_parser::status::need_more) {
                if (parser.take_expect_continue()) {
                    // curl waits for this before sending a body over 1 KiB.
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    const int w = co_await io::send_some(ring_, fd, cont, sizeof cont - 1, cfg_.admin.send_timeout_ms);
                    if (w <= 0) open = false;
                }
                break;
            }
            if (st == http_parser::status::error) {
                // The client may still be sending the request (a body over the limit): a close with its bytes
                // unread would reset the connection before the client read the answer.
                const int status = parser.error_status();
                const std::string why = parser.error_reason();
                co_await answer_last(fd, status, why);
                open = false;
                break;
            } else {
                http_request req = parser.take();
                keep_alive = req.keep_alive;
                co_await handle(req, resp);
                resp.head = req.method == "HEAD"; // Content-Length still describes the body a GET would get
            }
            out = serialize(resp, keep_alive);
            size_t sent = 0;
            while (sent < out.size()) {
                const int w =
                    co_await io::send_some(ring_, fd, out.data() + sent, out.size() - sent, cfg_.admin.send_timeout_ms);
                if (w <= 0) {
                    if (w == -ECANCELED)
                        log::info("admin: closing a connection: its client did not take the response ({} of {} bytes "
                                  "sent) within admin.send_timeout = {} ms",
                                  sent, out.size(), cfg_.admin.send_timeout_ms);
                    open = false;
                    break;
                }
                sent += static_cast<size_t>(w);
            }
            if (!keep_alive) open = false;
            began = 0;
            idle_since = mono_ms();
        }
        // The request in progress (begun in this read, or in an earlier one) is timed from the read that began it.
        if (!parser.in_message())
            began = 0;
        else if (began == 0)
            began = mono_ms();
    }
    if (!me.reclaimed) --serving_;
    open_fds_.erase(fd);
    ::close(fd);
}

reactor::task<void> server::sys_publisher() {
    // $SYS/brokers/<node>/... like EMQ X: version, uptime, datetime, sysdescr, then stats and metrics. As in EMQ X,
    // $SYS/brokers (the node list) and the node's version and sysdescr are retained, so a monitor that subscribes
    // learns them at once once the first round (one interval after start-up, as in EMQ X) went out.
    const std::string base = "$SYS/brokers/" + cfg_.node_name + "/";
    const uint32_t interval = std::max<uint32_t>(cfg_.sys.interval_ms, 100);
    // Rounds at a fixed period from start-up: sleeping a whole interval after each round made the period drift by
    // the round's own time (at 1 s, about one round in 45 was lost). A round late by more than an interval is skipped.
    int64_t next = mono_ms() + interval;
    while (!stopping_) {
        // Sleep in slices so shutdown never waits a whole interval.
        for (int64_t now = mono_ms(); now < next && !stopping_; now = mono_ms())
            co_await io::sleep_for(ring_, static_cast<uint32_t>(std::min<int64_t>(next - now, 200)));
        next += interval;
        if (const int64_t now = mono_ms(); next <= now) next = now + interval;
        if (stopping_ || !sys_active_) continue;
        std::vector<broker::shard_snapshot> snaps;
        co_await collect(snaps);
        struct sys_msg {
            std::string topic, value;
            bool retain;
        };
        auto msgs = std::make_shared<std::vector<sys_msg>>();
        const int64_t now = static_cast<int64_t>(::time(nullptr));
        msgs->push_back({base + "version", RINGMQ_VERSION, true});
        msgs->push_back({base + "sysdescr", "ringmq MQTT broker", true});
        msgs->push_back({"$SYS/brokers", cfg_.node_name, true});
        msgs->push_back({base + "uptime", format_uptime(now - node_.started_at), false});
        msgs->push_back({base + "datetime", format_datetime(now), false});
        // Every stat and metric, as EMQ X's emqttd_stats and emqttd_metrics published them.
        for (const auto& [name, v] : stats_rows(snaps))
            msgs->push_back({base + "stats/" + name, std::to_string(v), false});
        node_metrics(snaps).for_each([&](std::string_view name, uint64_t v) {
            msgs->push_back({base + "metrics/" + std::string(name), std::to_string(v), false});
        });
        // Not one larger than mqtt.max_packet_size (set as low as 64 bytes, under some topics' length with a long
        // node name): no subscriber gets a packet over the limit.
        std::erase_if(*msgs, [&](const sys_msg& m) {
            const uint64_t size = mqtt::publish_packet_size(m.topic.size(), 0, m.value.size());
            if (size <= cfg_.limits.max_packet_size) return false;
            if (log::at_doubling(sys_too_large_))
                log::warn("$SYS message {} not published: its PUBLISH of {} bytes exceeds mqtt.max_packet_size = {} "
                          "({} so far)",
                          m.topic, size, cfg_.limits.max_packet_size, sys_too_large_);
            return true;
        });
        ++sys_wakeups_;
        const shard_fn publish_all = [msgs](broker::shard_control& c) {
            for (const sys_msg& m : *msgs)
                c.publish(m.topic, {reinterpret_cast<const uint8_t*>(m.value.data()), m.value.size()}, 0, m.retain);
        };
        co_await on_shard(0, publish_all);
    }
}

} // namespace ringmq::admin
