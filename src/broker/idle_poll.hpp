#pragma once
// Whether a shard with nothing to do polls its ring for node.idle_poll_us before it sleeps: the three rules of
// node.idle_poll_min_batch, node.idle_poll_min_found and node.idle_poll_by_cpu, their running averages and counters.
// A poll that finds work saves the wake-up of a sleeping thread; one that waits long, or finds nothing, spends CPU for
// it (README, "Idle polling"). One per shard, owned by it and used only on its thread; the polling itself (the ring)
// stays in the shard.
#include "config/config.hpp"

#include <cstdint>

namespace ringmq::broker {

class idle_poll_rules {
public:
    // node.idle_poll_by_cpu: epochs long enough to hold thousands of packets on a busy closed loop, short enough that
    // a change of traffic is seen within a second; exploring one epoch in 32 costs 1/32 of what the worse mode loses.
    static constexpr int64_t epoch_ms = 25;
    static constexpr uint64_t explore_every = 32;
    // Fewer packets than this in an epoch score neither mode: a few bursts' worth are mostly the CPU of waking up.
    static constexpr uint64_t epoch_min_packets = 256;
    // node.idle_poll_min_found: while the polls find too little, one idle point in this many polls anyway, so the
    // average sees the traffic change; at 50 us a poll that finds nothing then costs about 3 us per idle point. Each
    // such probe that finds nothing doubles the gap, up to probe_every_max (0.2 us per idle point): on a shard whose
    // polls hardly ever find work (one of two shards, say, sharing its core with the clients) the probes were most of
    // what polling cost. A poll that finds work brings the gap back to probe_every.
    static constexpr uint32_t probe_every = 16;
    static constexpr uint32_t probe_every_max = 256;

    // What the shard logs when it stops.
    struct counters {
        uint64_t found = 0;           // polls that found work before node.idle_poll_us ran out
        uint64_t slept = 0;           // and those that did not, after which the shard slept
        uint64_t sparse = 0;          // idle points where the wake-ups were too sparse to poll after
        uint64_t fruitless = 0;       // idle points where the polls had found too little to poll again
        uint64_t sleeping_epochs = 0; // idle points that slept because the epoch was a sleeping one
    };

    explicit idle_poll_rules(const config::turn_budgets& b) : b_(b) {}

    // Called once per idle point with the shard's packets received so far; true: poll now.
    bool should_poll(uint64_t packets_received);
    // The outcome of a poll should_poll asked for.
    void polled(bool found);
    // Whether node.idle_poll_by_cpu wants an epoch ended (cheap: asked every loop turn).
    bool epoch_due(int64_t now_ms) const { return b_.idle_poll_by_cpu && now_ms >= epoch_end_ms_; }
    // Ends an epoch: scores its mode by packets per CPU-nanosecond of the shard's thread (both totals so far) and
    // picks the next epoch's mode.
    void end_epoch(int64_t now_ms, uint64_t cpu_ns, uint64_t packets);

    const counters& count() const { return n_; }
    // Packets per CPU-nanosecond sleeping ([0]) and polling ([1]), running averages; 0 until measured.
    double score(bool polling) const { return packets_per_ns_[polling ? 1 : 0]; }
    uint64_t epochs() const { return epochs_; }
    bool polling_epoch() const { return poll_epoch_; }

private:
    const config::turn_budgets& b_;
    counters n_;
    uint64_t packets_at_idle_ = 0;     // packets received at the last idle point
    uint64_t batch_avg16_ = 0;         // packets per wake-up, running average in sixteenths
    uint32_t found_avg_ = 1u << 16;    // share of recent polls that found work, running average (1 << 16 = all)
    uint32_t since_poll_ = 0;          // idle points since the last poll, while the found rule holds polls back
    uint32_t probe_gap_ = probe_every; // idle points between probes, while the found rule holds polls back
    bool probing_ = false;             // the poll under way is such a probe
    bool poll_epoch_ = true;           // whether this epoch may poll
    bool exploring_ = true;            // this epoch runs the mode that did less (or one not yet measured)
    int64_t epoch_end_ms_ = 0;
    uint64_t epochs_ = 0;
    uint64_t epoch_cpu_ns_ = 0;
    uint64_t epoch_packets_ = 0;
    double packets_per_ns_[2] = {0, 0};
};

} // namespace ringmq::broker
