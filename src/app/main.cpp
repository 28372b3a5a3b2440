// The composition root: reads the configuration, checks io_uring, binds the listeners, starts one pinned thread per
// MQTT shard, then waits for SIGTERM/SIGINT and stops the shards gracefully. The only code that knows every module.
#include "broker/shard.hpp"
#include "config/config.hpp"
#include "io/ring.hpp"
#include "listener/listener.hpp"
#include "util/log.hpp"

#include <pthread.h>
#include <sched.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

using namespace ringmq;

namespace {

void pin(std::thread& t, unsigned shard) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(shard % cores, &set);
    pthread_setaffinity_np(t.native_handle(), sizeof set, &set); // best effort: a cpuset may forbid it
    const std::string name = "ringmq-shard" + std::to_string(shard);
    pthread_setname_np(t.native_handle(), name.substr(0, 15).c_str());
}

} // namespace

int main(int argc, char** argv) {
    config::load_result r = config::load(argc, argv);
    if (!r.cfg) {
        for (const std::string& e : r.errors)
            std::fprintf(stderr, "ringmq: %s\n", e.c_str());
        return r.exit_code;
    }
    const config::config cfg = std::move(*r.cfg);
    log::set_level(cfg.log_level);
    log::set_shard_tag(-1);

    std::string why;
    if (!io::probe_kernel(why)) {
        log::error("cannot start: {}", why);
        return 1;
    }

    // Block the stop signals in every thread; main waits for them with sigwait().
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);
    signal(SIGPIPE, SIG_IGN);

    listener::bound mqtt_listen;
    if (!listener::bind_reuseport(cfg.mqtt_listen, cfg.shards, 4096, mqtt_listen, why)) {
        log::error("cannot listen for MQTT: {}", why);
        return 1;
    }
    log::info("ringmq {} starting: {}", RINGMQ_VERSION, config::describe(cfg));

    broker::node node(cfg, cfg.shards);
    std::vector<std::unique_ptr<broker::shard>> shards;
    for (unsigned i = 0; i < cfg.shards; ++i) {
        shards.push_back(std::make_unique<broker::shard>(node, i, mqtt_listen.fds[i]));
        node.shards.push_back(shards.back().get());
    }
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < cfg.shards; ++i) {
        threads.emplace_back([s = shards[i].get()] { s->run(); });
        pin(threads.back(), i);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (node.ready.load() < cfg.shards && !node.failed.load() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    int rc = 0;
    if (node.ready.load() < cfg.shards) {
        log::error("cannot start: {} of {} shards failed to start", cfg.shards - node.ready.load(), cfg.shards);
        rc = 1;
    } else {
        log::info("listening mqtt tcp {}:{}", cfg.mqtt_listen.host, mqtt_listen.port);
        log::info("ringmq ready: node {}, {} shard{}", cfg.node_name, cfg.shards, cfg.shards == 1 ? "" : "s");
        int sig = 0;
        sigwait(&stop_set, &sig);
        log::info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    }
    node.stopping.store(true);
    for (auto& s : shards)
        s->request_stop();
    for (auto& t : threads)
        t.join();
    broker::release_leftovers(node);
    listener::close_all(mqtt_listen);
    if (rc == 0) log::info("ringmq stopped");
    return rc;
}
