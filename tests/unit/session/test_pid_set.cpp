#include "session/pid_set.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <set>

namespace ringmq::session {
namespace {

// Applies one operation to the set and to the model and compares the answers and the membership of the id.
void step(pid_set& s, std::set<uint16_t>& model, bool insert, uint16_t pid) {
    if (insert) {
        ASSERT_EQ(s.insert(pid), model.insert(pid).second) << "insert " << pid;
    } else {
        ASSERT_EQ(s.erase(pid), model.erase(pid) != 0) << "erase " << pid;
    }
    ASSERT_EQ(s.size(), model.size());
    ASSERT_EQ(s.contains(pid), model.count(pid) != 0) << pid;
}

void expect_same(const pid_set& s, const std::set<uint16_t>& model) {
    size_t found = 0;
    for (uint32_t pid = 1; pid <= 65535; ++pid) {
        const bool in = s.contains(static_cast<uint16_t>(pid));
        ASSERT_EQ(in, model.count(static_cast<uint16_t>(pid)) != 0) << pid;
        found += in;
    }
    EXPECT_EQ(found, s.size());
}

TEST(PidSet, RandomOperationsMatchAModel) {
    // Ids drawn from a narrow range collide in the table's low bits and make long probe runs, whose deletions must
    // shift the right entries back; wide ranges exercise growing and shrinking.
    for (uint32_t range : {40u, 300u, 5000u, 65535u}) {
        std::mt19937 rng(range);
        pid_set s;
        std::set<uint16_t> model;
        for (int i = 0; i < 60000; ++i) {
            // Phases that mostly insert, then mostly erase, so that the table grows and shrinks repeatedly.
            const bool filling = (i / 5000) % 2 == 0;
            const bool insert = std::uniform_int_distribution<int>(0, 99)(rng) < (filling ? 75 : 25);
            uint16_t pid = static_cast<uint16_t>(std::uniform_int_distribution<uint32_t>(1, range)(rng));
            // Colliding ids: the same low bits, different high ones.
            if (range == 65535 && i % 3 == 0) pid = static_cast<uint16_t>((pid & 0xF) | (pid & 0x700) << 5 | 1);
            step(s, model, insert, pid);
            if (HasFatalFailure()) return;
        }
        expect_same(s, model);
    }
}

TEST(PidSet, ARotatingWindowStaysSmall) {
    // A client's ids in rotation, 64 awaiting release at a time, across the wrap from 65535 to 1.
    pid_set s;
    std::set<uint16_t> model;
    uint32_t next = 65000;
    auto id = [](uint32_t k) { return static_cast<uint16_t>(k % 65535 + 1); };
    for (int i = 0; i < 64; ++i)
        step(s, model, true, id(next++));
    for (int i = 0; i < 3000; ++i) {
        step(s, model, false, id(next - 64));
        step(s, model, true, id(next++));
        if (HasFatalFailure()) return;
    }
    EXPECT_EQ(s.size(), 64u);
    EXPECT_LE(s.capacity(), 256u);
    expect_same(s, model);
}

TEST(PidSet, HoldsEveryIdAndGivesTheMemoryBack) {
    pid_set s;
    for (uint32_t pid = 65535; pid >= 1; --pid)
        ASSERT_TRUE(s.insert(static_cast<uint16_t>(pid)));
    EXPECT_EQ(s.size(), 65535u);
    EXPECT_FALSE(s.insert(1));
    EXPECT_FALSE(s.insert(65535));
    EXPECT_FALSE(s.contains(0));
    EXPECT_FALSE(s.erase(0));
    for (uint32_t pid = 1; pid <= 65535; ++pid)
        ASSERT_TRUE(s.contains(static_cast<uint16_t>(pid))) << pid;
    for (uint32_t pid = 1; pid <= 65530; ++pid)
        ASSERT_TRUE(s.erase(static_cast<uint16_t>(pid))) << pid;
    EXPECT_EQ(s.size(), 5u);
    EXPECT_LE(s.capacity(), 256u) << "the table shrinks when most of it is free";
    for (uint32_t pid = 65531; pid <= 65535; ++pid)
        EXPECT_TRUE(s.contains(static_cast<uint16_t>(pid))) << pid;
    EXPECT_FALSE(s.contains(7));
}

} // namespace
} // namespace ringmq::session
