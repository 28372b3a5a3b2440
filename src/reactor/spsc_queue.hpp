#pragma once
// Bounded single-producer/single-consumer ring of trivially copyable items. One per ordered pair of shards: the
// producer shard owns the push side, the consumer shard the drain side. Pushes are staged and made visible by
// publish(), so a producer pays one release store per batch, not per item. Indices live on separate cache lines.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

namespace ringmq::reactor {

template <typename T> class spsc_queue {
    static_assert(std::is_trivially_copyable_v<T>);

public:
    explicit spsc_queue(uint32_t capacity_pow2)
        // Not zeroed: an item is read only after its producer wrote it, and untouched pages cost no memory (a queue
        // between two shards that never talk stays virtual).
        : mask_(capacity_pow2 - 1), items_(std::make_unique_for_overwrite<T[]>(capacity_pow2)) {}

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
    bool empty_for_consumer() const {
        return tail_.load(std::memory_order_seq_cst) == head_.load(std::memory_order_relaxed);
    }
    // Calls f(item) for up to max items; returns how many were taken.
    template <typename F> size_t drain(F&& f, size_t max) {
        uint32_t head = head_.load(std::memory_order_relaxed);
        uint32_t tail = tail_.load(std::memory_order_acquire);
        size_t n = 0;
        while (head != tail && n < max) {
            T v = items_[head & mask_];
            ++head;
            ++n;
            f(v);
        }
        head_.store(head, std::memory_order_release);
        return n;
    }

private:
    struct producer_state {
        uint32_t local_tail = 0;
        uint32_t published = 0;
        uint32_t cached_head = 0;
    };
    alignas(64) std::atomic<uint32_t> head_{0};
    alignas(64) std::atomic<uint32_t> tail_{0};
    alignas(64) producer_state p_;
    alignas(64) const uint32_t mask_;
    std::unique_ptr<T[]> items_;
};

} // namespace ringmq::reactor
