// The composition root: reads the configuration, checks io_uring, binds the listeners, starts one pinned thread per
// MQTT shard, then waits for SIGTERM/SIGINT and stops the shards gracefully (a second signal ends the process at
// once). The only code that knows every module.
#include "admin/server.hpp"
#include "broker/shard.hpp"
#include "config/config.hpp"
#include "io/ring.hpp"
#include "listener/listener.hpp"
#include "reactor/smp.hpp"
#include "util/log.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

using namespace ringmq;

namespace {

// Waits for SIGTERM or SIGINT; a SIGHUP (a closed terminal, or an operator expecting a reload as Mosquitto does) is
// logged and waited past: ringmq does not reload its configuration, and a hang-up must not kill it ungracefully.
// Likewise SIGUSR1 and SIGUSR2, which Mosquitto takes for "save the persistence file" and "dump the subscriptions":
// by default they would end the process without a word, every session with it.
int wait_for_stop(const sigset_t& signals) {
    for (;;) {
        int sig = 0;
        if (sigwait(&signals, &sig) != 0) continue;
        if (sig == SIGHUP)
            log::warn("received SIGHUP: ignored (ringmq does not reload its configuration; restart it to change it)");
        else if (sig == SIGUSR1 || sig == SIGUSR2)
            log::warn("received {}: ignored (ringmq keeps no persistence file and has no dump on a signal; the "
                      "admin API lists sessions and subscriptions)",
                      sig == SIGUSR1 ? "SIGUSR1" : "SIGUSR2");
        else
            return sig;
    }
}

const char* signal_name(int sig) { return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "a signal"; }

// A parent that closed stdin, stdout or stderr would let the first eventfd or socket take that number, and every log
// line would then be written into it: the three are reopened on /dev/null first.
void keep_stdio_open() {
    for (int fd = 0; fd < 3; ++fd) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
        const int n = ::open("/dev/null", O_RDWR);
        if (n >= 0 && n != fd) {
            ::dup2(n, fd);
            ::close(n);
        }
    }
}

uint64_t physical_memory() {
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

// Shard i runs on the i-th CPU the process was allowed (its inherited affinity: taskset, a cpuset), round robin, so
// pinning never moves a shard outside what the operator gave ringmq. Best effort: a refusal is logged, once.
void pin(std::thread& t, unsigned shard, const std::vector<int>& cpus) {
    const std::string name = "ringmq-shard" + std::to_string(shard);
    pthread_setname_np(t.native_handle(), name.substr(0, 15).c_str());
    if (cpus.empty()) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpus[shard % cpus.size()], &set);
    if (const int rc = pthread_setaffinity_np(t.native_handle(), sizeof set, &set); rc != 0) {
        static bool warned = false;
        if (!warned)
            log::warn("cannot pin shard {} to CPU {}: {}; shards run unpinned where refused", shard,
                      cpus[shard % cpus.size()], std::strerror(rc));
        warned = true;
    }
}

} // namespace

