#pragma once
// The queue matrix between shards: queue(from, to) for every ordered pair, plus each shard's sleep flag, wake hook
// and, where its ring takes messages, the ring's fd. Created on the main thread before shards start and destroyed after
// they stop; each queue end is used by exactly one shard thread.
#include "reactor/spsc_queue.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace ringmq::reactor {

// One cross-shard message: a kind, a small argument and a pointer whose ownership the kind defines.
struct smp_msg {
    uint32_t kind;
    uint32_t arg;
    void* ptr;
};

class smp {
public:
    smp(unsigned participants, uint32_t queue_capacity);
    // The memory the queues between distinct participants take once each has gone round: (n^2 - n) of them grow as
    // the square of the shard count, so the configuration is weighed against the machine before they are made.
    static uint64_t queues_for(unsigned participants) { return uint64_t{participants} * (participants - 1); }
    static uint64_t bytes_for(unsigned participants, uint32_t queue_capacity) {
        return queues_for(participants) * queue_capacity * sizeof(smp_msg);
    }
    unsigned size() const { return n_; }
    spsc_queue<smp_msg>& queue(unsigned from, unsigned to) { return *queues_[from * n_ + to]; }

    // Sleep protocol: the consumer announces sleep, re-checks its queues, then blocks; a producer that published
    // sees the flag and wakes it. seq_cst on both sides orders the flag against the queue indices.
    void set_sleeping(unsigned shard, bool v) { slots_[shard].sleeping.store(v, std::memory_order_seq_cst); }
    bool has_incoming(unsigned shard);
    // True for the one producer that must wake a sleeping shard: the flag is consumed, so a sleep costs one wake.
    bool claim_wake(unsigned shard) {
        auto& s = slots_[shard];
        return s.sleeping.load(std::memory_order_seq_cst) && s.sleeping.exchange(false);
    }
    void set_waker(unsigned shard, std::function<void()> w) { slots_[shard].wake = std::move(w); }
    void wake(unsigned shard) { slots_[shard].wake(); }

    // A participant whose io_uring accepts messages from other rings announces the ring's fd and the token its
    // wake-up completions carry, once its ring exists; until then (fd -1) it is woken through its waker hook.
    void set_ring(unsigned shard, int fd, void* token) {
        slots_[shard].token = token;
        slots_[shard].ring_fd.store(fd, std::memory_order_release);
    }
    int ring_fd(unsigned shard) const { return slots_[shard].ring_fd.load(std::memory_order_acquire); }
    void* ring_token(unsigned shard) const { return slots_[shard].token; }

    // Flow control by weight (the bytes a message holds, as its producer counts them, plus one for the message
    // itself, so that taking any message shows): the consumer of queue(from, to) adds up what it took, the producer
    // compares that with what it sent (smp_outbox::max_in_flight). Each total has one writer, the consumer, and is
    // written once per drained batch, not per message. A producer that waits for its consumer to catch up asks to be
    // woken once the total reaches a mark (wake_when_taken; 0 = no request): note_taken returns true for the one
    // batch that reaches it, and the consumer then wakes the producer. Both sides store, then load the other's value,
    // all sequentially consistent (see smp_outbox::woken). Every consumer reports every batch it drains.
    bool note_taken(unsigned from, unsigned to, uint64_t messages, uint64_t bytes) {
        auto& c = taken_[from * n_ + to];
        const uint64_t total = c.total.load(std::memory_order_relaxed) + messages + bytes;
        c.total.store(total, std::memory_order_seq_cst);
        uint64_t at = c.wake_at.load(std::memory_order_seq_cst);
        return at != 0 && total >= at && c.wake_at.compare_exchange_strong(at, 0, std::memory_order_seq_cst);
    }
    uint64_t taken(unsigned from, unsigned to) const {
        return taken_[from * n_ + to].total.load(std::memory_order_seq_cst);
    }
    void wake_when_taken(unsigned from, unsigned to, uint64_t at) {
        taken_[from * n_ + to].wake_at.store(at, std::memory_order_seq_cst);
    }

private:
    struct alignas(64) slot {
        std::atomic<bool> sleeping{false};
        std::atomic<int> ring_fd{-1};
        void* token = nullptr;
        std::function<void()> wake;
    };
    struct alignas(64) taken_counter {
        std::atomic<uint64_t> total{0};
        std::atomic<uint64_t> wake_at{0};
    };
    unsigned n_;
    std::vector<std::unique_ptr<spsc_queue<smp_msg>>> queues_;
    std::unique_ptr<slot[]> slots_;
    std::unique_ptr<taken_counter[]> taken_;
};

} // namespace ringmq::reactor
