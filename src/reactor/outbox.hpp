#pragma once
// The sending side of one participant of the SMP matrix: messages are staged per destination, made visible by
// publish() (at least once a loop turn, one release store per destination for all staged since), and a sleeping
// destination is woken once. A message that does not fit a
// full queue waits in a local backlog (in order) instead of blocking the sender; what a destination has not taken yet
// is weighed (max_in_flight), so that the owner can stop taking new work while one falls behind; and it sleeps, rather
// than going round its loop, until a destination it waits for has caught up (arm_wakes). Owned by one shard (or the
// admin shard) and used only on its thread.
#include "reactor/smp.hpp"
#include "util/assert.hpp"

#include <algorithm>
#include <cstdint>
#include <deque>
#include <vector>

namespace ringmq::reactor {

class smp_outbox {
public:
    // At most 64 participants: destinations are bits of a uint64_t.
    smp_outbox(smp& s, unsigned self)
        : smp_(s), self_(self), backlog_(s.size()), sent_(s.size(), 0), queued_(s.size(), 0),
          wake_at_(s.size(), not_armed) {
        RINGMQ_ASSERT(s.size() <= 64);
    }

    // weight: what the message holds (bytes); the consumer must report the same weight through smp::note_taken. The
    // message itself weighs one more, so that a destination's progress shows on weightless messages too.
    void push(unsigned to, const smp_msg& m, uint64_t weight = 0) {
        auto& q = smp_.queue(self_, to);
        sent_[to] += weight + 1;
        if (!backlog_[to].empty() || !q.try_push(m))
            backlog_[to].push_back(waiting{m, sent_[to], ++backlogged_});
        else
            queued_[to] = sent_[to];
        mask_ |= uint64_t{1} << to;
        flying_ |= uint64_t{1} << to;
        moved_ = true;
    }
    // Publishes what was staged this turn and wakes the destinations that sleep, each through wake(to), once every
    // queue is published: a wake-up that finds no free SQE submits what the owner had queued (a SUBACK), which must
    // find all of its route adds visible, not only those to the destinations before it.
    template <class Wake> void publish(Wake&& wake) {
        uint64_t mask = mask_;
        uint64_t wakes = 0;
        while (mask) {
            const unsigned to = static_cast<unsigned>(__builtin_ctzll(mask));
            mask &= mask - 1;
            auto& q = smp_.queue(self_, to);
            auto& bl = backlog_[to];
            while (!bl.empty() && q.try_push(bl.front().m)) {
                queued_[to] = bl.front().sent_after;
                bl.pop_front();
            }
            q.publish();
            if (smp_.claim_wake(to)) wakes |= uint64_t{1} << to;
            if (bl.empty()) mask_ &= ~(uint64_t{1} << to);
        }
        while (wakes) {
            const unsigned to = static_cast<unsigned>(__builtin_ctzll(wakes));
            wakes &= wakes - 1;
            wake(to);
        }
    }
    // True while a backlog waits for room: the owner must not sleep unless arm_wakes covers it.
    bool pending() const { return mask_ != 0; }
    // The weight pushed to `to` so far: what smp::taken reaches once that destination has taken all of it.
    uint64_t sent(unsigned to) const { return sent_[to]; }

    // How many messages ever had to wait in a backlog: a mark to compare with behind() later.
    uint64_t backlogged() const { return backlogged_; }
    // Whether a message that went to a backlog up to `mark` still waits there, not yet in its queue. One look at the
    // front of each backlog (each is in order).
    bool behind(uint64_t mark) const {
        uint64_t mask = mask_;
        while (mask) {
            const unsigned to = static_cast<unsigned>(__builtin_ctzll(mask));
            mask &= mask - 1;
            if (!backlog_[to].empty() && backlog_[to].front().seq <= mark) return true;
        }
        return false;
    }

    // True if anything was pushed since the last max_in_flight(): until then what is in flight can only shrink.
    bool weight_moved() const { return moved_; }
    // The largest weight pushed to one destination and not taken by it yet (in its queue or in the backlog here).
    // One atomic load per destination that has messages in flight.
    uint64_t max_in_flight() {
        moved_ = false;
        uint64_t worst = 0;
        for_each_in(flying_, [&](unsigned to) {
            const uint64_t w = sent_[to] - smp_.taken(self_, to);
            if (w == 0) flying_ &= ~(uint64_t{1} << to);
            worst = std::max(worst, w);
        });
        return worst;
    }

