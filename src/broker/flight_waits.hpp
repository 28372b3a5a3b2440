#pragma once
// The sends a shard's closed (or taken-over) connections of kept sessions left pending, which their sessions' queues
// wait for (session::wait_flight): when such a send completes, what the socket did not take goes back to the front of
// the session's queue before anything queued behind it goes out (shard::requeue_lost_flight). Owned by a shard, on its
// thread. Entries go in as connections close, each stamped with the shard's monotonic clock, so they stay in order
// of age and the overdue ones lead (pop_overdue). Few and short-lived (a turn or two each): a vector. Slot is the
// shard's session slot type, only compared and handed back here.
#include "util/assert.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace ringmq::broker {

template <typename Slot> class flight_waits {
public:
    explicit flight_waits(int64_t wait_ms) : wait_ms_(wait_ms) {}

    bool empty() const { return w_.empty(); }
    size_t size() const { return w_.size(); }

    // Connection conn_id of the session in slot closed at now_ms with a send pending.
    void add(uint64_t conn_id, Slot* slot, int64_t now_ms) {
        RINGMQ_ASSERT(w_.empty() || w_.back().since_ms <= now_ms); // pop_overdue relies on it
        w_.push_back({conn_id, slot, now_ms});
    }
    // The pending send of connection conn_id has ended: its entry goes, and its slot comes back (nullptr if it had
    // none: it was given up, or its session dropped).
    Slot* take(uint64_t conn_id) {
        const auto it = std::find_if(w_.begin(), w_.end(), [conn_id](const entry& e) { return e.conn_id == conn_id; });
        if (it == w_.end()) return nullptr;
        Slot* slot = it->slot;
        w_.erase(it); // keeps the order
        return slot;
    }
    // Whether another closed connection's send still holds the session's queue.
    bool holds(const Slot* slot) const {
        return std::any_of(w_.begin(), w_.end(), [slot](const entry& e) { return e.slot == slot; });
    }
    // Takes out the entries that have waited wait_ms or longer by now_ms, oldest first, calling give_up(slot) for each
    // once it is out (so that holds() sees only the others).
    template <typename F> size_t pop_overdue(int64_t now_ms, F&& give_up) {
        size_t n = 0;
        while (!w_.empty() && w_.front().since_ms + wait_ms_ <= now_ms) {
            Slot* slot = w_.front().slot;
            w_.erase(w_.begin());
            give_up(*slot);
            ++n;
        }
        return n;
    }
    // The session is dropped: its pending sends' leftovers have nowhere to go.
    void forget(const Slot* slot) {
        if (!w_.empty()) std::erase_if(w_, [slot](const entry& e) { return e.slot == slot; });
    }
    void clear() { w_.clear(); }

private:
    struct entry {
        uint64_t conn_id;
        Slot* slot;
        int64_t since_ms;
    };
    std::vector<entry> w_;
    int64_t wait_ms_;
};

} // namespace ringmq::broker
