// libFuzzer target for the topic trie (tests/fuzz, as ARCHITECTURE.md plans; that page is outside this repository): the
// input is a program of subscribe, unsubscribe, remote-bit and match operations over filters and topics built from a
// few short levels (so that they collide), run against the trie and against a plain model (every (filter, subscriber)
// pair in a map, matched one by one with routing::topic_matches). Every match must report the same (subscriber, filter)
// pairs and remote mask, and the counters (filters, subscriptions, first holders) must agree; once everything is
// removed the trie must be empty. Any disagreement aborts. Built only with clang (meson -Dfuzz=true, see README
// "Fuzzing").
#include "mqtt/validate.hpp"
#include "routing/match.hpp"
#include "routing/topic_trie.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

using ringmq::routing::subscriber_entry;
using ringmq::routing::subscriber_id;
using ringmq::routing::topic_trie;

// Reads the program's bytes; past the end every read is 0, so any input is a whole program.
struct input {
    const uint8_t* p;
    size_t n;
    uint8_t next() {
        if (n == 0) return 0;
        --n;
        return *p++;
    }
};

std::string make_name(input& in, bool filter) {
    static const char* const levels[] = {"a", "b", "", "$s", "ab", "+", "#"};
    const size_t count = 1 + in.next() % 4;
    std::string s;
    for (size_t i = 0; i < count; ++i) {
        if (i) s += '/';
        s += levels[in.next() % (filter ? 7 : 5)];
    }
    return s;
}

struct model {
    std::map<std::pair<std::string, uintptr_t>, uint8_t> subs; // (filter, subscriber) -> options
    std::map<std::string, uint64_t> remote;                    // filter -> remote shard bits
    uint64_t lower_mask = 0;

    // The filters with a local subscriber, and of those the ones no lower shard also holds (first holders).
    std::pair<size_t, size_t> filters_and_first_holders() const {
        size_t filters = 0, first = 0;
        const std::string* last = nullptr;
        for (const auto& [k, v] : subs) {
            if (last && k.first == *last) continue;
            last = &k.first;
            ++filters;
            const auto it = remote.find(k.first);
            if (((it == remote.end() ? 0 : it->second) & lower_mask) == 0) ++first;
        }
        return {filters, first};
    }
};

void check(bool ok) {
    if (!ok) std::abort();
}

void check_counts(const topic_trie& t, const model& m) {
    const auto [filters, first] = m.filters_and_first_holders();
    check(t.subscription_count() == m.subs.size());
    check(t.filter_count() == filters);
    check(t.first_holder_count() == first);
}

void check_match(const topic_trie& t, const model& m, const std::string& topic) {
    std::vector<std::pair<std::string, uintptr_t>> got, want;
    const uint64_t mask = t.match(topic, [&](const subscriber_entry& e, std::string_view filter) {
        got.emplace_back(std::string(filter), reinterpret_cast<uintptr_t>(e.sub));
    });
    uint64_t want_mask = 0;
    for (const auto& [k, v] : m.subs)
        if (ringmq::routing::topic_matches(k.first, topic)) want.push_back(k);
    for (const auto& [f, bits] : m.remote)
        if (ringmq::routing::topic_matches(f, topic)) want_mask |= bits;
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    check(got == want);
    check(mask == want_mask);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    input in{data, size};
    topic_trie t;
    model m;
    const unsigned self = in.next() % 4;
    t.set_self(self);
    m.lower_mask = (uint64_t{1} << self) - 1;
    for (int step = 0; step < 64 && in.n > 0; ++step) {
        const uint8_t op = in.next() % 5;
        if (op == 4) {
            const std::string topic = make_name(in, false);
            if (ringmq::mqtt::valid_topic_name(topic)) check_match(t, m, topic);
            continue;
        }
        const std::string filter = make_name(in, true);
        if (!ringmq::mqtt::valid_topic_filter(filter)) continue;
        const uintptr_t sub = 1 + in.next() % 3;
        const unsigned shard = in.next() % 4;
        switch (op) {
        case 0: {
            const uint8_t options = in.next() % 3;
            const bool added = t.subscribe(filter, reinterpret_cast<subscriber_id>(sub), options);
            check(added == m.subs.insert_or_assign({filter, sub}, options).second);
            break;
        }
        case 1:
            check(t.unsubscribe(filter, reinterpret_cast<subscriber_id>(sub)) == (m.subs.erase({filter, sub}) == 1));
            break;
        case 2:
            if (shard == self) break; // a shard's own bit is never set by the broker
            t.add_remote(filter, shard);
            m.remote[filter] |= uint64_t{1} << shard;
            break;
        case 3:
            if (shard == self) break;
            t.remove_remote(filter, shard);
            if (auto it = m.remote.find(filter); it != m.remote.end() && (it->second &= ~(uint64_t{1} << shard)) == 0)
                m.remote.erase(it);
            break;
        }
        check_counts(t, m);
        for (const auto& [f, bits] : m.remote)
            check(t.remote_mask(f) == bits);
    }
    // Everything removed: the trie prunes itself to nothing.
    for (const auto& [k, v] : m.subs)
        check(t.unsubscribe(k.first, reinterpret_cast<subscriber_id>(k.second)));
    for (const auto& [f, bits] : m.remote)
        for (unsigned s = 0; s < 64; ++s)
            if (bits >> s & 1) t.remove_remote(f, s);
    check(t.empty() && t.subscription_count() == 0 && t.filter_count() == 0);
    return 0;
}