    // Before the owner sleeps while it holds back (see shard::check_cross_shard) or has a backlog: asks each
    // destination with more than `level` in flight to wake it once it has taken enough to be down to `level`, or has
    // taken all that is in its queue (the rest waits in the backlog here, which only the owner can move); and each
    // other destination with a backlog here, once its queue is empty (the owner then refills it: one wake-up per
    // queueful). Then, after the owner has announced its sleep (smp::set_sleeping), woken() says whether one got
    // there first: the destination's store of what it took and its look at the request, against the request and the
    // look at what was taken here, are sequentially consistent, so a wake-up is never lost between them. Returns
    // false if no destination holds more than `level` (a hold is over: the owner must not sleep on it; with
    // no_level, for a backlog alone, always false).
    // marks: per destination, a position of sent() the owner waits for that destination to take besides (no_mark for
    // none), or empty.
    static constexpr uint64_t no_level = UINT64_MAX;
    static constexpr uint64_t no_mark = UINT64_MAX;
    bool arm_wakes(uint64_t level, const std::vector<uint64_t>& marks = {}) {
        bool over = false;
        for (unsigned to = 0; to < wake_at_.size(); ++to) {
            const uint64_t bit = uint64_t{1} << to;
            uint64_t at = not_armed;
            if ((flying_ | mask_) & bit) {
                if (sent_[to] - smp_.taken(self_, to) > level) {
                    at = std::min(sent_[to] - level, queued_[to]);
                    over = true;
                } else if (mask_ & bit) {
                    at = queued_[to];
                }
            }
            if (to < marks.size() && marks[to] != no_mark) at = std::min(at, marks[to]);
            if (at == wake_at_[to]) continue;
            wake_at_[to] = at;
            smp_.wake_when_taken(self_, to, at == not_armed ? 0 : at);
            if (at != not_armed) armed_ = true;
        }
        return over;
    }
    bool woken() const {
        for (unsigned to = 0; to < wake_at_.size(); ++to)
            if (wake_at_[to] != not_armed && smp_.taken(self_, to) >= wake_at_[to]) return true;
        return false;
    }
    // Withdraws the requests of arm_wakes (a request left behind would only cost a spurious wake-up). Cheap when
    // there are none, so the owner may call it on every turn that neither holds back nor has a backlog.
    void disarm_wakes() {
        if (!armed_) return;
        armed_ = false;
        for (unsigned to = 0; to < wake_at_.size(); ++to)
            if (wake_at_[to] != not_armed) {
                smp_.wake_when_taken(self_, to, 0);
                wake_at_[to] = not_armed;
            }
    }

    // Hands every message still waiting in the backlog to f and forgets it (the owner's end, after the threads
    // stopped: the messages own memory or descriptors).
    template <class F> void drain_backlog(F&& f) {
        for (auto& bl : backlog_) {
            for (const waiting& w : bl)
                f(w.m);
            bl.clear();
        }
        mask_ = 0;
    }

private:
    static constexpr uint64_t not_armed = UINT64_MAX;
    struct waiting {
        smp_msg m;
        uint64_t sent_after; // sent_ once this message was pushed: queued_ when it goes into the queue
        uint64_t seq;        // backlogged_ once it was put here (see behind)
    };
    template <class F> static void for_each_in(uint64_t mask, F&& f) {
        while (mask) {
            const unsigned to = static_cast<unsigned>(__builtin_ctzll(mask));
            mask &= mask - 1;
            f(to);
        }
    }

    smp& smp_;
    unsigned self_;
    std::vector<std::deque<waiting>> backlog_;
    std::vector<uint64_t> sent_;    // weight pushed per destination, ever (compared with smp::taken)
    std::vector<uint64_t> queued_;  // of it, what went into the queue (the rest is in the backlog)
    std::vector<uint64_t> wake_at_; // the last arm_wakes' request per destination
    uint64_t backlogged_ = 0;
    uint64_t mask_ = 0;
    uint64_t flying_ = 0; // destinations that may have messages in flight
    bool moved_ = false;
    bool armed_ = false; // a request of arm_wakes may be standing
};

} // namespace ringmq::reactor
