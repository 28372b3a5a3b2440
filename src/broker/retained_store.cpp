#include "broker/retained_store.hpp"

#include <iterator>
#include <utility>

namespace ringmq::broker {

retained_store::store_result retained_store::store(session::message_ref&& msg, size_t limit) {
    const std::string_view topic = msg->topic();
    // One search: `it` is the topic's entry when there is one, else where a new entry goes.
    auto it = by_topic_.lower_bound(topic);
    const bool present = it != by_topic_.end() && it->first == topic;
    if (msg->payload().empty()) {
        if (!present) return store_result::absent;
        by_topic_.erase(it);
        return store_result::cleared;
    }
    if (present) {
        // The old key views the old message's bytes: put the new message in under a key that views its own.
        const auto next = std::next(it);
        auto node = by_topic_.extract(it);
        node.key() = topic;
        node.mapped() = std::move(msg);
        by_topic_.insert(next, std::move(node));
        return store_result::replaced;
    }
    if (limit != 0 && by_topic_.size() >= limit) return store_result::full;
    by_topic_.emplace_hint(it, topic, std::move(msg));
    return store_result::stored;
}

const session::message* retained_store::find(std::string_view topic) const {
    auto it = by_topic_.find(topic);
    return it == by_topic_.end() ? nullptr : it->second.get();
}

std::string_view retained_store::literal_prefix(std::string_view filter) {
    const size_t w = filter.find_first_of("+#");
    if (w == std::string_view::npos) return filter;
    std::string_view prefix = filter.substr(0, w);
    if (filter[w] == '#' && !prefix.empty()) prefix.remove_suffix(1);
    return prefix;
}

} // namespace ringmq::broker
