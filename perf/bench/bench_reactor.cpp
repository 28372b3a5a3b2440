// Micro-benchmarks of cross-shard plumbing: SPSC queue round trip between two threads, and buffer-ring recycling.
#include "io/buffer_ring.hpp"
#include "reactor/spsc_queue.hpp"

#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>

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
