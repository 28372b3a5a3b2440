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

private:
    struct alignas(64) slot {
        std::atomic<bool> sleeping{false};
        std::atomic<int> ring_fd{-1};
        void* token = nullptr;
        std::function<void()> wake;
    };
    unsigned n_;
    std::vector<std::unique_ptr<spsc_queue<smp_msg>>> queues_;
    std::unique_ptr<slot[]> slots_;
};

} // namespace ringmq::reactor