int main(int argc, char** argv) {
    keep_stdio_open();
    // First too: a line written to a stderr whose reader has gone (a configuration's warning, say) must not kill the
    // process before it has said why it exits (it did: SIGPIPE, instead of exit code 1).
    signal(SIGPIPE, SIG_IGN);
    // Block the signals main handles, first of all, so that one arriving during start-up is acted on once the broker
    // is ready (or ends a failed start) rather than killing the process without a word; every thread inherits the
    // mask, and main waits for them with sigwait().
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    sigaddset(&signals, SIGUSR1);
    sigaddset(&signals, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    config::load_result r = config::load(argc, argv);
    if (!r.cfg) {
        for (const std::string& e : r.errors)
            std::fprintf(stderr, "ringmq: %s\n", e.c_str());
        for (const std::string& w : r.warnings)
            std::fprintf(stderr, "ringmq: warning: %s\n", w.c_str());
        return r.exit_code;
    }
    const config::config cfg = std::move(*r.cfg);
    log::set_level(cfg.log_level);
    log::set_shard_tag(-1);
    // A stderr that stops taking lines must stop no thread (a shard, or main at a signal); what it has not taken by the
    // exit is given a second more.
    log::start_writer();
    std::atexit([] { log::flush(1000); });
    for (const std::string& w : r.warnings)
        log::write_escaped(log::level::warn, w); // escaped by config already

    std::string why;
    if (!io::probe_kernel(why)) {
        log::fatal("cannot start: {}", why);
        return 1;
    }
    int cap_major = 0, cap_minor = 0;
    if (config::parse_kernel_release(cfg.budgets.io_uring_kernel, cap_major, cap_minor, why)) {
        io::limit_features_to(cap_major, cap_minor);
        log::info("node.io_uring_kernel = {}: io_uring is used with no feature newer than Linux {}.{}{}",
                  cfg.budgets.io_uring_kernel, cap_major, cap_minor,
                  io::kernel_at_least(cap_major, cap_minor) ? "" : " (this kernel is older: no effect)");
    }
    io::probe_recv_limit();
    const uint64_t queue_bytes = reactor::smp::bytes_for(cfg.shards + 1, cfg.budgets.smp_queue_size);
    const uint64_t ram = physical_memory();
    if (ram != 0 && queue_bytes > ram) {
        log::fatal(
            "cannot start: node.shards = {} and node.smp_queue_size = {} make {} MiB of cross-shard queues, more "
            "than this machine's {} MiB of memory",
            cfg.shards, cfg.budgets.smp_queue_size, queue_bytes >> 20, ram >> 20);
        return 1;
    }

    listener::bound mqtt_listen;
    if (!listener::bind_reuseport(cfg.mqtt_listen, cfg.shards, {4096, cfg.mqtt_defer_accept, cfg.mqtt_notsent_lowat},
                                  mqtt_listen, why)) {
        log::fatal("cannot listen for MQTT: {}", why);
        return 1;
    }
    listener::bound admin_listen;
    if (cfg.admin.enabled && !listener::bind_reuseport(cfg.admin.listen, 1, {128, false, 0}, admin_listen, why)) {
        log::fatal("cannot listen for the admin API: {}", why);
        listener::close_all(mqtt_listen);
        return 1;
    }
    log::info("ringmq {} starting: {}", RINGMQ_VERSION, config::describe(cfg));
    log::info("cross-shard queues: {} of {} messages, at most {} KiB in use", reactor::smp::queues_for(cfg.shards + 1),
              cfg.budgets.smp_queue_size, queue_bytes >> 10);
    if (cfg.sys.enabled && !cfg.admin.enabled)
        log::info("no $SYS topics: the admin shard publishes them, and admin.enabled = false");
    if (!cfg.limits.allow_anonymous)
        log::info("mqtt.allow_anonymous = false: a CONNECT needs a user name; passwords are not checked (ringmq has "
                  "no MQTT authentication yet)");
    // A connection holds a descriptor until its shard settles it in the ring's file table (node.fixed_files), whose
    // slots the same limit counts per shard; past both, connections wait in the backlog (see accept_pacer).
    log::info(
        "open-file limit {} (mqtt.max_connections {}; {})", listener::raise_fd_limit(), cfg.limits.max_connections,
        cfg.budgets.fixed_files ? fmt::format("settled connections go in the shards' io_uring file tables, up to that "
                                              "many per shard (at most {})",
                                              broker::max_file_slots)
                                : std::string("a descriptor per connection, node.fixed_files = false"));

    broker::node node(cfg, cfg.shards);
    std::unique_ptr<admin::server> admin_server;
    if (cfg.admin.enabled) {
        admin::listener_info li{config::to_string(config::endpoint{cfg.mqtt_listen.host, mqtt_listen.port}),
                                config::to_string(config::endpoint{cfg.admin.listen.host, admin_listen.port})};
        admin_server = std::make_unique<admin::server>(node, admin_listen.fds[0], li);
        if (!admin_server->open_users(why)) {
            log::fatal("cannot start the admin API: {}", why);
            listener::close_all(mqtt_listen);
            listener::close_all(admin_listen);
            return 1;
        }
    }
    std::vector<std::unique_ptr<broker::shard>> shards;
    for (unsigned i = 0; i < cfg.shards; ++i) {
        shards.push_back(std::make_unique<broker::shard>(node, i, mqtt_listen.fds[i]));
        node.shards.push_back(shards.back().get());
    }
    std::vector<std::thread> threads;
    const std::vector<int> cpus = config::allowed_cpus();
    for (unsigned i = 0; i < cfg.shards; ++i) {
        threads.emplace_back([s = shards[i].get()] { s->run(); });
        pin(threads.back(), i, cpus);
    }
    std::thread admin_thread;
    if (admin_server) admin_thread = std::thread([s = admin_server.get()] { s->run(); });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    auto admin_ready = [&] { return !admin_server || admin_server->ready.load(); };
    while ((node.ready.load() < cfg.shards || !admin_ready()) && !node.failed.load() &&
           !(admin_server && admin_server->failed.load()) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    int rc = 0;
    // A stop that hangs (a shard stuck in the kernel, say) must not need SIGKILL to end: from here on, a signal while
    // stopping (the first after a failed start, the second after a graceful one) ends the process at once.
    const auto exit_on_signal = [signals] {
        std::thread([signals] {
            const int again = wait_for_stop(signals);
            log::fatal("received {} while stopping: exiting without a graceful stop", signal_name(again));
            log::flush(200);
            std::_Exit(128 + again);
        }).detach();
    };
    if (node.ready.load() < cfg.shards || !admin_ready()) {
        const unsigned ready = node.ready.load();
        if (node.failed.load() || (admin_server && admin_server->failed.load()))
            log::fatal("cannot start: {} failed to start (see above; {} of {} shards were ready)",
                       !node.failed.load()                           ? "the admin shard"
                       : admin_server && admin_server->failed.load() ? "a shard and the admin shard"
                                                                     : "a shard",
                       ready, cfg.shards);
        else
            log::fatal("cannot start: {} of {} shards{} ready after 10 s", ready, cfg.shards,
                       admin_ready() ? "" : ", not the admin shard,");
        rc = 1;
        // A signal that came during the start was held for when the broker is ready; it never will be, and the
        // exit code stays 1, so it is let go before the watcher starts.
        const timespec zero{};
        while (sigtimedwait(&signals, nullptr, &zero) > 0) {
        }
        exit_on_signal();
    } else {
        log::info("listening mqtt tcp {}", config::to_string(config::endpoint{cfg.mqtt_listen.host, mqtt_listen.port}));
        if (admin_server)
            log::info("listening admin http {}",
                      config::to_string(config::endpoint{cfg.admin.listen.host, admin_listen.port}));
        log::info("ringmq ready: node {}, {} shard{}", cfg.node_name, cfg.shards, cfg.shards == 1 ? "" : "s");
        const int sig = wait_for_stop(signals);
        log::info("received {}, shutting down (a second one stops at once)", signal_name(sig));
        exit_on_signal();
    }
    node.stopping.store(true);
    // The admin shard stops first: its requests wait on MQTT shards, which must still answer them.
    if (admin_server) {
        admin_server->request_stop();
        admin_thread.join();
    }
    for (auto& s : shards)
        s->request_stop();
    for (auto& t : threads)
        t.join();
    broker::release_leftovers(node);
    listener::close_all(mqtt_listen);
    listener::close_all(admin_listen);
    if (rc == 0) log::info("ringmq stopped");
    return rc;
}
