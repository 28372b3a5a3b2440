#pragma once
// The admin shard: a thread with its own io_uring serving the EMQ X v2 management REST API over HTTP/1.1. It owns
// the admin listening socket, its HTTP connections (one coroutine each), the admin user store, the plugin switches
// and the $SYS publisher. It reads MQTT shard state only by sending admin_calls over the SMP queues and awaiting
// their return (scatter-gather), so a slow or large request never blocks an MQTT shard.
#include "admin/http.hpp"
#include "admin/json.hpp"
#include "admin/users.hpp"
#include "broker/control.hpp"
#include "broker/shard.hpp"
#include "io/ring.hpp"
#include "io/waker.hpp"
#include "listener/listener.hpp"
#include "reactor/gate.hpp"
#include "reactor/outbox.hpp"
#include "reactor/task.hpp"

#include <array>
#include <atomic>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace ringmq::admin {

// Facts about the MQTT listener the admin reports (set by main).
struct listener_info {
    std::string mqtt_listen;  // "0.0.0.0:1883"
    std::string admin_listen; // "0.0.0.0:8080"
};

class server {
public:
    server(broker::node& n, int listen_fd, listener_info li);
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    // Opens the user store (creating the default user) before anything listens. False with a reason.
    bool open_users(std::string& why);
    // Thread body; returns when stopped. False if the ring could not be set up.
    bool run();
    // Any thread.
    void request_stop();
    std::atomic<bool> ready{false};
    std::atomic<bool> failed{false};

private:
    struct accept_op final : io::completion {
        explicit accept_op(server* sv) : s(sv) {}
        server* s;
        void on_complete(int res, uint32_t flags) override { s->on_accept(res, flags); }
    };
    struct gather;
    friend struct gather;

    void loop();
    void on_accept(int res, uint32_t flags);
    void arm_accept();
    void drain_smp();
    void publish_smp();
    void push(unsigned to, broker::admin_call* call);
    void begin_shutdown();

    // Runs fn on each listed MQTT shard (concurrently) and resumes when all have answered.
    // The arguments are references: callers pass named locals that outlive the await. (GCC 12 mishandles
    // temporaries, such as a lambda converted to std::function, inside a co_await expression.)
    using shard_fn = std::function<void(broker::shard_control&)>;
    reactor::task<void> on_shards(const std::vector<unsigned>& shards, const shard_fn& fn);
    reactor::task<void> on_shard(unsigned shard, const shard_fn& fn);
    reactor::task<void> on_all(const shard_fn& fn);

    // A connection waiting for its client's bytes: what reclaim() may take its slot from. Lives in serve()'s frame;
    // waiting_ points at it while its recv is pending.
    struct recv_wait {
        io::completion* recv = nullptr; // the recv it waits on
        bool reclaimed = false;         // reclaim() gave its slot away (and cancelled the recv)
    };
    // With every admin.max_connections slot taken: ends the wait of the connection that has waited longest, if for
    // admin.reclaim_after, so a new one can have its slot. False if none qualifies.
    bool reclaim();

    reactor::task<void> serve(int fd);
    // Answers a connection (in open_fds_) 503 with why and closes it, within over_limit_wait_ms; false, fd untouched,
    // when admin.max_connections such answers are under way.
    bool refuse(int fd, std::string why);
    reactor::task<void> answer_and_close(int fd, std::string why);
    // Sends a connection's last response, a JSON error with Connection: close, closes its sending side and drops what
    // the client still sends until it closes or over_limit_wait_ms have passed: closing with unread data would reset
    // the connection, and the client could lose the answer. The caller closes fd.
    reactor::task<void> answer_last(int fd, int status, std::string why);
    std::string too_many_connections() const; // the 503's reason

    reactor::task<void> handle(const http_request& req, http_response& resp);
    reactor::task<void> sys_publisher();
    reactor::task<void> accept_later();

