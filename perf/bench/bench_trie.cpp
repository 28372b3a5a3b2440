// Micro-benchmarks of the topic trie: match against 1k, 100k and 1M filters, exact and wildcard.
#include "routing/topic_trie.hpp"

#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

using ringmq::routing::topic_trie;

namespace {

// Filters "site/<a>/dev/<b>/<metric>"; wildcard sets replace a level with '+' or end with '#'.
void fill(topic_trie& t, size_t n, bool wildcard, std::vector<std::string>& topics) {
    std::mt19937 rng(42);
    const char* metrics[] = {"temp", "humidity", "power", "state"};
    for (size_t i = 0; i < n; ++i) {
        const std::string a = std::to_string(i % 1000), b = std::to_string(i / 1000);
        const std::string m = metrics[i % 4];
        std::string f = "site/" + a + "/dev/" + b + "/" + m;
        topics.push_back(f);
        if (wildcard) {
            switch (rng() % 3) {
            case 0:
                f = "site/" + a + "/dev/+/" + m;
                break;
            case 1:
                f = "site/" + a + "/dev/" + b + "/#";
                break;
            default:
                break;
            }
        }
        t.subscribe(f, reinterpret_cast<void*>(i + 1), 0);
    }
}

void BM_trie_match(benchmark::State& st) {
    topic_trie t;
    std::vector<std::string> topics;
    fill(t, static_cast<size_t>(st.range(0)), st.range(1) != 0, topics);
    size_t i = 0, hits = 0;
    for (auto _ : st) {
        const std::string& topic = topics[i++ % topics.size()];
        uint64_t mask = t.match(topic, [&](const auto&, std::string_view) { ++hits; });
        benchmark::DoNotOptimize(mask);
    }
    benchmark::DoNotOptimize(hits);
    st.counters["filters"] = static_cast<double>(t.filter_count());
}
BENCHMARK(BM_trie_match)
    ->Args({1000, 0})
    ->Args({1000, 1})
    ->Args({100000, 0})
    ->Args({100000, 1})
    ->Args({1000000, 0})
    ->Args({1000000, 1});

} // namespace
