#include "broker/idle_poll.hpp"

#include <algorithm>

namespace ringmq::broker {

bool idle_poll_rules::should_poll(uint64_t packets_received) {
    // Packets per wake-up, averaged over the last few (weight 1/4 for the newest), in sixteenths.
    const uint64_t n = packets_received - packets_at_idle_;
    packets_at_idle_ = packets_received;
    batch_avg16_ = batch_avg16_ - batch_avg16_ / 4 + n * 4;
    if (batch_avg16_ < uint64_t{b_.idle_poll_min_batch} * 16) {
        ++n_.sparse;
        return false;
    }
    if (!poll_epoch_) {
        ++n_.sleeping_epochs;
        return false;
    }
    // Polls that time out cost their whole length and save nothing; below the share asked for, poll only now and then
    // so the average can tell when the traffic changes.
    if (uint64_t{found_avg_} * 100 >= uint64_t{b_.idle_poll_min_found} << 16) {
        since_poll_ = 0;
        return true;
    }
    if (++since_poll_ >= probe_gap_) {
        since_poll_ = 0;
        probing_ = true;
        return true;
    }
    ++n_.fruitless;
    return false;
}

void idle_poll_rules::polled(bool found) {
    if (found) {
        ++n_.found;
        found_avg_ += ((1u << 16) - found_avg_ + 7) >> 3; // rounded up, so it reaches 100%
        probe_gap_ = probe_every;
    } else {
        ++n_.slept;
        found_avg_ -= found_avg_ >> 3;
        if (probing_) probe_gap_ = std::min(probe_gap_ * 2, probe_every_max);
    }
    probing_ = false;
}

void idle_poll_rules::end_epoch(int64_t now_ms, uint64_t cpu_ns, uint64_t packets) {
    const uint64_t dcpu = cpu_ns - epoch_cpu_ns_, dpackets = packets - epoch_packets_;
    epoch_cpu_ns_ = cpu_ns;
    epoch_packets_ = packets;
    epoch_end_ms_ = now_ms + epoch_ms;
    // An epoch with little traffic says nothing about either mode (and the first has no start). The mode that runs
    // is scored every epoch, so one odd epoch (the thread preempted, say) moves it by a quarter; the other is scored
    // one epoch in 32, and by half, so a change of traffic shows within a few of those.
    if (epochs_++ != 0 && dpackets >= epoch_min_packets && dcpu != 0) {
        double& avg = packets_per_ns_[poll_epoch_ ? 1 : 0];
        const double now = double(dpackets) / double(dcpu);
        avg = avg == 0 ? now : avg + (now - avg) * (exploring_ ? 0.5 : 0.25);
    }
    const bool was_polling = poll_epoch_;
    if (packets_per_ns_[1] == 0 || packets_per_ns_[0] == 0) {
        // A mode not yet measured goes next; polling first, since sleeping is what a shard did before it knew.
        poll_epoch_ = packets_per_ns_[1] == 0;
        exploring_ = true;
    } else {
        const bool polling_better = packets_per_ns_[1] >= packets_per_ns_[0]; // a tie polls: it is the lower latency
        exploring_ = epochs_ % explore_every == 0;
        poll_epoch_ = exploring_ ? !polling_better : polling_better;
    }
    // A polling epoch after sleeping ones starts with the found rule's slate clean: its average is from before the
    // sleeping epochs, and an epoch that hardly polls would score sleeping as polling.
    if (poll_epoch_ && !was_polling) {
        found_avg_ = 1u << 16;
        since_poll_ = 0;
        probe_gap_ = probe_every;
    }
}

} // namespace ringmq::broker
