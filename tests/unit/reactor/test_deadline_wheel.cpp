#include "reactor/deadline_wheel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

namespace ringmq::reactor::test {
namespace {

using entry = deadline_wheel::entry;

std::vector<entry> advance(deadline_wheel& w, int64_t now) {
    std::vector<entry> fired;
    w.advance(now, [&](const entry& e) { fired.push_back(e); });
    return fired;
}

TEST(DeadlineWheel, FiresAtItsDeadlineAndNotBefore) {
    deadline_wheel w(100, 16);
    w.start(0);
    w.schedule(7, 1000);
    EXPECT_EQ(w.size(), 1u);
    EXPECT_TRUE(advance(w, 999).empty());
    const auto f = advance(w, 1000);
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].id, 7u);
    EXPECT_EQ(f[0].at_ms, 1000);
    EXPECT_EQ(w.size(), 0u);
    EXPECT_TRUE(advance(w, 5000).empty());
}

TEST(DeadlineWheel, RoundsUpToTheNextTick) {
    deadline_wheel w(100, 16);
    w.start(0);
    w.schedule(1, 1050);
    EXPECT_TRUE(advance(w, 1099).empty());
    EXPECT_EQ(advance(w, 1100).size(), 1u);
}

TEST(DeadlineWheel, APastDeadlineFiresOnTheNextTick) {
    deadline_wheel w(100, 16);
    w.start(5000);
    w.schedule(2, 100);
    EXPECT_TRUE(advance(w, 5099).empty());
    const auto f = advance(w, 5100);
    ASSERT_EQ(f.size(), 1u);
    EXPECT_EQ(f[0].at_ms, 100);
}

TEST(DeadlineWheel, ADeadlineBeyondTheHorizonFiresEarlyAndIsPutBack) {
    deadline_wheel w(100, 8); // 800 ms horizon
    w.start(0);
    w.schedule(3, 5000);
    int early = 0;
    int64_t due_at = -1;
    for (int64_t now = 0; now <= 6000; now += 100) {
        w.advance(now, [&](const entry& e) {
            if (now < e.at_ms) {
                ++early;
                w.schedule(e.id, e.at_ms);
            } else {
                EXPECT_EQ(due_at, -1) << "fired twice";
                due_at = now;
            }
        });
    }
    EXPECT_EQ(due_at, 5000);
    EXPECT_GE(early, 5); // once per horizon on the way
    EXPECT_LE(early, 8);
    EXPECT_EQ(w.size(), 0u);
}

TEST(DeadlineWheel, SlotCountIsRoundedUpAndTheHorizonFollows) {
    deadline_wheel w(10, 5); // becomes 8 slots: 80 ms
    w.start(0);
    w.schedule(1, 1000);
    const auto f = advance(w, 80);
    ASSERT_EQ(f.size(), 1u) << "capped at the horizon, not kept for 1000 ms";
    EXPECT_EQ(f[0].at_ms, 1000);
}

TEST(DeadlineWheel, ALongStallFiresEverythingDueOnceEvenWhenPutBack) {
    deadline_wheel w(100, 8);
    w.start(0);
    for (uint64_t id = 1; id <= 50; ++id)
        w.schedule(id, static_cast<int64_t>(id) * 37);
    std::map<uint64_t, int> seen;
    // 100 horizons later; every entry is due. The owner puts each back far in the future, which must neither be
    // seen again in this call nor loop.
    w.advance(80'000, [&](const entry& e) {
        ++seen[e.id];
        w.schedule(e.id, 1'000'000);
    });
    EXPECT_EQ(seen.size(), 50u);
    for (const auto& [id, n] : seen)
        EXPECT_EQ(n, 1) << id;
    EXPECT_EQ(w.size(), 50u);
    EXPECT_TRUE(advance(w, 80'050).empty());
}

TEST(DeadlineWheel, WhatIsPutBackAfterALongStallFiresOnTimeNotAHorizonLate) {
    deadline_wheel w(100, 8); // 800 ms horizon
    w.start(0);
    for (uint64_t id = 1; id <= 20; ++id)
        w.schedule(id, static_cast<int64_t>(id) * 30);
    // The loop stalls for 10 s; each entry is put back 150 ms after the moment the wheel catches up.
    const int64_t now = 10'000;
    w.advance(now, [&](const entry& e) { w.schedule(e.id, now + 150); });
    EXPECT_EQ(w.size(), 20u);
    EXPECT_TRUE(advance(w, now + 100).empty());
    EXPECT_EQ(advance(w, now + 200).size(), 20u) << "put-back entries must fire at their own deadline";
    EXPECT_EQ(w.size(), 0u);
}

TEST(DeadlineWheel, AStormSlotStillFiresEverythingAfterGivingBackMemory) {
    deadline_wheel w(100, 8);
    w.start(0);
    for (uint64_t id = 1; id <= 10'000; ++id) // more than a slot keeps
        w.schedule(id, 500);
    EXPECT_EQ(advance(w, 500).size(), 10'000u);
    for (uint64_t id = 1; id <= 3; ++id)
        w.schedule(id, 1300);
    EXPECT_EQ(advance(w, 1300).size(), 3u);
}

// An owner that keeps one deadline per id, moves it later on "traffic" and ignores stale entries, the way the
// shard uses the wheel: every id is seen due exactly once, never before its deadline and at most a tick after it.
TEST(DeadlineWheel, RandomisedOwnerSeesEveryDeadlineOnceAndOnTime) {
    constexpr int64_t tick = 50;
    deadline_wheel w(tick, 64); // 3.2 s horizon
    std::mt19937_64 rng(12345);
    std::map<uint64_t, int64_t> deadline; // what the owner considers current
    std::map<uint64_t, int64_t> fired_at;
    int64_t now = 0;
    w.start(now);
    for (uint64_t id = 1; id <= 2000; ++id) {
        const int64_t at = static_cast<int64_t>(rng() % 20'000);
        deadline[id] = at;
        w.schedule(id, at);
    }
    while (now < 30'000) {
        now += static_cast<int64_t>(rng() % 3 == 0 ? rng() % 400 : tick); // steps and the odd stall
        // Some ids see traffic: their deadline moves later without touching the wheel.
        for (int k = 0; k < 5; ++k) {
            const uint64_t id = 1 + rng() % 2000;
            if (fired_at.count(id) || deadline[id] <= now) continue;
            // Capped so that every deadline lies well inside the simulated 30 s.
            deadline[id] = std::max(deadline[id], std::min<int64_t>(deadline[id] + rng() % 5000, 28'000));
        }
        w.advance(now, [&](const entry& e) {
            ASSERT_FALSE(fired_at.count(e.id)) << "id " << e.id << " seen after it was due";
            const int64_t at = deadline[e.id];
            if (now < at) {
                w.schedule(e.id, at);
                return;
            }
            fired_at[e.id] = now;
        });
    }
    ASSERT_EQ(fired_at.size(), 2000u);
    EXPECT_EQ(w.size(), 0u);
    for (const auto& [id, t] : fired_at) {
        EXPECT_GE(t, deadline[id]) << id;
        // Late by at most the step that crossed it plus one tick of rounding.
        EXPECT_LE(t, deadline[id] + 400 + tick) << id;
    }
}

} // namespace
} // namespace ringmq::reactor::test
