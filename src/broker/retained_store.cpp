#include "broker/retained_store.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

namespace ringmq::broker {

bool retained_store::full_for(std::string_view topic, bool clear, size_t limit) const {
    if (clear || limit == 0 || size() < limit) return false;
    const auto it = by_topic_.find(topic);
    return it == by_topic_.end() || is_tombstone(*it); // a new topic (a tombstone's is one)
}

retained_store::store_result retained_store::store(session::message_ref&& msg, size_t limit, int64_t now_ms,
                                                   bool keep_tombstones) {
    const store_result r = store_one(std::move(msg), limit, now_ms, keep_tombstones);
    // The newest clear stays whatever its size: a queue of one is within any limit that matters.
    while (tomb_queue_.size() > 1 && (tomb_queue_.size() > max_tombs_ || tomb_bytes_ > max_tomb_bytes_))
        if (pop_tomb()) ++tombs_dropped_early_;
    return r;
}

retained_store::store_result retained_store::store_one(session::message_ref&& msg, size_t limit, int64_t now_ms,
                                                       bool keep_tombstones) {
    const std::string_view topic = msg->topic();
    // One search: `it` is the topic's entry when there is one, else where a new entry goes.
    auto it = by_topic_.lower_bound(topic);
    const bool present = it != by_topic_.end() && it->topic() == topic;
    const uint64_t stamp = full_stamp(msg->stamp());
    latest_ = std::max(latest_, stamp);
    if (present && it->stamp > stamp) return store_result::stale;
    const bool was_tombstone = present && is_tombstone(*it);
    const bool clear = msg->payload().empty();
    if (clear && !keep_tombstones) {
        if (!present) return store_result::absent;
        by_topic_.erase(it);
        if (was_tombstone) --tombstones_;
        return was_tombstone ? store_result::absent : store_result::cleared;
    }
    if (!clear && full_for(topic, false, limit)) return store_result::full;
    if (clear) {
        tomb_queue_.push_back({now_ms, std::string(topic), stamp});
        tomb_bytes_ += topic.size();
    }
    if (present) {
        // In place of the old one (a set's elements change only out of it; the node is reused).
        const auto next = std::next(it);
        auto node = by_topic_.extract(it);
        node.value() = entry{std::move(msg), stamp, ++applied_};
        by_topic_.insert(next, std::move(node));
        if (clear && !was_tombstone) ++tombstones_;
        if (!clear && was_tombstone) --tombstones_;
        if (clear) return was_tombstone ? store_result::absent : store_result::cleared;
        return was_tombstone ? store_result::stored : store_result::replaced;
    }
    by_topic_.emplace_hint(it, entry{std::move(msg), stamp, ++applied_});
    if (clear) {
        ++tombstones_;
        return store_result::absent;
    }
    return store_result::stored;
}

bool retained_store::pop_tomb() {
    const tomb& t = tomb_queue_.front();
    const auto it = by_topic_.find(t.topic);
    const bool current = it != by_topic_.end() && is_tombstone(*it) && it->stamp == t.stamp;
    if (current) {
        by_topic_.erase(it);
        --tombstones_;
    }
    tomb_bytes_ -= t.topic.size();
    tomb_queue_.pop_front();
    return current;
}

size_t retained_store::prune_tombstones(int64_t cutoff_ms) {
    size_t dropped = 0;
    while (!tomb_queue_.empty() && tomb_queue_.front().made_ms <= cutoff_ms)
        if (pop_tomb()) ++dropped;
    return dropped;
}

const session::message* retained_store::find(std::string_view topic) const {
    auto it = by_topic_.find(topic);
    return it == by_topic_.end() || is_tombstone(*it) ? nullptr : it->msg.get();
}

std::string_view retained_store::literal_prefix(std::string_view filter) {
    const size_t w = filter.find_first_of("+#");
    if (w == std::string_view::npos) return filter;
    std::string_view prefix = filter.substr(0, w);
    if (filter[w] == '#' && !prefix.empty()) prefix.remove_suffix(1);
    return prefix;
}

} // namespace ringmq::broker
