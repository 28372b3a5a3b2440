#pragma once
// Bounded single-producer/single-consumer ring of trivially copyable items. One per ordered pair of shards: the
// producer shard owns the push side, the consumer shard the drain side. Pushes are staged and made visible by
// publish(), so a producer pays one release store per batch, not per item. Indices live on separate cache lines.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

namespace ringmq::reactor {

template <typename T> class spsc_queue {
    static_assert(std::is_trivially_copyable_v<T>);

public:
    // (`start`: the first item's index, for tests of the indices' wrap-around.)
    explicit spsc_queue(uint32_t capacity_pow2, uint32_t start = 0)
        // Not zeroed: an item is read only after its producer wrote it, and untouched pages cost no memory (a queue
        // between two shards that never talk stays virtual).
        : head_(start), tail_(start), p_{start, start, start}, c_{start, start}, mask_(capacity_pow2 - 1),
          items_(std::make_unique_for_overwrite<T[]>(capacity_pow2)) {}

    uint32_t capacity() const { return mask_ + 1; }

    // Producer side. Returns false when full (the item is not taken).
    bool try_push(const T& v) {
        if (p_.local_tail - p_.cached_head > mask_) {
            p_.cached_head = head_.load(std::memory_order_acquire);
            if (p_.local_tail - p_.cached_head > mask_) return false;
        }
        items_[p_.local_tail & mask_] = v;
        ++p_.local_tail;
        return true;
    }
    // Producer side: makes staged items visible. Returns true if anything new was published.
    bool publish() {
        if (p_.local_tail == p_.published) return false;
        p_.published = p_.local_tail;
        tail_.store(p_.local_tail, std::memory_order_seq_cst);
        return true;
    }

    // Consumer side.
    // What the producer has published so far: a later drain_until may be held to it.
    uint32_t tail_for_consumer() const { return tail_.load(std::memory_order_acquire); }
    bool empty_for_consumer() const {
        return tail_.load(std::memory_order_seq_cst) == head_.load(std::memory_order_relaxed);
    }
    // Calls f(item) for up to max items; returns how many were taken.
    template <typename F> size_t drain(F&& f, size_t max) {
        bool left = false;
        return drain_until(
            std::forward<F>(f), max, [] { return false; }, [](const T&) { return false; }, [](T&) {}, left);
    }
    // As drain, but stops early once cut() says so, before an item from which no item up to the tail seen is one
    // must_take(item) says may not wait (those found, and all before them, are taken): the rest stays for a later
    // drain, in order. Each item is looked at once, when a cut first finds it queued (what was found is kept for
    // later drains, so a backlog taken over many cuts is not looked through again at each): must_take, then, once
    // the items through the last one it picked are taken, ahead(item) on those after it, which may handle an item at
    // once and change it (it is taken later as ahead left it). So an item handled ahead comes after every item before
    // it but those left for later. `left`: whether it stopped with items left for later.
    template <typename F, typename C, typename M, typename A>
    size_t drain_until(F&& f, size_t max, C&& cut, M&& must_take, A&& ahead, bool& left) {
        return drain_until(std::forward<F>(f), max, std::forward<C>(cut), std::forward<M>(must_take),
                           std::forward<A>(ahead), left, tail_for_consumer());
    }
    // As above, taking nothing published after `tail`: a tail_for_consumer() read earlier, and not before one an
    // earlier drain used (the scan would run round the indices).
    template <typename F, typename C, typename M, typename A>
    size_t drain_until(F&& f, size_t max, C&& cut, M&& must_take, A&& ahead, bool& left, const uint32_t tail) {
        uint32_t head = head_.load(std::memory_order_relaxed);
        size_t n = 0;
        bool looked = false;
        left = false;
        uint32_t ahead_from = head;
        // The items before `through` are taken whatever cut() says; those before c_.scanned were looked at.
        // (Brought up to the head at every call: between two calls the head moves at most a queueful. Kept in a local
        // while taking: f is opaque, so the member would be read again for every item.)
        uint32_t through = before(c_.through, head) ? head : c_.through;
        if (before(c_.scanned, head)) c_.scanned = head;
        while (head != tail && n < max) {
            if (!before(head, through) && cut()) {
                if (!looked) {
                    looked = true;
                    if (before(c_.scanned, head)) c_.scanned = head; // (never one taken: it may be gone)
                    for (uint32_t i = c_.scanned; i != tail; ++i)
                        if (must_take(items_[i & mask_])) through = i + 1;
                    ahead_from = before(through, c_.scanned) ? c_.scanned : through;
                }
                if (!before(head, through)) {
                    for (uint32_t i = before(ahead_from, head) ? head : ahead_from; i != tail; ++i) // (none taken)
                        ahead(items_[i & mask_]);
                    c_.scanned = tail;
                    left = true;
                    break;
                }
            }
            T v = items_[head & mask_];
            ++head;
            ++n;
            f(v);
        }
        c_.through = through;
        head_.store(head, std::memory_order_release);
        return n;
    }

private:
    struct producer_state {
        uint32_t local_tail = 0;
        uint32_t published = 0;
        uint32_t cached_head = 0;
    };
    struct consumer_state {
        uint32_t through = 0;
        uint32_t scanned = 0;
    };
    // Whether index a comes before b (indices wrap; the two are never a ring's size apart, at most 2^31).
    static bool before(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }
    alignas(64) std::atomic<uint32_t> head_{0};
    alignas(64) std::atomic<uint32_t> tail_{0};
    alignas(64) producer_state p_;
    alignas(64) consumer_state c_; // drain_until's
    alignas(64) const uint32_t mask_;
    std::unique_ptr<T[]> items_;
};

} // namespace ringmq::reactor
