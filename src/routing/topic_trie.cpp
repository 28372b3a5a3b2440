#include "routing/topic_trie.hpp"

#include "util/assert.hpp"

#include <algorithm>
#include <utility>

namespace ringmq::routing {

namespace {

// Splits a filter or topic into levels without copying. Every string, even "", has at least one level.
class level_cursor {
public:
    explicit level_cursor(std::string_view s) : rest_(s) {}
    bool next(std::string_view& level) {
        if (done_) return false;
        const size_t slash = rest_.find('/');
        if (slash == std::string_view::npos) {
            level = rest_;
            done_ = true;
        } else {
            level = rest_.substr(0, slash);
            rest_.remove_prefix(slash + 1);
        }
        return true;
    }

private:
    std::string_view rest_;
    bool done_ = false;
};

} // namespace

topic_trie::topic_trie() = default;

topic_trie::~topic_trie() { clear(); }

topic_trie::topic_trie(topic_trie&& other) noexcept
    : root_(std::move(other.root_)), filter_count_(std::exchange(other.filter_count_, 0)),
      subscription_count_(std::exchange(other.subscription_count_, 0)),
      node_count_(std::exchange(other.node_count_, 0)), lower_mask_(other.lower_mask_),
      first_holder_count_(std::exchange(other.first_holder_count_, 0)), sorted_(std::move(other.sorted_)) {
    other.sorted_.clear();
    other.root_ = node{};
    adopt_root_children();
}

topic_trie& topic_trie::operator=(topic_trie&& other) noexcept {
    if (this != &other) {
        clear();
        root_ = std::move(other.root_);
        other.root_ = node{};
        filter_count_ = std::exchange(other.filter_count_, 0);
        subscription_count_ = std::exchange(other.subscription_count_, 0);
        node_count_ = std::exchange(other.node_count_, 0);
        lower_mask_ = other.lower_mask_;
        first_holder_count_ = std::exchange(other.first_holder_count_, 0);
        sorted_ = std::move(other.sorted_);
        other.sorted_.clear();
        adopt_root_children();
    }
    return *this;
}

void topic_trie::adopt_root_children() {
    if (root_.plus) root_.plus->parent = &root_;
    if (root_.hash) root_.hash->parent = &root_;
    if (root_.children)
        for (auto& [level, child] : *root_.children)
            child->parent = &root_;
}

void topic_trie::clear() {
    // Tear down iteratively: the default unique_ptr chain would recurse once per level of the deepest filter.
    std::vector<std::unique_ptr<node>> doomed;
    auto detach_children = [&doomed](node& n) {
        if (n.plus) doomed.push_back(std::move(n.plus));
        if (n.hash) doomed.push_back(std::move(n.hash));
        if (n.children) {
            for (auto& [level, child] : *n.children)
                doomed.push_back(std::move(child));
            n.children.reset();
        }
    };
    detach_children(root_);
    while (!doomed.empty()) {
        std::unique_ptr<node> n = std::move(doomed.back());
        doomed.pop_back();
        detach_children(*n);
    }
    root_ = node{};
    sorted_.clear();
    filter_count_ = 0;
    subscription_count_ = 0;
    node_count_ = 0;
    first_holder_count_ = 0;
}

void topic_trie::set_self(unsigned shard) {
    RINGMQ_ASSERT(shard < 64 && filter_count_ == 0);
    lower_mask_ = (uint64_t{1} << shard) - 1;
}

topic_trie::node* topic_trie::find_node(std::string_view filter) const {
    const node* n = &root_;
    level_cursor levels(filter);
    std::string_view level;
    while (n && levels.next(level)) {
        if (level == "+")
            n = n->plus.get();
        else if (level == "#")
            n = n->hash.get();
        else
            n = n->find_child(level);
    }
    // The trie is reached only through non-const members when a mutation follows; the cast keeps one lookup path.
    return const_cast<node*>(n);
}

topic_trie::node* topic_trie::find_or_create(std::string_view filter) {
    node* n = &root_;
    level_cursor levels(filter);
    std::string_view level;
    while (levels.next(level)) {
        std::unique_ptr<node>* slot;
        if (level == "+") {
            slot = &n->plus;
        } else if (level == "#") {
            slot = &n->hash;
        } else {
            if (!n->children) n->children = std::make_unique<child_map>();
            auto it = n->children->find(level);
            if (it == n->children->end()) it = n->children->emplace(std::string(level), nullptr).first;
            slot = &it->second;
        }
        if (!*slot) {
            *slot = std::make_unique<node>();
            (*slot)->parent = n;
            ++node_count_;
        }
        n = slot->get();
    }
    return n;
}

void topic_trie::prune(node* n, std::string_view filter) {
    // Walk up and peel the filter's levels off from the right: node k from the bottom is reached by level k from the
    // end, so no node has to remember its own key.
    std::string_view rest = filter;
    while (n != &root_ && n->prunable()) {
        const size_t slash = rest.rfind('/');
        const std::string_view level = slash == std::string_view::npos ? rest : rest.substr(slash + 1);
        node* parent = n->parent;
        RINGMQ_DASSERT(parent != nullptr);
        if (level == "+") {
            RINGMQ_DASSERT(parent->plus.get() == n);
            parent->plus.reset();
        } else if (level == "#") {
            RINGMQ_DASSERT(parent->hash.get() == n);
            parent->hash.reset();
        } else {
            RINGMQ_ASSERT(parent->children);
            auto it = parent->children->find(level);
            RINGMQ_ASSERT(it != parent->children->end() && it->second.get() == n);
            parent->children->erase(it);
            if (parent->children->empty()) parent->children.reset();
        }
        --node_count_;
        n = parent;
        rest = slash == std::string_view::npos ? std::string_view{} : rest.substr(0, slash);
    }
}

bool topic_trie::subscribe(std::string_view filter, subscriber_id sub, uint8_t options, bool* filter_became_active) {
    if (filter_became_active) *filter_became_active = false;
    node* n = find_or_create(filter);
    for (subscriber_entry& e : n->locals) {
        if (e.sub == sub) {
            e.options = options;
            return false;
        }
    }
    if (n->locals.empty()) {
        n->filter.assign(filter);
        sorted_.insert(n->filter);
        ++filter_count_;
        if ((n->remote & lower_mask_) == 0) ++first_holder_count_;
        if (filter_became_active) *filter_became_active = true;
    }
    n->locals.push_back(subscriber_entry{sub, options});
    ++subscription_count_;
    return true;
}

bool topic_trie::unsubscribe(std::string_view filter, subscriber_id sub, bool* filter_became_idle) {
    if (filter_became_idle) *filter_became_idle = false;
    node* n = find_node(filter);
    if (!n) return false;
    auto it =
        std::find_if(n->locals.begin(), n->locals.end(), [sub](const subscriber_entry& e) { return e.sub == sub; });
    if (it == n->locals.end()) return false;
    // Delivery order across subscribers of one filter is not specified, so swap-and-pop instead of shifting.
    *it = n->locals.back();
    n->locals.pop_back();
    --subscription_count_;
    if (n->locals.empty()) {
        --filter_count_;
        sorted_.erase(n->filter);
        if ((n->remote & lower_mask_) == 0) --first_holder_count_;
        if (filter_became_idle) *filter_became_idle = true;
        // Release the memory too: a filter churned by many sessions would otherwise keep its peak capacity forever.
        std::vector<subscriber_entry>().swap(n->locals);
        std::string().swap(n->filter);
        prune(n, filter);
    }
    return true;
}

void topic_trie::add_remote(std::string_view filter, unsigned shard) {
    RINGMQ_ASSERT(shard < 64);
    node* n = find_or_create(filter);
    const uint64_t bit = uint64_t{1} << shard;
    if (!n->locals.empty() && (bit & lower_mask_) && (n->remote & lower_mask_) == 0) --first_holder_count_;
    n->remote |= bit;
}

void topic_trie::remove_remote(std::string_view filter, unsigned shard) {
    RINGMQ_ASSERT(shard < 64);
    node* n = find_node(filter);
    if (!n) return;
    const uint64_t bit = uint64_t{1} << shard;
    if (!n->locals.empty() && (n->remote & bit & lower_mask_) && (n->remote & ~bit & lower_mask_) == 0)
        ++first_holder_count_;
    n->remote &= ~bit;
    prune(n, filter);
}

bool topic_trie::local_filters_after(std::string_view after, size_t max_rows, size_t max_bytes,
                                     std::vector<std::string>& out) const {
    auto it = sorted_.upper_bound(after);
    for (size_t bytes = 0; it != sorted_.end() && max_rows > 0 && bytes < max_bytes; ++it, --max_rows) {
        out.emplace_back(*it);
        bytes += it->size();
    }
    return it == sorted_.end();
}

bool topic_trie::has_local(std::string_view filter) const {
    const node* n = find_node(filter);
    return n && !n->locals.empty();
}

uint64_t topic_trie::remote_mask(std::string_view filter) const {
    const node* n = find_node(filter);
    return n ? n->remote : 0;
}

size_t topic_trie::remote_matches(std::string_view topic, unsigned shard) const {
    remote_counter c{uint64_t{1} << shard};
    match(topic, c);
    return c.n;
}

} // namespace ringmq::routing
