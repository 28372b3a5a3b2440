#pragma once
// Whether a shard with nothing to do polls its ring for node.idle_poll_us before it sleeps: the three rules of
// node.idle_poll_min_batch, node.idle_poll_min_found and node.idle_poll_by_cpu, their running averages and counters.
// A poll that finds work saves the wake-up of a sleeping thread; one that waits long, or finds nothing, spends CPU for
// it (README, "Idle polling"). The epochs of node.idle_poll_by_cpu also weigh node.wake_batch_by_cpu's batched sleeps
// against plain ones, as further modes of the same choice: measured one at a time, the two choices would each score
// the other's changes as their own. One per shard, owned by it and used only on its thread; the polling itself (the
// ring) stays in the shard.
#include "config/config.hpp"

#include <cstdint>

namespace ringmq::broker {

class idle_poll_rules {
public:
    // node.idle_poll_by_cpu: epochs long enough to hold thousands of packets on a busy closed loop, short enough that
    // a change of traffic is seen within a second; exploring one epoch in 32 costs 1/32 of what the worse mode loses.
    static constexpr int64_t epoch_ms = 25;
    static constexpr uint64_t explore_every = 32;
    // Fewer packets than this in an epoch score no mode: a few bursts' worth are mostly the CPU of waking up.
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

    explicit idle_poll_rules(const config::turn_budgets& b);

    // Adds batched sleeps (node.wake_batch_us, on a kernel that has the minimum wait) to what the epochs weigh;
    // before the first epoch.
    void weigh_batched_sleeps();
    // The kernel refused the batched wait: the batched modes, which would now sleep plain under their name, go, and
    // the modes left are measured again from the start.
    void stop_weighing_batched_sleeps();

    // Called once per idle point with the shard's packets received so far; true: poll now.
    bool should_poll(uint64_t packets_received);
    // The outcome of a poll should_poll asked for.
    void polled(bool found);
    // Whether the epochs want one ended (cheap: asked every loop turn); never while there is only one mode.
    bool epoch_due(int64_t now_ms) const { return modes_ > 1 && now_ms >= epoch_end_ms_; }
    // Ends an epoch: scores its mode by packets per CPU-nanosecond of the shard's thread (both totals so far) and
    // picks the next epoch's mode.
    void end_epoch(int64_t now_ms, uint64_t cpu_ns, uint64_t packets);

    const counters& count() const { return n_; }
    // Packets per CPU-nanosecond of the mode that polls or not and sleeps batched or not (where batched sleeps are
    // not weighed, `batched` is ignored), running averages; 0 until measured.
    double score(bool polling, bool batched = false) const;
    // Scored epochs that mode ran (the same matching as score).
    uint64_t epochs(bool polling, bool batched = false) const;
    bool weighs_batched_sleeps() const { return batch_choice_; }
    // Whether some mode polls (or sleeps at once) as `polling` says.
    bool has_mode(bool polling) const { return find(polling, false) != nullptr; }
    uint64_t epochs() const { return epochs_; }
    bool polling_epoch() const { return mode_[cur_].poll; }
    // Whether this epoch's sleeps may wait for a batch; true where batched sleeps are not weighed.
    bool batching_epoch() const { return mode_[cur_].batch; }
    // Whether the next sleep waits for a batch, given what wake_batch_rule says (`first_within`). A batching epoch
    // that follows a scored one batches whatever the rule says: otherwise the rule, which judges plain sleeps by
    // their length and batched ones far more leniently (they end a timer's slack past the minimum wait), flips
    // with each plain epoch, and the batching epochs, hardly batching, score plain sleeps under the batched name
    // (808 batched sleeps in 75 k with the minimum wait at 30 us on the 1000 pairs). After an epoch with too little
    // traffic to score, the rule decides: sparse traffic is where a timer runs out for nothing (in the range between
    // too little to score and packets closer together than the wait, the scores keep batching to exploring epochs).
    bool batch_sleep(bool first_within) const {
        return mode_[cur_].batch && (first_within || (batch_choice_ && last_scored_));
    }

private:
    const config::turn_budgets& b_;
    counters n_;
    uint64_t packets_at_idle_ = 0;     // packets received at the last idle point
    uint64_t batch_avg16_ = 0;         // packets per wake-up, running average in sixteenths
    uint32_t found_avg_ = 1u << 16;    // share of recent polls that found work, running average (1 << 16 = all)
    uint32_t since_poll_ = 0;          // idle points since the last poll, while the found rule holds polls back
    uint32_t probe_gap_ = probe_every; // idle points between probes, while the found rule holds polls back
    bool probing_ = false;             // the poll under way is such a probe
    // The modes the epochs choose from, those with the lower latency first (a tie goes to the earlier): polling
    // before sleeping, plain sleeps before batched ones.
    struct mode {
        bool poll = false;
        bool batch = false;
        double packets_per_ns = 0; // running average; 0 until measured
        uint64_t epochs = 0;       // epochs it ran that were scored
    };
    void set_modes();
    const mode* find(bool polling, bool batched) const;
    mode mode_[4];
    unsigned modes_ = 1;
    unsigned cur_ = 0;
    unsigned explore_turn_ = 0; // which of the modes that did less the next exploring epoch runs
    bool batch_choice_ = false; // batched sleeps are weighed
    bool last_scored_ = false;  // the last epoch carried enough packets to be scored
    bool exploring_ = true;     // this epoch runs a mode that did less (or one not yet measured)
    int64_t epoch_end_ms_ = 0;
    uint64_t epochs_ = 0;
    uint64_t epoch_cpu_ns_ = 0;
    uint64_t epoch_packets_ = 0;
};

} // namespace ringmq::broker
