#pragma once
// Whether a sleeping shard waits for a batch of completions (node.wake_batch_us and node.wake_batch) or wakes at the
// first. A batched wait arms a timer for the minimum wait, and where the first completion comes later than that the
// timer runs out for nothing: on a virtual machine arming and firing one costs about 5 us a sleep, 15-20% of what a
// message costs at 5k msg/s, with no batch to show for it. So the shard batches only while its first completion has
// mostly come within the minimum wait, which both kinds of sleep show: a plain one by how long it lasted, a batched
// one by whether it ended within the minimum wait (its first completion then came inside it) or past it (the timer
// had run out before any came). With node.wake_batch_by_cpu the epochs of idle_poll_rules have the last word
// (idle_poll_rules::batch_sleep). Owned by a shard and used only on its thread (README, "Batched wake-ups").
#include <algorithm>
#include <cstdint>

namespace ringmq::broker {

class wake_batch_rule {
public:
    // A batched sleep that ends within slack_ns() past the minimum wait is taken for one that the timer ended, with
    // its first completion inside the wait: the timer's own lateness on a busy or virtual host (50 us, Linux's default
    // timer slack), and a wake-up delayed by other threads, which grows with the wait it follows.
    static constexpr uint64_t min_timer_slack_ns = 50'000;

    explicit wake_batch_rule(uint32_t min_wait_us)
        : min_wait_ns_(uint64_t{min_wait_us} * 1000), slack_ns_(std::max(min_timer_slack_ns, min_wait_ns_ / 4)) {}

    uint64_t slack_ns() const { return slack_ns_; }

    // Whether the next sleep should wait for a batch.
    bool batch() const { return min_wait_ns_ != 0 && within_avg_ >= half; }
    // A sleep that lasted slept_ns, batched or not, and ended with `completions` to reap; only sleeps that went to the
    // kernel to wait. A batched sleep that brought two or more had company whenever it ended. `packets_received` is
    // the shard's total so far: what it received since the last sleep's wake-up is counted to that sleep (nothing is
    // handled while the thread waits, so the total is the same as when this sleep began).
    void slept(uint64_t slept_ns, bool batched, unsigned completions, uint64_t packets_received) {
        const bool within =
            batched ? slept_ns <= min_wait_ns_ + slack_ns_ || completions >= 2 : slept_ns <= min_wait_ns_;
        // A running average, weight 1/8 for the newest: a change of traffic shows within a few dozen sleeps.
        within_avg_ = within_avg_ - within_avg_ / 8 + (within ? one / 8 : 0);
        ++(batched ? batched_ : plain_);
        (batched ? batched_completions_ : plain_completions_) += completions;
        if (batched_ + plain_ > 1)
            (last_batched_ ? batched_packets_ : plain_packets_) += packets_received - packets_at_wake_;
        packets_at_wake_ = packets_received;
        last_batched_ = batched;
    }
    uint64_t batched_packets() const { return batched_packets_; }
    uint64_t plain_packets() const { return plain_packets_; }
    uint64_t batched() const { return batched_; }
    uint64_t plain() const { return plain_; }
    uint64_t batched_completions() const { return batched_completions_; }
    uint64_t plain_completions() const { return plain_completions_; }

private:
    static constexpr uint32_t one = 1u << 16;
    static constexpr uint32_t half = one / 2;
    uint64_t min_wait_ns_;
    uint64_t slack_ns_;
    uint32_t within_avg_ = 0; // share of recent sleeps whose first completion came within the minimum wait
    uint64_t batched_ = 0, plain_ = 0;
    uint64_t batched_completions_ = 0, plain_completions_ = 0;
    uint64_t batched_packets_ = 0, plain_packets_ = 0;
    uint64_t packets_at_wake_ = 0; // the shard's packets received when it last woke from a sleep
    bool last_batched_ = false;
};

} // namespace ringmq::broker
