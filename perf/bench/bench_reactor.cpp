// Micro-benchmarks of cross-shard plumbing: SPSC queue round trip between two threads, the wake-up of a sleeping
// shard (eventfd or ring message), and buffer-ring recycling.
#include "config/config.hpp"
#include "io/buffer_ring.hpp"
#include "io/ring.hpp"
#include "io/waker.hpp"
#include "reactor/smp.hpp"
#include "reactor/spsc_queue.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <pthread.h>
#include <sched.h>
#include <string>
#include <thread>
#include <vector>

using ringmq::reactor::spsc_queue;

namespace {

// Ping-pong of batches of `batch` items between two threads: the cost of one handoff per item, amortised.
void BM_spsc_round_trip(benchmark::State& st) {
    const size_t batch = static_cast<size_t>(st.range(0));
    spsc_queue<uint64_t> to(1024), back(1024);
    std::atomic<bool> stop{false};
    std::thread peer([&] {
        while (!stop.load(std::memory_order_relaxed)) {
            size_t got = to.drain(
                [&](uint64_t v) {
                    while (!back.try_push(v)) {
                    }
                },
                1024);
            if (got) back.publish();
        }
    });
    for (auto _ : st) {
        for (size_t i = 0; i < batch; ++i)
            while (!to.try_push(i)) {
            }
        to.publish();
        size_t got = 0;
        while (got < batch)
            got += back.drain([](uint64_t) {}, batch);
    }
    stop.store(true);
    peer.join();
    st.SetItemsProcessed(static_cast<int64_t>(st.iterations() * batch));
}
BENCHMARK(BM_spsc_round_trip)->Arg(1)->Arg(16)->Arg(256)->UseRealTime();

// Handles what the ring completed; true if anything did (here only wake-ups are in flight).
bool reap_wakes(ringmq::io::ring& r) {
    ringmq::io::reaped batch[8];
    const unsigned n = r.reap(batch, 8);
    for (unsigned i = 0; i < n; ++i)
        if (batch[i].c) batch[i].c->on_complete(batch[i].res, batch[i].flags);
    return n != 0;
}

// Two threads, each asleep in its own ring, wake each other in turn, as shards do across their SMP queues: through
// the other's eventfd (arg 0) or by posting a message into its ring (arg 1, node.ring_wakeups). One iteration is a
// round trip, two wake-ups; the real time includes the scheduler's switch to the woken thread.
void BM_wake_round_trip(benchmark::State& st) {
    using namespace ringmq;
    const bool by_ring = st.range(0) != 0;
    reactor::smp s(2, 8);
    io::waker wa, wb;
    s.set_waker(0, [&wa] { wa.wake(); });
    s.set_waker(1, [&wb] { wb.wake(); });
    std::atomic<bool> stop{false};
    std::atomic<int> ready{0}; // 1: peer up, -1: its ring failed
    std::thread peer([&] {
        io::ring rb;
        std::string why;
        if (!rb.init(64, why)) {
            ready.store(-1);
            return;
        }
        wb.arm(rb);
        wb.announce(s, 1, rb);
        io::peer_waker pb(s, by_ring);
        pb.attach(rb);
        ready.store(1);
        for (;;) {
            rb.submit_and_wait(-1);
            if (!reap_wakes(rb)) continue;
            if (stop.load()) break;
            pb.wake(0);
            rb.submit();
        }
        wb.stop();
    });
    io::ring ra;
    std::string why;
    const bool ok = ra.init(64, why);
    while (ready.load() == 0)
        std::this_thread::yield();
    if (!ok || ready.load() < 0 || (by_ring && !ra.can_message())) {
        st.SkipWithError(!ok ? why.c_str() : "no ring or no IORING_OP_MSG_RING here");
        stop.store(true);
        s.wake(1);
        peer.join();
        return;
    }
    wa.arm(ra);
    wa.announce(s, 0, ra);
    io::peer_waker pa(s, by_ring);
    pa.attach(ra);
    for (auto _ : st) {
        pa.wake(1);
        do
            ra.submit_and_wait(-1);
        while (!reap_wakes(ra));
    }
    stop.store(true);
    pa.wake(1);
    ra.submit();
    peer.join();
    wa.stop();
    st.SetItemsProcessed(static_cast<int64_t>(st.iterations()));
    st.counters["ring_messages"] = static_cast<double>(pa.messaged());
}
BENCHMARK(BM_wake_round_trip)->Arg(0)->Arg(1)->UseRealTime();

// Pins the calling thread to one CPU; best effort (a refusal leaves it where it was, and the figures say less).
void pin_to(int cpu) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pthread_setaffinity_np(pthread_self(), sizeof one, &one);
}

