#pragma once
// The per-shard topic filter trie: which local sessions and which other shards are interested in a topic.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ringmq::routing {

using subscriber_id = void*; // opaque, owned by the broker (a session pointer)

// One local subscription on a filter. Stored by value in the trie node that ends the filter.
struct subscriber_entry {
    subscriber_id sub;
    uint8_t options; // bits 0-1 QoS; v5 adds no-local, retain-as-published, retain handling: stored as given
};

// Transparent string hash so the hot path looks children up by std::string_view without building a std::string.
// operator() is deliberately not noexcept: libstdc++ then caches each key's hash in its map node, so a lookup in a
// bucket chain compares cached hashes instead of re-hashing neighbour keys, and a rehash never re-hashes strings.
struct string_hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Per-shard topic filter trie (MQTT 3.1.1 / 5.0 section 4.7 matching). One per MQTT shard, created and owned by that
// shard's broker and never touched by another thread, so nothing in it is synchronised. A node holds the sessions of
// this shard subscribed to the filter ending there, plus a bitmask of other shards with at least one subscriber on
// that filter (kept in step by the broker from their 0->1 / 1->0 broadcasts). Filters must be validated by the
// caller. Callbacks passed to match() / for_each_local_filter() must not modify the trie.
class topic_trie {
public:
    topic_trie();
    ~topic_trie();
    topic_trie(const topic_trie&) = delete;
    topic_trie& operator=(const topic_trie&) = delete;
    topic_trie(topic_trie&& other) noexcept;
    topic_trie& operator=(topic_trie&& other) noexcept;

    // Adds or replaces (same sub, same filter -> options replaced, returns false). Returns true if newly added.
    // *filter_became_active is set true when this filter's local subscriber set went from empty to non-empty.
    bool subscribe(std::string_view filter, subscriber_id sub, uint8_t options, bool* filter_became_active = nullptr);
    // Returns true if it was subscribed. *filter_became_idle = local set went from non-empty to empty.
    // Scans the filter's subscriber vector linearly: fine while a filter has few local subscribers; a filter shared
    // by very many sessions of one shard would want an index (sub -> position) here.
    bool unsubscribe(std::string_view filter, subscriber_id sub, bool* filter_became_idle = nullptr);
    // Another shard gained (add) or lost (remove) its first/last subscriber on this filter: set/clear bit `shard`.
    void add_remote(std::string_view filter, unsigned shard);
    void remove_remote(std::string_view filter, unsigned shard);

    // Calls on_local(const subscriber_entry&, std::string_view matched_filter) for every local subscriber of every
    // filter matching `topic` (a subscriber with two overlapping filters is reported twice; the caller dedups).
    // Returns the OR of the remote-shard bitmasks of all matching filters. Does not allocate. Recursion depth is at
    // most the number of levels of the deepest matching filter, so the broker should cap filter levels.
    template <class F> uint64_t match(std::string_view topic, F&& on_local) const;
    // Nodes match() has visited, all calls together: what a lookup cost where its matches are on other shards (or
    // none), for the shard's bound on a turn's work.
    uint64_t visits() const { return visits_; }

    // Returns whether a filter currently has any local subscriber.
    bool has_local(std::string_view filter) const;
    // Bitmask of other shards interested in exactly this filter (0 if unknown).
    uint64_t remote_mask(std::string_view filter) const;
    // How many filters matching `topic` have subscribers on shard `shard` (by the remote bits), as match() finds them.
    size_t remote_matches(std::string_view topic, unsigned shard) const;
    size_t filter_count() const { return filter_count_; } // filters with >=1 local subscriber
    // The shard this trie belongs to (default 0). Sets which remote bits are "lower" for first_holder_count().
    void set_self(unsigned shard);
    // Filters with a local subscriber that no lower-numbered shard also has (by the remote bits): summed over the
    // shards, the node's number of distinct routes, without listing them. Kept as subscriptions and remote bits move.
    size_t first_holder_count() const { return first_holder_count_; }
    size_t subscription_count() const { return subscription_count_; } // (sub, filter) pairs held locally
    size_t node_count() const { return node_count_; }                 // nodes below the root; 0 once all is pruned
    bool empty() const { return node_count_ == 0; }

    // Visit every filter that has local subscribers: f(std::string_view filter, size_t n_local).
    template <class F> void for_each_local_filter(F&& f) const;

    // The node's route listing, one chunk per call: appends the filters with a local subscriber that sort (bytewise)
    // after `after` ("" for the first, as no filter is empty), in order, until `max_rows` or `max_bytes` of them;
    // returns true when none is left after them. A listing that goes on from the last key it got never lists a filter
    // twice or skips one that stayed subscribed, however the trie changes between its chunks.
    bool local_filters_after(std::string_view after, size_t max_rows, size_t max_bytes,
                             std::vector<std::string>& out) const;

    // Drops every subscription and remote bit.
    void clear();

private:
    struct node;
    using child_map = std::unordered_map<std::string, std::unique_ptr<node>, string_hash, std::equal_to<>>;

