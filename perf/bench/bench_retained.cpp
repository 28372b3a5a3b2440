// Micro-benchmarks of the retained store on SUBSCRIBE: find the retained messages for one filter among 1k, 100k and
// 1M retained topics "dev/<i>/state", against the hashed table and full scan it replaced (every stored topic through
// topic_matches).
#include "broker/retained_store.hpp"
#include "routing/match.hpp"

#include <benchmark/benchmark.h>

#include <string>
#include <unordered_map>
#include <vector>

using ringmq::broker::retained_store;

namespace {

using message_ref = ringmq::session::message_ref;
// The table the store replaced: topic -> message, hashed, every topic read for a wildcard filter.
using flat_table = std::unordered_map<std::string, message_ref>;

std::string topic(size_t i) { return "dev/" + std::to_string(i) + "/state"; }
std::string own_subtree(size_t i) { return "dev/" + std::to_string(i) + "/#"; }

message_ref make(const std::string& topic) {
    const uint8_t payload[8] = {};
    return message_ref::adopt(ringmq::session::message::make(topic, payload, 0, true));
}

void fill(retained_store& s, size_t n) {
    for (size_t i = 0; i < n; ++i)
        s.store(make(topic(i)), 0);
}

void fill(flat_table& t, size_t n) {
    for (size_t i = 0; i < n; ++i)
        t.emplace(topic(i), make(topic(i)));
}

template <class F> size_t scan(const flat_table& t, std::string_view filter, F&& f) {
    for (const auto& [topic, m] : t)
        if (ringmq::routing::topic_matches(filter, topic)) f(m);
    return t.size();
}

// A device subscribing to its own subtree: "dev/<j>/#".
void BM_retained_own_subtree(benchmark::State& st) {
    retained_store s;
    const size_t n = static_cast<size_t>(st.range(0));
    fill(s, n);
    size_t j = 0, hits = 0, looked = 0;
    for (auto _ : st) {
        const std::string filter = own_subtree(j++ * 7919 % n);
        looked += s.for_each_match(filter, [&](const auto&) { ++hits; });
    }
    benchmark::DoNotOptimize(hits);
    st.counters["looked"] = benchmark::Counter(static_cast<double>(looked), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_retained_own_subtree)->Arg(1000)->Arg(100000)->Arg(1000000);

// The same filters through the full scan the store replaced.
void BM_retained_own_subtree_full_scan(benchmark::State& st) {
    flat_table t;
    const size_t n = static_cast<size_t>(st.range(0));
    fill(t, n);
    size_t j = 0, hits = 0;
    for (auto _ : st) {
        const std::string filter = own_subtree(j++ * 7919 % n);
        scan(t, filter, [&](const auto&) { ++hits; });
    }
    benchmark::DoNotOptimize(hits);
}
BENCHMARK(BM_retained_own_subtree_full_scan)->Arg(1000)->Arg(100000)->Arg(1000000)->Unit(benchmark::kMicrosecond);

// A filter with '+' right after the first level reads every "dev/..." topic either way.
void BM_retained_plus_level(benchmark::State& st) {
    retained_store s;
    fill(s, static_cast<size_t>(st.range(0)));
    size_t hits = 0;
    for (auto _ : st)
        s.for_each_match("dev/+/state", [&](const auto&) { ++hits; });
    benchmark::DoNotOptimize(hits);
}
BENCHMARK(BM_retained_plus_level)->Arg(1000)->Arg(100000)->Unit(benchmark::kMicrosecond);

void BM_retained_plus_level_full_scan(benchmark::State& st) {
    flat_table t;
    fill(t, static_cast<size_t>(st.range(0)));
    size_t hits = 0;
    for (auto _ : st)
        scan(t, "dev/+/state", [&](const auto&) { ++hits; });
    benchmark::DoNotOptimize(hits);
}
BENCHMARK(BM_retained_plus_level_full_scan)->Arg(1000)->Arg(100000)->Unit(benchmark::kMicrosecond);

} // namespace
