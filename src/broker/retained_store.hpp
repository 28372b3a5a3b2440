#pragma once
// The retained messages one shard holds (every shard keeps a full copy; see README "Design decisions"), ordered by
// topic. A wildcard SUBSCRIBE reads only the topics that share the filter's literal prefix (everything before its
// first wildcard), so `cmd/42/#` looks at the topics under `cmd/42` instead of every retained topic: with many
// retained topics and many such subscribers a full scan per SUBSCRIBE is quadratic. Owned by its shard and only
// touched on that shard's thread.
#include "routing/match.hpp"
#include "session/message.hpp"

#include <cstddef>
#include <functional>
#include <map>
#include <string_view>

namespace ringmq::broker {

class retained_store {
public:
    enum class store_result { stored, replaced, cleared, absent, full };

    // Stores msg under its topic, replacing what was there; an empty payload clears the topic instead (MQTT 3.3.1.3).
    // A new topic beyond `limit` topics (0 = no limit) is not stored (full). msg is moved from only when it is
    // stored or replaces another.
    store_result store(session::message_ref&& msg, size_t limit);
    // The message retained on exactly this topic, or null.
    const session::message* find(std::string_view topic) const;
    // Calls f(const session::message_ref&) for each retained message whose topic matches filter (a valid filter; a
    // leading wildcard skips '$' topics), in topic order. Returns how many stored topics were looked at, so tests
    // and benchmarks can see the range read rather than only its result.
    template <class F> size_t for_each_match(std::string_view filter, F&& f) const;
    size_t size() const { return by_topic_.size(); }
    void clear() { by_topic_.clear(); }

    // The part of filter every matching topic starts with: up to its first wildcard, less the '/' before a '#'
    // (which also matches the parent level: "a/#" matches "a").
    static std::string_view literal_prefix(std::string_view filter);

private:
    // Keys view the topic bytes of their own message, which the value keeps alive; replacing a message replaces
    // its key too.
    std::map<std::string_view, session::message_ref, std::less<>> by_topic_;
};

template <class F> size_t retained_store::for_each_match(std::string_view filter, F&& f) const {
    if (filter.find_first_of("+#") == std::string_view::npos) {
        const auto it_exact = by_topic_.find(filter);
        if (it_exact != by_topic_.end()) f(it_exact->second);
        return it_exact != by_topic_.end() ? 1 : 0;
    }
    const std::string_view prefix = literal_prefix(filter);
    size_t looked = 0;
    for (auto it = by_topic_.lower_bound(prefix); it != by_topic_.end() && it->first.starts_with(prefix); ++it) {
        ++looked;
        if (routing::topic_matches(filter, it->first)) f(it->second);
    }
    return looked;
}

} // namespace ringmq::broker
