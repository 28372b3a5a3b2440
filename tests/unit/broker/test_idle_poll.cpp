// The rules that decide whether an idle shard polls before it sleeps: packets per wake-up, the share of polls that
// found work, and polling against sleeping (and batched sleeps against plain ones) per CPU-second, driven here with
// made-up packet counts and CPU times.
#include "broker/idle_poll.hpp"

#include <gtest/gtest.h>

#include <vector>

namespace ringmq::broker {
namespace {

config::turn_budgets budgets(uint32_t min_batch, uint32_t min_found, bool by_cpu) {
    config::turn_budgets b;
    b.idle_poll_us = 50;
    b.idle_poll_min_batch = min_batch;
    b.idle_poll_min_found = min_found;
    b.idle_poll_by_cpu = by_cpu;
    return b;
}

TEST(idle_poll_rules, polls_only_while_wake_ups_bring_batches) {
    const auto b = budgets(16, 0, false);
    idle_poll_rules r(b);
    uint64_t packets = 0;
    for (int i = 0; i < 20; ++i)
        EXPECT_FALSE(r.should_poll(packets += 2)) << i;
    EXPECT_EQ(r.count().sparse, 20u);
    int polled = 0;
    for (int i = 0; i < 20; ++i)
        polled += r.should_poll(packets += 64);
    EXPECT_GE(polled, 15); // the average climbs past 16 within a few wake-ups
    for (int i = 0; i < 10; ++i)
        r.should_poll(packets);
    EXPECT_FALSE(r.should_poll(packets)); // and falls back when they bring nothing
}

TEST(idle_poll_rules, fruitless_polls_are_held_back_and_probed) {
    const auto b = budgets(0, 75, false);
    idle_poll_rules r(b);
    int polls = 0;
    std::vector<int> at;
    const int idle_points = 1400;
    for (int i = 0; i < idle_points; ++i) {
        if (!r.should_poll(0)) continue;
        at.push_back(i);
        r.polled(false);
    }
    // Three misses take the average from 100% under 75%, then probes 16 idle points apart, the gap doubling with
    // each probe that finds nothing, up to 256.
    const std::vector<int> gaps_wanted = {1, 1, 16, 32, 64, 128, 256, 256, 256, 256};
    std::vector<int> gaps;
    for (size_t i = 1; i < at.size(); ++i)
        gaps.push_back(at[i] - at[i - 1]);
    EXPECT_EQ(gaps, gaps_wanted);
    polls = int(at.size());
    EXPECT_EQ(r.count().slept, uint64_t(polls));
    EXPECT_EQ(r.count().fruitless, uint64_t(idle_points - polls));
    // A probe that finds work brings the gap back to 16.
    int held = 0;
    while (!r.should_poll(0))
        ++held;
    const int since_last = idle_points - 1 - at.back();
    EXPECT_EQ(held, int(idle_poll_rules::probe_every_max) - since_last - 1);
    r.polled(true);
    held = 0;
    while (!r.should_poll(0))
        ++held;
    EXPECT_EQ(held, int(idle_poll_rules::probe_every) - 1);
    r.polled(true);
    // Polls that find work bring the average back, up to 100%.
    for (int i = 0; i < 64; ++i)
        if (r.should_poll(0)) r.polled(true);
    const auto c100 = budgets(0, 100, false);
    idle_poll_rules full(c100);
    full.polled(false);
    for (int i = 0; i < 200; ++i)
        full.polled(true);
    EXPECT_TRUE(full.should_poll(0));
    EXPECT_TRUE(full.should_poll(0));
}

// Runs one epoch in which the shard handled `packets` for `cpu_ns` of its thread's time.
void epoch(idle_poll_rules& r, int64_t& now, uint64_t& cpu, uint64_t& pk, uint64_t packets, uint64_t cpu_ns) {
    now += idle_poll_rules::epoch_ms;
    cpu += cpu_ns;
    pk += packets;
    ASSERT_TRUE(r.epoch_due(now));
    r.end_epoch(now, cpu, pk);
}

TEST(idle_poll_rules, weighs_polling_against_sleeping_per_cpu) {
    const auto b = budgets(0, 0, true);
    idle_poll_rules r(b);
    int64_t now = 0;
    uint64_t cpu = 0, pk = 0;
    epoch(r, now, cpu, pk, 0, 0);   // the first epoch has no start
    EXPECT_TRUE(r.polling_epoch()); // polling is tried first...
    epoch(r, now, cpu, pk, 10'000, 10'000'000);
    EXPECT_FALSE(r.polling_epoch()); // ...then sleeping
    EXPECT_FALSE(r.should_poll(0));
    EXPECT_EQ(r.count().sleeping_epochs, 1u);
    epoch(r, now, cpu, pk, 10'000, 2'000'000); // sleeping does five times the packets per CPU-second
    int polling_epochs = 0;
    for (int i = 0; i < 64; ++i) {
        const bool polling = r.polling_epoch();
        polling_epochs += polling;
        epoch(r, now, cpu, pk, 10'000, polling ? 10'000'000 : 2'000'000);
    }
    EXPECT_EQ(polling_epochs, 2); // tried one epoch in 32
    EXPECT_GT(r.score(false), r.score(true));
    // The traffic changes: polling now does better, and wins within a few tries.
    int64_t switched_after = -1;
    for (int i = 0; i < 200 && switched_after < 0; ++i) {
        const bool polling = r.polling_epoch();
        epoch(r, now, cpu, pk, 10'000, polling ? 1'000'000 : 2'000'000);
        if (polling && r.polling_epoch()) switched_after = i;
    }
    EXPECT_GE(switched_after, 0);
    EXPECT_LE(switched_after, 3 * int64_t(idle_poll_rules::explore_every));
    // Epochs with little traffic score nothing.
    const double before = r.score(true);
    epoch(r, now, cpu, pk, idle_poll_rules::epoch_min_packets - 1, 1'000'000'000);
    EXPECT_EQ(r.score(true), before);
}

// Epochs with batched sleeps weighed too: four modes, scored in the order of their latency, then the best runs and the
// others take turns in the exploring epochs.
TEST(idle_poll_rules, weighs_batched_sleeps_against_plain_ones_beside_polling) {
    const auto b = budgets(0, 0, true);
    idle_poll_rules r(b);
    EXPECT_TRUE(r.batching_epoch()) << "unweighed, every epoch may batch";
    r.weigh_batched_sleeps();
    ASSERT_TRUE(r.weighs_batched_sleeps());
    int64_t now = 0;
    uint64_t cpu = 0, pk = 0;
    epoch(r, now, cpu, pk, 0, 0);
    // CPU-ns of an epoch of 10'000 packets in the mode that runs: packets per CPU-ms polling 800 and 900, plain sleeps
    // 1000, batched sleeps 10'000 / batched_ms.
    const auto cost = [&](double batched_ms = 8) {
        return r.polling_epoch() ? (r.batching_epoch() ? 11'111'111u : 12'500'000u)
                                 : (r.batching_epoch() ? static_cast<uint64_t>(batched_ms * 1e6) : 10'000'000u);
    };
    std::vector<std::pair<bool, bool>> order;
    for (int i = 0; i < 4; ++i) {
        order.emplace_back(r.polling_epoch(), r.batching_epoch());
        epoch(r, now, cpu, pk, 10'000, cost());
    }
    const std::vector<std::pair<bool, bool>> latency_order{{true, false}, {true, true}, {false, false}, {false, true}};
    EXPECT_EQ(order, latency_order);
    int runs[2][2] = {};
    for (int i = 0; i < 96; ++i) {
        ++runs[r.polling_epoch()][r.batching_epoch()];
        epoch(r, now, cpu, pk, 10'000, cost());
    }
    EXPECT_EQ(runs[0][1], 93) << "the best runs, but for one epoch in 32";
    EXPECT_EQ(runs[0][0], 1);
    EXPECT_EQ(runs[1][0], 1);
    EXPECT_EQ(runs[1][1], 1);
    EXPECT_NEAR(r.score(false, true) * 1e6, 1250, 1);
    EXPECT_NEAR(r.score(false, false) * 1e6, 1000, 1);
    EXPECT_NEAR(r.score(true, true) * 1e6, 900, 1);
    EXPECT_NEAR(r.score(true, false) * 1e6, 800, 1);
    // The timer no longer pays (batched sleeps now 500 per CPU-ms): plain sleeps take over, and the three others, the
    // modes on either side of the best in the list among them, each get exploring epochs.
    int plain_from = -1;
    int after[2][2] = {};
    for (int i = 0; i < 200; ++i) {
        const bool poll = r.polling_epoch(), batch = r.batching_epoch();
        if (plain_from >= 0) ++after[poll][batch];
        epoch(r, now, cpu, pk, 10'000, cost(20));
        if (plain_from < 0 && !r.polling_epoch() && !r.batching_epoch()) plain_from = i;
    }
    EXPECT_GE(plain_from, 0);
    EXPECT_LE(plain_from, 4) << "the mode that runs moves by a quarter of each epoch's figure";
    EXPECT_FALSE(r.batching_epoch());
    EXPECT_FALSE(r.polling_epoch());
    EXPECT_GE(after[1][0], 1);
    EXPECT_GE(after[1][1], 1);
    EXPECT_GE(after[0][1], 1);
    EXPECT_GE(after[0][0], 180);
}

TEST(idle_poll_rules, weighs_batched_sleeps_alone_where_the_shard_does_not_weigh_polling) {
    // node.idle_poll_us = 0: batched sleeps against plain ones, never a polling epoch.
    auto b = budgets(0, 0, true);
    b.idle_poll_us = 0;
    idle_poll_rules no_poll(b);
    EXPECT_FALSE(no_poll.epoch_due(1'000'000)) << "one mode: nothing to weigh";
    no_poll.weigh_batched_sleeps();
    int64_t now = 0;
    uint64_t cpu = 0, pk = 0;
    epoch(no_poll, now, cpu, pk, 0, 0);
    for (int i = 0; i < 40; ++i) {
        EXPECT_FALSE(no_poll.polling_epoch());
        epoch(no_poll, now, cpu, pk, 10'000, no_poll.batching_epoch() ? 20'000'000 : 10'000'000);
    }
    EXPECT_FALSE(no_poll.batching_epoch());
    EXPECT_GT(no_poll.score(false, false), no_poll.score(false, true));
    EXPECT_EQ(no_poll.epochs(false, true), 2u) << "measured once, then tried in the exploring epoch";
    EXPECT_EQ(no_poll.epochs(false, false), 38u);
    EXPECT_FALSE(no_poll.has_mode(true));
    // node.idle_poll_by_cpu = false: the shard polls in every epoch, and the epochs weigh only the sleeps after polls.
    const auto always = budgets(0, 0, false);
    idle_poll_rules polls(always);
    EXPECT_FALSE(polls.epoch_due(1'000'000));
    polls.weigh_batched_sleeps();
    now = 0, cpu = 0, pk = 0;
    epoch(polls, now, cpu, pk, 0, 0);
    for (int i = 0; i < 40; ++i) {
        EXPECT_TRUE(polls.polling_epoch());
        epoch(polls, now, cpu, pk, 10'000, polls.batching_epoch() ? 5'000'000 : 10'000'000);
    }
    EXPECT_TRUE(polls.batching_epoch());
}

TEST(idle_poll_rules, a_busy_batching_epoch_batches_whatever_the_first_completion_rule_says) {
    auto b = budgets(0, 0, true);
    b.idle_poll_us = 0;
    idle_poll_rules unweighed(b);
    EXPECT_TRUE(unweighed.batch_sleep(true));
    EXPECT_FALSE(unweighed.batch_sleep(false)) << "unweighed, the rule decides";
    idle_poll_rules r(b);
    r.weigh_batched_sleeps();
    int64_t now = 0;
    uint64_t cpu = 0, pk = 0;
    epoch(r, now, cpu, pk, 0, 0);
    ASSERT_FALSE(r.batching_epoch()); // plain sleeps are measured first
    EXPECT_FALSE(r.batch_sleep(true));
    epoch(r, now, cpu, pk, 10'000, 10'000'000);
    ASSERT_TRUE(r.batching_epoch());
    EXPECT_TRUE(r.batch_sleep(false)) << "after a scored epoch, so that the batched epoch is scored on batched sleeps";
    EXPECT_TRUE(r.batch_sleep(true));
    // An epoch with too little traffic to score (batched sleeps still unmeasured, so the next one batches too): the
    // rule decides again.
    epoch(r, now, cpu, pk, idle_poll_rules::epoch_min_packets - 1, 10'000'000);
    ASSERT_TRUE(r.batching_epoch());
    EXPECT_FALSE(r.batch_sleep(false));
    EXPECT_TRUE(r.batch_sleep(true));
    // Batched sleeps do worse: in the plain epoch after a scored one nothing batches, whatever the rule says.
    epoch(r, now, cpu, pk, 10'000, 20'000'000);
    epoch(r, now, cpu, pk, 10'000, 20'000'000);
    ASSERT_FALSE(r.batching_epoch());
    EXPECT_FALSE(r.batch_sleep(true));
    EXPECT_FALSE(r.batch_sleep(false));
    // Where batched sleeps are not weighed, epochs that weigh idle polling alone never overrule the rule.
    const auto poll_b = budgets(0, 0, true);
    idle_poll_rules polls(poll_b);
    now = 0, cpu = 0, pk = 0;
    for (int i = 0; i < 4; ++i) {
        epoch(polls, now, cpu, pk, i == 0 ? 0 : 10'000, 10'000'000);
        EXPECT_FALSE(polls.batch_sleep(false)) << i;
        EXPECT_TRUE(polls.batch_sleep(true)) << i;
    }
}

TEST(idle_poll_rules, batched_sleeps_leave_the_epochs_when_the_kernel_refuses_them) {
    auto b = budgets(0, 0, true);
    b.idle_poll_us = 0;
    idle_poll_rules r(b);
    r.weigh_batched_sleeps();
    int64_t now = 0;
    uint64_t cpu = 0, pk = 0;
    epoch(r, now, cpu, pk, 0, 0);
    epoch(r, now, cpu, pk, 10'000, 10'000'000);
    ASSERT_TRUE(r.batch_sleep(false));
    r.stop_weighing_batched_sleeps();
    EXPECT_FALSE(r.weighs_batched_sleeps());
    EXPECT_FALSE(r.epoch_due(now + 1'000'000)) << "plain sleeps alone: nothing left to weigh";
    EXPECT_FALSE(r.batch_sleep(false));
}

TEST(idle_poll_rules, a_polling_epoch_after_sleeping_ones_starts_with_the_found_average_reset) {
    const auto b = budgets(0, 75, true);
    idle_poll_rules r(b);
    int64_t now = 0;
    uint64_t cpu = 0, pk = 0;
    epoch(r, now, cpu, pk, 0, 0);
    for (int i = 0; i < 8; ++i)
        r.polled(false); // the found rule would hold polls back now
    epoch(r, now, cpu, pk, 10'000, 10'000'000);
    ASSERT_FALSE(r.polling_epoch());
    epoch(r, now, cpu, pk, 10'000, 20'000'000); // sleeping did worse
    ASSERT_TRUE(r.polling_epoch());
    EXPECT_TRUE(r.should_poll(0));
}

TEST(idle_poll_rules, no_epochs_without_the_cpu_rule) {
    const auto b = budgets(0, 0, false);
    idle_poll_rules r(b);
    EXPECT_FALSE(r.epoch_due(1'000'000));
    EXPECT_TRUE(r.should_poll(0));
}

} // namespace
} // namespace ringmq::broker
