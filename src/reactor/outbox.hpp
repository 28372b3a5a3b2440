#pragma once
// The sending side of one participant of the SMP matrix: messages are staged per destination, made visible with one
// publish per destination and loop turn, and a sleeping destination is woken once. A message that does not fit a
// full queue waits in a local backlog (in order) instead of blocking the sender. Owned by one shard (or the admin
// shard) and used only on its thread.
#include "reactor/smp.hpp"

#include <cstdint>
#include <deque>
#include <vector>

namespace ringmq::reactor {

class smp_outbox {
public:
    smp_outbox(smp& s, unsigned self) : smp_(s), self_(self), backlog_(s.size()) {}

    void push(unsigned to, const smp_msg& m) {
        auto& q = smp_.queue(self_, to);
        if (!backlog_[to].empty() || !q.try_push(m)) backlog_[to].push_back(m);
        mask_ |= uint64_t{1} << to;
    }
    // Publishes what was staged this turn and wakes the destinations that sleep, each through wake(to).
    template <class Wake> void publish(Wake&& wake) {
        uint64_t mask = mask_;
        while (mask) {
            const unsigned to = static_cast<unsigned>(__builtin_ctzll(mask));
            mask &= mask - 1;
            auto& q = smp_.queue(self_, to);
            auto& bl = backlog_[to];
            while (!bl.empty() && q.try_push(bl.front()))
                bl.pop_front();
            q.publish();
            if (smp_.claim_wake(to)) wake(to);
            if (bl.empty()) mask_ &= ~(uint64_t{1} << to);
        }
    }
    // True while a backlog waits for room: the owner must not sleep.
    bool pending() const { return mask_ != 0; }

private:
    smp& smp_;
    unsigned self_;
    std::vector<std::deque<smp_msg>> backlog_;
    uint64_t mask_ = 0;
};

} // namespace ringmq::reactor
