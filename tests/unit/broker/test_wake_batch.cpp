// The rule that decides whether a sleeping shard waits for a batch of completions: only while its first completions
// come within the minimum wait, as plain sleeps show by their length and batched ones by ending within the wait (plus
// the timer's slack) or past it. Driven with made-up sleep lengths.
#include "broker/wake_batch.hpp"

#include <gtest/gtest.h>

namespace ringmq::broker {
namespace {

constexpr uint64_t us = 1000;

TEST(wake_batch_rule, off_without_a_minimum_wait) {
    wake_batch_rule r(0);
    for (int i = 0; i < 50; ++i)
        r.slept(1 * us, false, 1, 0);
    EXPECT_FALSE(r.batch());
}

TEST(wake_batch_rule, starts_plain_and_batches_once_first_completions_come_within_the_wait) {
    wake_batch_rule r(100);
    EXPECT_FALSE(r.batch());
    int plain = 0;
    while (!r.batch() && plain < 50) {
        r.slept(40 * us, false, 1, 0); // the next packet came 40 us into the sleep
        ++plain;
    }
    EXPECT_TRUE(r.batch());
    EXPECT_GE(plain, 4) << "one short sleep must not switch the mode";
    EXPECT_LE(plain, 8);
    EXPECT_EQ(r.plain(), static_cast<uint64_t>(plain));
    // Batched sleeps that the timer ends (with their first completion inside the wait) keep it batching.
    for (int i = 0; i < 100; ++i) {
        r.slept(100 * us + r.slack_ns(), true, 1, 0);
        ASSERT_TRUE(r.batch()) << i;
    }
    EXPECT_EQ(r.batched(), 100u);
}

TEST(wake_batch_rule, goes_back_to_plain_when_the_wait_runs_out_before_any_completion) {
    wake_batch_rule r(100);
    for (int i = 0; i < 30; ++i)
        r.slept(10 * us, false, 1, 0);
    ASSERT_TRUE(r.batch());
    int batched = 0;
    while (r.batch() && batched < 50) {
        r.slept(100 * us + r.slack_ns() + 1, true, 1, 0); // the timer ran out with nothing to wake for
        ++batched;
    }
    EXPECT_FALSE(r.batch());
    EXPECT_LE(batched, 8);
    // Plain sleeps longer than the wait (sparse traffic) keep it plain; a sleep exactly as long as the wait counts as
    // within it.
    for (int i = 0; i < 100; ++i) {
        r.slept(101 * us, false, 1, 0);
        ASSERT_FALSE(r.batch()) << i;
    }
    for (int i = 0; i < 30; ++i)
        r.slept(100 * us, false, 1, 0);
    EXPECT_TRUE(r.batch());
}

TEST(wake_batch_rule, the_timer_slack_grows_with_long_waits) {
    // 50 us for short waits; a quarter of the wait for long ones, where a wake-up delayed by other threads is no sign
    // that the first completion came late.
    EXPECT_EQ(wake_batch_rule(100).slack_ns(), 50 * us);
    EXPECT_EQ(wake_batch_rule(20000).slack_ns(), 5000 * us);
    wake_batch_rule r(20000);
    for (int i = 0; i < 30; ++i)
        r.slept(10 * us, false, 1, 0);
    ASSERT_TRUE(r.batch());
    for (int i = 0; i < 100; ++i) {
        r.slept(24000 * us, true, 1, 0);
        ASSERT_TRUE(r.batch()) << i;
    }
    for (int i = 0; i < 30; ++i)
        r.slept(25001 * us, true, 1, 0);
    EXPECT_FALSE(r.batch());
}

TEST(wake_batch_rule, a_batched_sleep_that_brought_company_counts_as_within_however_long) {
    // A wake-up delayed past the slack (a busy host) with a batch to reap: the batch came, so batching paid.
    wake_batch_rule r(100);
    for (int i = 0; i < 30; ++i)
        r.slept(10 * us, false, 1, 0);
    ASSERT_TRUE(r.batch());
    for (int i = 0; i < 100; ++i) {
        r.slept(400 * us, true, 2, 0);
        ASSERT_TRUE(r.batch()) << i;
    }
    for (int i = 0; i < 30; ++i)
        r.slept(400 * us, true, 1, 0);
    EXPECT_FALSE(r.batch());
}

TEST(wake_batch_rule, a_mix_batches_while_most_first_completions_come_within_the_wait) {
    wake_batch_rule within_most(100), within_few(100);
    for (int i = 0; i < 200; ++i) {
        within_most.slept(i % 4 == 0 ? 500 * us : 20 * us, false, 1, 0); // 3 in 4 within
        within_few.slept(i % 4 == 0 ? 20 * us : 500 * us, false, 1, 0);  // 1 in 4 within
    }
    EXPECT_TRUE(within_most.batch());
    EXPECT_FALSE(within_few.batch());
}

TEST(wake_batch_rule, counts_what_each_kind_of_wake_up_brought) {
    // For the shard's exit line: completions reaped at the wake-up, and packets received until the next sleep, per
    // batched and per plain wake-up.
    wake_batch_rule r(100);
    r.slept(10 * us, false, 1, 99); // received before any sleep: nothing to attribute it to
    r.slept(10 * us, true, 5, 102);
    r.slept(10 * us, true, 3, 142);
    r.slept(10 * us, false, 1, 162);
    EXPECT_EQ(r.plain(), 2u);
    EXPECT_EQ(r.batched(), 2u);
    EXPECT_EQ(r.plain_completions(), 2u);
    EXPECT_EQ(r.batched_completions(), 8u);
    EXPECT_EQ(r.plain_packets(), 3u);
    EXPECT_EQ(r.batched_packets(), 60u);
}

} // namespace
} // namespace ringmq::broker
