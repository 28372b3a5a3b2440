#pragma once
// The retained messages one shard holds (every shard keeps a full copy; see README "Design decisions"), ordered by
// topic. A wildcard SUBSCRIBE reads only the topics that share the filter's literal prefix (everything before its
// first wildcard), so `cmd/42/#` looks at the topics under `cmd/42` instead of every retained topic: with many
// retained topics and many such subscribers a full scan per SUBSCRIBE is quadratic. Owned by its shard and only
// touched on that shard's thread.
#include "routing/match.hpp"
#include "session/message.hpp"

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <set>
#include <string>
#include <string_view>

namespace ringmq::broker {

class retained_store {
public:
    enum class store_result { stored, replaced, cleared, absent, full, stale };

    // Stores msg under its topic, replacing what was there; an empty payload clears the topic instead (MQTT 3.3.1.3).
    // A new topic beyond `limit` topics (0 = no limit) is not stored (full). msg is moved from only when it is
    // stored, replaces another or becomes a tombstone.
    //
    // Every shard applies every retained update, its own at once and the others' as they arrive, so two shards can
    // see two updates of one topic in opposite orders. Each update carries a stamp from one node-wide counter, and an
    // update older than what the topic holds is refused (stale): every shard ends with the newest. With
    // `keep_tombstones` (several shards) a clear is kept as a tombstone, an entry without payload that find, scan
    // and size do not see, so that an older message arriving after it cannot bring the topic back; tombstones are
    // dropped by prune_tombstones once no older update can still be on its way.
    store_result store(session::message_ref&& msg, size_t limit, int64_t now_ms = 0, bool keep_tombstones = false);
    // Whether store() would refuse an update of topic (clear: an empty payload) as full under `limit`. The shard a
    // retained PUBLISH comes to asks before it sends the update to the others, which then store it whatever their
    // count: each shard deciding alone, two new topics stored at once on two shards at the limit were each refused
    // by the other shard, and the copies differed for good.
    bool full_for(std::string_view topic, bool clear, size_t limit) const;
    // Drops the tombstones made at or before `cutoff_ms`; returns how many.
    size_t prune_tombstones(int64_t cutoff_ms);
    // Tombstones are kept for a time, but also within a count and the bytes of their topics: a client clearing
    // topics that were never stored (each clear is a tombstone on every shard) would otherwise hold memory without
    // bound. Past either, store() drops the oldest ones before their time (counted by tombstones_dropped_early): an
    // older update of those topics still on its way could then bring one back, a risk only while clears flood in.
    void set_tombstone_limits(size_t count, size_t bytes) {
        max_tombs_ = count;
        max_tomb_bytes_ = bytes;
    }
    static constexpr size_t default_max_tombstones = 65536;
    static constexpr size_t default_max_tombstone_bytes = size_t{8} << 20;
    size_t max_tombstones() const { return max_tombs_; }
    size_t max_tombstone_bytes() const { return max_tomb_bytes_; }
    uint64_t tombstones_dropped_early() const { return tombs_dropped_early_; }
    size_t tombstone_bytes() const { return tomb_bytes_; } // topic bytes of the clears in the queue
    size_t tombstones() const { return tombstones_; }
    // Clears waiting for prune_tombstones, whether or not their tombstone is still there (one replaced since is
    // skipped then): what the owner looks at to know whether pruning is due.
    size_t tombs_queued() const { return tomb_queue_.size(); }
    // A message carries the low 32 bits of its stamp (the counter wraps). Every store sees every retained update of
    // the node, so the latest stamp it was given is never further from a new one than the updates in flight between
    // shards (far under 2^31): the new one's full 64-bit value is its distance from that latest. Entries keep the
    // full value, so a topic not updated for any number of updates is still replaced by the next one (compared as
    // 32-bit stamps, one left alone for 2^31 updates refused every later update as older).
    uint64_t full_stamp(uint32_t stamp) const {
        return latest_ + static_cast<uint64_t>(
                             static_cast<int64_t>(static_cast<int32_t>(stamp - static_cast<uint32_t>(latest_))));
    }
    // The message retained on exactly this topic, or null.
    const session::message* find(std::string_view topic) const;
    // Calls f(const session::message_ref&) for each retained message whose topic matches filter (a valid filter; a
    // leading wildcard skips '$' topics), in topic order. Returns how many stored topics were looked at, so tests
    // and benchmarks can see the range read rather than only its result.
    template <class F> size_t for_each_match(std::string_view filter, F&& f) const;

