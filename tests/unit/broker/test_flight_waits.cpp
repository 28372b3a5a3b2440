// The bookkeeping of the sends that closed connections of kept sessions left pending (shard::lost_flights_): which
// session a completed send frees, whether another send still holds a session's queue, and which waits are given up
// when, driven here with made-up connection ids, slots and times (no send the kernel never ends is needed).
#include "broker/flight_waits.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace ringmq::broker {
namespace {

struct fake_slot {
    int id;
};

TEST(flight_waits, a_completed_send_frees_its_own_session_only) {
    fake_slot a{1}, b{2};
    flight_waits<fake_slot> w(2000);
    w.add(10, &a, 100);
    w.add(11, &b, 100);
    EXPECT_EQ(w.take(99), nullptr); // a send of a connection that left nothing pending
    EXPECT_EQ(w.take(11), &b);
    EXPECT_FALSE(w.holds(&b));
    EXPECT_TRUE(w.holds(&a));
    EXPECT_EQ(w.take(11), nullptr); // only once
    EXPECT_EQ(w.take(10), &a);
    EXPECT_TRUE(w.empty());
}

TEST(flight_waits, a_session_closed_twice_with_sends_pending_waits_for_both) {
    fake_slot a{1};
    flight_waits<fake_slot> w(2000);
    w.add(10, &a, 100);
    w.add(12, &a, 150);
    EXPECT_EQ(w.take(12), &a); // the later one ends first
    EXPECT_TRUE(w.holds(&a));
    EXPECT_EQ(w.take(10), &a);
    EXPECT_FALSE(w.holds(&a));
}

TEST(flight_waits, overdue_waits_are_given_up_oldest_first_and_only_those) {
    fake_slot a{1}, b{2}, c{3};
    flight_waits<fake_slot> w(2000);
    w.add(10, &a, 100);
    w.add(11, &b, 150);
    w.add(12, &c, 300);
    w.add(13, &a, 300);
    std::vector<int> given_up;
    const auto give_up = [&given_up](fake_slot& s) { given_up.push_back(s.id); };
    EXPECT_EQ(w.pop_overdue(2099, give_up), 0u); // 1999 ms is not 2000
    EXPECT_EQ(w.take(11), &b);                   // b's send ended in between: out of the middle
    EXPECT_EQ(w.pop_overdue(2100, give_up), 1u);
    EXPECT_EQ(given_up, (std::vector<int>{1}));
    EXPECT_TRUE(w.holds(&a)); // its second close still holds it
    EXPECT_EQ(w.pop_overdue(2299, give_up), 0u);
    EXPECT_EQ(w.pop_overdue(5000, give_up), 2u);
    EXPECT_EQ(given_up, (std::vector<int>{1, 3, 1}));
    EXPECT_TRUE(w.empty());
    EXPECT_EQ(w.take(12), nullptr); // a send that ends after its wait was given up finds nothing to do
}

TEST(flight_waits, the_callback_sees_only_the_waits_still_held) {
    fake_slot a{1};
    flight_waits<fake_slot> w(50);
    w.add(10, &a, 0);
    w.add(11, &a, 0);
    std::vector<bool> held;
    w.pop_overdue(50, [&](fake_slot& s) { held.push_back(w.holds(&s)); });
    // The first give-up must not end the session's wait (the second still holds it); the second must.
    EXPECT_EQ(held, (std::vector<bool>{true, false}));
}

TEST(flight_waits, a_dropped_session_forgets_its_waits_and_keeps_the_others_in_order) {
    fake_slot a{1}, b{2};
    flight_waits<fake_slot> w(2000);
    w.add(10, &a, 100);
    w.add(11, &b, 200);
    w.add(12, &a, 300);
    w.add(13, &b, 400);
    w.forget(&a);
    EXPECT_EQ(w.size(), 2u);
    EXPECT_FALSE(w.holds(&a));
    EXPECT_EQ(w.take(10), nullptr);
    std::vector<int> given_up;
    w.pop_overdue(2200, [&](fake_slot& s) { given_up.push_back(s.id); });
    EXPECT_EQ(given_up, (std::vector<int>{2}));
    EXPECT_EQ(w.size(), 1u);
    EXPECT_EQ(w.take(13), &b);
}

TEST(flight_waits_death, entries_out_of_time_order_are_refused) {
    fake_slot a{1};
    flight_waits<fake_slot> w(2000);
    w.add(10, &a, 300);
    EXPECT_DEATH(w.add(11, &a, 299), "since_ms");
}

} // namespace
} // namespace ringmq::broker
