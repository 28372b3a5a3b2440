#pragma once
// A hashed timing wheel of coarse deadlines (connect timeouts, keepalives), so that a shard with 100k idle
// connections looks only at the few whose deadline came up instead of scanning every connection each tick. An entry
// is an (id, deadline) pair that the owner checks when it fires: the owner keeps the deadline it last scheduled per
// id and ignores entries that no longer match, so pushing a deadline later costs nothing on the hot path (the
// owner re-schedules when the old entry fires) and nothing has to be unlinked on close. Owned by one shard and used
// only on its thread.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ringmq::reactor {

class deadline_wheel {
public:
    struct entry {
        uint64_t id;
        int64_t at_ms; // the deadline asked for (an entry beyond the horizon fires early and is re-scheduled)
    };

    // `slots` is rounded up to a power of two; the horizon is tick_ms * slots.
    deadline_wheel(uint32_t tick_ms, uint32_t slots) : tick_ms_(tick_ms ? tick_ms : 1) {
        uint32_t n = 1;
        while (n < slots)
            n <<= 1;
        slots_.resize(n);
    }

    // Sets the wheel's time without firing anything; call once before the first schedule().
    void start(int64_t now_ms) { cursor_ = tick_of(now_ms) + 1; }

    // The entry fires in the first advance() whose time is at or after at_ms (rounded up to a tick), or at the
    // horizon if that is sooner.
    void schedule(uint64_t id, int64_t at_ms) {
        int64_t t = (at_ms + tick_ms_ - 1) / tick_ms_;
        if (t < cursor_) t = cursor_;
        const int64_t last = cursor_ + static_cast<int64_t>(slots_.size()) - 1;
        if (t > last) t = last;
        slots_[static_cast<size_t>(t) & (slots_.size() - 1)].push_back({id, at_ms});
        ++size_;
    }

    // Calls fn(const entry&) for every entry whose tick has come by now_ms. fn may schedule() again: an entry put
    // in for a time after now_ms is not seen again in this call, one for a time already reached is.
    template <class Fn> void advance(int64_t now_ms, Fn&& fn) {
        const int64_t target = tick_of(now_ms);
        if (target < cursor_) return;
        if (target - cursor_ >= static_cast<int64_t>(slots_.size())) {
            // Fallen behind by a whole horizon (a stalled loop): every entry is due. Take them all out first, so
            // that what fn puts back lands relative to now and not in a slot this call would skip.
            for (auto& slot : slots_) {
                batch_.insert(batch_.end(), slot.begin(), slot.end());
                slot.clear();
            }
            cursor_ = target + 1;
            fire_batch(fn);
            return;
        }
        for (int64_t t = cursor_; t <= target; ++t) {
            auto& slot = slots_[static_cast<size_t>(t) & (slots_.size() - 1)];
            if (slot.empty()) continue;
            batch_.swap(slot);
            cursor_ = t + 1; // what fn schedules lands after this tick
            fire_batch(fn);
            if (slot.empty() && batch_.capacity() <= keep_capacity) slot.swap(batch_); // reuse the slot's memory
        }
        cursor_ = target + 1;
    }

    size_t size() const { return size_; }

private:
    // A slot that held more entries than this (a connect storm) gives its memory back once it has fired. With 4096
    // (64 KiB a slot), the slots a storm had filled kept up to 64 MiB a shard for good (found by a helper's probe of
    // connection churn); 512 keeps at most 8 MiB, and a slot of 100k keepalives spread over a minute (about 340 a
    // tick) still keeps its memory.
    static constexpr size_t keep_capacity = 512;

    int64_t tick_of(int64_t ms) const { return ms / tick_ms_; }

    template <class Fn> void fire_batch(Fn& fn) {
        size_ -= batch_.size();
        for (const entry& e : batch_)
            fn(e);
        if (batch_.capacity() > keep_capacity)
            std::vector<entry>().swap(batch_);
        else
            batch_.clear();
    }

    uint32_t tick_ms_;
    int64_t cursor_ = 0; // the first tick not yet fired
    size_t size_ = 0;
    std::vector<std::vector<entry>> slots_;
    std::vector<entry> batch_;
};

} // namespace ringmq::reactor