    struct scan_result {
        size_t looked; // stored topics looked at (a topic whose message f did not take is not counted)
        bool done;     // the filter's range was read to its end
    };
    // for_each_match in steps, for a read that spans loop turns (a SUBSCRIBE's retained messages, sent as the
    // subscriber has room). Continues after the topic `after` (empty: from the start); calls f(const
    // session::message_ref&) -> bool for each match, in topic order, until f returns false (it did not take that
    // message: the next step starts with it), `budget` (> 0) topics have been looked at, or the range ends. `after` is
    // left at the last topic passed, so that a step continues in the right place whatever was stored or cleared since
    // the one before. Messages stored after applied() was `upto` are passed over: the read began before them, and the
    // owner delivered them live to its subscribers as it stored them, queued behind the read; sent by the read too,
    // the newest came ahead of the older live copies of its topic (and then again).
    template <class F>
    scan_result scan(std::string_view filter, std::string& after, size_t budget, F&& f,
                     uint64_t upto = UINT64_MAX) const;
    // Counts the messages stored (each new or replacing one takes the next value): what a read that begins now
    // passes to scan as `upto`.
    uint64_t applied() const { return applied_; }
    size_t size() const { return by_topic_.size() - tombstones_; } // retained topics (tombstones not counted)
    void clear() {
        by_topic_.clear();
        tomb_queue_.clear();
        tombstones_ = 0;
        tomb_bytes_ = 0;
    }

    // The part of filter every matching topic starts with: up to its first wildcard, less the '/' before a '#'
    // (which also matches the parent level: "a/#" matches "a").
    static std::string_view literal_prefix(std::string_view filter);

private:
    // Ordered by the topic of their own message: no key beside it (a view of those bytes was 16 bytes more a node,
    // which with `applied` would have taken a node of 64 bytes to the next allocation size, 80).
    struct entry {
        session::message_ref msg;
        uint64_t stamp;   // full_stamp(msg->stamp()) when it was stored
        uint64_t applied; // applied_ when it was stored: in this store's own order, not the node-wide one of stamps
        std::string_view topic() const { return msg->topic(); }
    };
    struct topic_less {
        using is_transparent = void;
        static std::string_view key(const entry& e) { return e.topic(); }
        static std::string_view key(std::string_view t) { return t; }
        template <class A, class B> bool operator()(const A& a, const B& b) const { return key(a) < key(b); }
    };
    std::set<entry, topic_less> by_topic_;
    // The latest full stamp given to store(); starts a wrap above 0 so that an older stamp has room below it.
    uint64_t latest_ = uint64_t{1} << 32;
    uint64_t applied_ = 0;
    struct tomb {
        int64_t made_ms;
        std::string topic;
        uint64_t stamp;
    };
    std::deque<tomb> tomb_queue_; // in the order made; an entry whose topic moved on since is skipped
    size_t tombstones_ = 0;
    size_t tomb_bytes_ = 0; // topic bytes in tomb_queue_ (each tombstone's message holds as many again)
    size_t max_tombs_ = default_max_tombstones;
    size_t max_tomb_bytes_ = default_max_tombstone_bytes;
    uint64_t tombs_dropped_early_ = 0;
    store_result store_one(session::message_ref&& msg, size_t limit, int64_t now_ms, bool keep_tombstones);
    // Pops the queue's front entry and drops its tombstone if it is still the topic's; true when it was.
    bool pop_tomb();
    static bool is_tombstone(const entry& e) { return e.msg->payload().empty(); }
};

template <class F> size_t retained_store::for_each_match(std::string_view filter, F&& f) const {
    std::string after;
    return scan(filter, after, SIZE_MAX,
                [&](const session::message_ref& m) {
                    f(m);
                    return true;
                })
        .looked;
}

template <class F>
retained_store::scan_result retained_store::scan(std::string_view filter, std::string& after, size_t budget, F&& f,
                                                 uint64_t upto) const {
    const auto unseen = [upto](const entry& e) { return is_tombstone(e) || e.applied > upto; };
    if (filter.find_first_of("+#") == std::string_view::npos) {
        const auto it_exact = by_topic_.find(filter);
        if (it_exact == by_topic_.end() || unseen(*it_exact)) return {0, true};
        if (!f(it_exact->msg)) return {0, false};
        return {1, true};
    }
    const std::string_view prefix = literal_prefix(filter);
    size_t looked = 0;
    auto it = after.empty() ? by_topic_.lower_bound(prefix) : by_topic_.upper_bound(std::string_view(after));
    auto last = by_topic_.end(); // the last topic passed in this step
    for (; it != by_topic_.end() && it->topic().starts_with(prefix); ++it) {
        if (looked == budget || (!unseen(*it) && routing::topic_matches(filter, it->topic()) && !f(it->msg))) {
            if (last != by_topic_.end()) after.assign(last->topic());
            return {looked, false};
        }
        ++looked;
        last = it;
    }
    return {looked, true};
}

} // namespace ringmq::broker