// What one sleep costs a shard's own thread in CPU, by what ends it: the first completion (arg 0 = 0, a plain sleep) or
// the minimum wait of arg 0 microseconds (node.wake_batch_us, a batched sleep, which its timer ends). Each iteration
// the sleeper goes to sleep in its ring and a peer thread on another CPU, spinning, posts a message into that ring arg
// 1 microseconds later. The CPU column is the sleeper's thread's. On a virtual machine, programming and taking a timer
// can cost the sleeper far more than a wake-up from another CPU does (README, "Batched wake-ups"): that difference is
// what a batched sleep has to save in plain sleeps before it pays.
void BM_sleep_cost(benchmark::State& st) {
    using namespace ringmq;
    const auto min_wait_us = static_cast<unsigned>(st.range(0));
    const auto gap = std::chrono::microseconds(st.range(1));
    struct noop final : io::completion {
        void on_complete(int, uint32_t) override {}
    } token;
    io::ring ra;
    std::string why;
    if (!ra.init(64, why)) {
        st.SkipWithError(why.c_str());
        return;
    }
    if (!ra.can_message() || (min_wait_us != 0 && !ra.can_wait_batch())) {
        st.SkipWithError("no IORING_OP_MSG_RING, or no minimum wait (Linux 6.12+), here");
        return;
    }
    // Taken before pinning, which the peer thread would inherit.
    const std::vector<int> cpus = config::allowed_cpus();
    cpu_set_t had;
    CPU_ZERO(&had);
    pthread_getaffinity_np(pthread_self(), sizeof had, &had);
    if (!cpus.empty()) pin_to(cpus[0]);
    std::atomic<uint64_t> asleep{0}; // the iteration the sleeper is about to sleep for
    std::atomic<bool> stop{false};
    std::atomic<int> ready{0}; // 1: peer up, -1: its ring failed
    std::thread peer([&] {
        if (!cpus.empty()) pin_to(cpus[1 % cpus.size()]);
        io::ring rb;
        std::string peer_why;
        if (!rb.init(64, peer_why)) {
            ready.store(-1);
            return;
        }
        ready.store(1);
        uint64_t done = 0;
        while (!stop.load(std::memory_order_relaxed)) {
            const uint64_t n = asleep.load(std::memory_order_acquire);
            if (n == done) continue;
            done = n;
            const auto from = std::chrono::steady_clock::now();
            while (std::chrono::steady_clock::now() - from < gap) {
            }
            rb.message(ra.fd(), static_cast<io::completion*>(&token), &token);
            rb.submit();
            reap_wakes(rb); // a failed message completes here
        }
    });
    while (ready.load() == 0)
        std::this_thread::yield();
    if (ready.load() < 0) {
        st.SkipWithError("the peer's ring failed");
        peer.join();
        pthread_setaffinity_np(pthread_self(), sizeof had, &had);
        return;
    }
    uint64_t iteration = 0;
    for (auto _ : st) {
        asleep.store(++iteration, std::memory_order_release);
        do {
            if (min_wait_us != 0)
                ra.submit_then_wait(32, min_wait_us, 1000);
            else
                ra.submit_and_wait(1000);
        } while (!reap_wakes(ra));
    }
    stop.store(true);
    peer.join();
    pthread_setaffinity_np(pthread_self(), sizeof had, &had);
    st.SetItemsProcessed(static_cast<int64_t>(st.iterations()));
}
BENCHMARK(BM_sleep_cost)->ArgsProduct({{0, 30, 100}, {5, 20, 50}});

void BM_buffer_ring_recycle(benchmark::State& st) {
    ringmq::io::ring r;
    ringmq::io::buffer_ring b;
    std::string why;
    if (!r.init(64, why) || !b.init(r, 0, 512, 16384, why)) {
        st.SkipWithError(why.c_str());
        return;
    }
    uint16_t bid = 0;
    for (auto _ : st) {
        b.recycle(bid);
        bid = static_cast<uint16_t>((bid + 1) & 511);
        if (bid % 32 == 0) b.commit();
    }
    b.commit();
    st.SetItemsProcessed(static_cast<int64_t>(st.iterations()));
}
BENCHMARK(BM_buffer_ring_recycle);

} // namespace