    // handlers (handlers.cpp)
    reactor::task<void> dispatch(const http_request& req, const std::vector<std::string>& seg, http_response& resp);
    void nodes_management(json_writer& w, bool with_name);
    reactor::task<void> nodes_monitoring(json_writer& w);
    enum class list_kind { clients, sessions, subscriptions };
    reactor::task<void> paged_list(list_kind kind, const http_request& req, http_response& resp);
    reactor::task<void> lookup(list_kind kind, const std::string& id, const http_request& req, http_response& resp);
    reactor::task<void> routes(const http_request& req, const std::string* topic, http_response& resp);
    reactor::task<void> kick(const std::string& id, http_response& resp);
    reactor::task<void> mqtt_action(int action, const http_request& req, http_response& resp);
    bool api_topic_ok(const std::string& topic, bool filter, http_response& resp) const;
    reactor::task<void> listeners(bool all_nodes, http_response& resp);
    reactor::task<void> metrics(bool all_nodes, http_response& resp);
    reactor::task<void> stats(bool all_nodes, http_response& resp);
    void plugins_list(http_response& resp);
    void plugin_set(const std::string& node, const std::string& name, const http_request& req, http_response& resp);
    void users_api(const http_request& req, const std::vector<std::string>& seg, http_response& resp);
    void auth_api(const http_request& req, http_response& resp);
    enum class login { ok, wrong, busy };
    // verify() within admin.password_checks_per_second (a known good password is always recognised).
    login check_password(std::string_view user, std::string_view password);
    static void too_many_checks(http_response& resp);
    reactor::task<void> collect(std::vector<broker::shard_snapshot>& out);
    // The node's figures from the shards' snapshots, as monitoring/metrics and monitoring/stats answer them and the
    // $SYS topics publish them (stats_rows takes the peaks from the node; its rows are sorted by name).
    static broker::metrics node_metrics(const std::vector<broker::shard_snapshot>& snaps);
    std::vector<std::pair<std::string, uint64_t>> stats_rows(const std::vector<broker::shard_snapshot>& snaps);
    reactor::task<void> routes_page(uint64_t offset, uint64_t size, std::vector<std::string>& out);

    broker::node& node_;
    const config::config& cfg_;
    unsigned id_;              // SMP participant index (= number of MQTT shards)
    uint64_t routes_peak_ = 0; // routes/max: the highest the node's route count was seen at (stats_rows)
    int listen_fd_;
    listener_info li_;
    user_store users_;
    password_check_budget password_checks_{cfg_.admin.password_checks_per_second};
    io::waker waker_;
    io::ring ring_;
    accept_op accept_op_{this};
    bool accept_armed_ = false;
    bool accept_paused_ = false; // out of descriptors: accept_later() arms the accept again
    listener::accept_pacer accept_pacer_{"admin"};
    bool stopping_ = false;
    std::atomic<bool> stop_requested_{false};
    reactor::gate gate_;
    std::set<int> open_fds_;
    uint64_t shutdown_closed_ = 0;
    reactor::smp_outbox outbox_;
    io::peer_waker peers_; // wakes the MQTT shards that sleep, from this shard's ring
    bool sys_active_ = true;
    uint64_t sys_wakeups_ = 0;
    uint64_t sys_too_large_ = 0;     // $SYS messages not published for mqtt.max_packet_size
    uint64_t over_limit_total_ = 0;  // connections answered 503 for admin.max_connections
    uint64_t over_limit_closed_ = 0; // and those closed at once, with admin.max_connections refusals under way
    size_t serving_ = 0;  // serve() coroutines holding an admin.max_connections slot (their fds are in open_fds_)
    size_t refusing_ = 0; // connections refuse() is answering 503 (their fds are in open_fds_ too)
    // serve() coroutines waiting for their client, oldest first: (since, fd), where since (mono_ms) is when the request
    // under way began, or when the connection went idle. serve() adds itself before each recv and removes itself
    // after it, unless reclaim() took it off first.
    std::map<std::pair<int64_t, int>, recv_wait*> waiting_;
    uint64_t reclaimed_total_ = 0; // connections whose slot reclaim() gave away
    // Where answer_last() reads what clients send after their last answer: shared, as nothing read there is ever
    // looked at.
    std::array<char, 16384> discard_{};
    uint64_t password_checks_refused_ = 0;
    uint64_t request_timeouts_ = 0; // requests answered 408 (admin.request_timeout or admin.idle_timeout mid-request)
};

} // namespace ringmq::admin