    struct node {
        node* parent = nullptr;
        // Allocated on first exact child: most nodes of a large trie are leaves and an empty map costs 56 bytes.
        std::unique_ptr<child_map> children;
        // Wildcard children live outside the map so matching never hashes "+" or "#".
        std::unique_ptr<node> plus;
        std::unique_ptr<node> hash;
        std::vector<subscriber_entry> locals;
        uint64_t remote = 0;
        // The full filter text, kept only while locals is non-empty: match() hands it to the callback without
        // rebuilding it, and intermediate nodes (often as many as leaves) do not pay for it.
        std::string filter;

        const node* find_child(std::string_view level) const {
            if (!children) return nullptr;
            auto it = children->find(level);
            return it == children->end() ? nullptr : it->second.get();
        }
        bool prunable() const {
            return locals.empty() && remote == 0 && !plus && !hash && (!children || children->empty());
        }
    };

    node* find_node(std::string_view filter) const;
    node* find_or_create(std::string_view filter);
    // Walks up from n (the node ending `filter`) removing nodes that no longer carry anything.
    void prune(node* n, std::string_view filter);

    // Levels are short: a plain loop beats memchr's call and set-up cost here.
    static size_t find_slash(std::string_view s) {
        for (size_t i = 0; i < s.size(); ++i)
            if (s[i] == '/') return i;
        return std::string_view::npos;
    }

    static void report(const node& n, uint64_t& mask, auto& on_local) {
        mask |= n.remote;
        for (const subscriber_entry& e : n.locals)
            on_local(e, std::string_view(n.filter));
    }
    // remote_matches' walk: counts the matching nodes with one shard's bit instead of reporting local subscribers.
    struct remote_counter {
        uint64_t bit;
        size_t n = 0;
    };
    static void report(const node& n, uint64_t& mask, remote_counter& c) {
        mask |= n.remote;
        if (n.remote & c.bit) ++c.n;
    }

    // Matches the levels still in `rest` (`done` = no level left) below n. Descends the exact child in a loop and
    // recurses only into '+', so the stack grows with the number of '+' branches taken, not with topic length.
    template <class F>
    static void match_from(const node* n, std::string_view rest, bool done, uint64_t& mask, uint64_t& visits,
                           F& on_local) {
        for (;;) {
            ++visits;
            if (n->hash) report(*n->hash, mask, on_local); // '#' also matches the parent level itself
            if (done) {
                report(*n, mask, on_local);
                return;
            }
            std::string_view level = rest;
            const size_t slash = find_slash(rest);
            if (slash == std::string_view::npos) {
                done = true;
                rest = {};
            } else {
                level = rest.substr(0, slash);
                rest.remove_prefix(slash + 1);
            }
            if (n->plus) match_from(n->plus.get(), rest, done, mask, visits, on_local);
            const node* exact = n->find_child(level);
            if (!exact) return;
            n = exact;
        }
    }

    // Re-points the root's direct children at root_ after the root was moved into this object.
    void adopt_root_children();

    node root_; // by value: the root never has a parent, filter or locals, and match() saves an indirection
    mutable uint64_t visits_ = 0;

    size_t filter_count_ = 0;
    size_t subscription_count_ = 0;
    size_t node_count_ = 0;
    uint64_t lower_mask_ = 0; // remote bits of the shards numbered below this one
    size_t first_holder_count_ = 0;
    // The filters with a local subscriber, sorted, for local_filters_after(): views of their nodes' `filter`, which
    // stays put while the filter has a local subscriber (nodes are never moved). About 50 bytes per filter, paid on
    // subscription changes only, so that the admin API pages routes in a stable order without copying them all.
    std::set<std::string_view> sorted_;
};

template <class F> uint64_t topic_trie::match(std::string_view topic, F&& on_local) const {
    uint64_t mask = 0;
    uint64_t visits = 0; // (a local: the callback's stores would make a member's count go through memory each node)
    const node* root = &root_;
    if (!topic.empty() && topic.front() == '$') {
        // [MQTT-4.7.2-1]: a first-level wildcard never matches a topic starting with '$', so only the exact child
        // of the root can lead anywhere.
        const size_t slash = topic.find('/');
        const std::string_view first = slash == std::string_view::npos ? topic : topic.substr(0, slash);
        const node* child = root->find_child(first);
        if (!child) return 0;
        if (slash == std::string_view::npos)
            match_from(child, {}, true, mask, visits, on_local);
        else
            match_from(child, topic.substr(slash + 1), false, mask, visits, on_local);
        visits_ += visits;
        return mask;
    }
    match_from(root, topic, false, mask, visits, on_local);
    visits_ += visits;
    return mask;
}

template <class F> void topic_trie::for_each_local_filter(F&& f) const {
    // Explicit stack: route listing is not a hot path, and this keeps a pathologically deep trie off the C++ stack.
    std::vector<const node*> stack{&root_};
    while (!stack.empty()) {
        const node* n = stack.back();
        stack.pop_back();
        if (!n->locals.empty()) f(std::string_view(n->filter), n->locals.size());
        if (n->hash) stack.push_back(n->hash.get());
        if (n->plus) stack.push_back(n->plus.get());
        if (n->children)
            for (const auto& [level, child] : *n->children)
                stack.push_back(child.get());
    }
}

} // namespace ringmq::routing
