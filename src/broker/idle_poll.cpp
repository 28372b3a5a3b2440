#include "broker/idle_poll.hpp"

#include <algorithm>

namespace ringmq::broker {

idle_poll_rules::idle_poll_rules(const config::turn_budgets& b) : b_(b) { set_modes(); }

void idle_poll_rules::weigh_batched_sleeps() {
    batch_choice_ = true;
    set_modes();
}

void idle_poll_rules::stop_weighing_batched_sleeps() {
    batch_choice_ = false;
    set_modes();
}

void idle_poll_rules::set_modes() {
    // Without node.idle_poll_by_cpu a shard that polls at all polls in every epoch; without batched sleeps weighed
    // every epoch may batch, and the shard and wake_batch_rule decide.
    const bool poll_choice = b_.idle_poll_us != 0 && b_.idle_poll_by_cpu;
    modes_ = 0;
    for (const bool poll : {true, false}) {
        if (!poll_choice && poll != (b_.idle_poll_us != 0)) continue;
        for (const bool batch : {false, true})
            if (batch_choice_ || batch) mode_[modes_++] = mode{poll, batch};
    }
    cur_ = 0;
    exploring_ = true;
    last_scored_ = false;
}

const idle_poll_rules::mode* idle_poll_rules::find(bool polling, bool batched) const {
    for (unsigned i = 0; i < modes_; ++i)
        if (mode_[i].poll == polling && (!batch_choice_ || mode_[i].batch == batched)) return &mode_[i];
    return nullptr;
}

double idle_poll_rules::score(bool polling, bool batched) const {
    const mode* m = find(polling, batched);
    return m ? m->packets_per_ns : 0;
}

uint64_t idle_poll_rules::epochs(bool polling, bool batched) const {
    const mode* m = find(polling, batched);
    return m ? m->epochs : 0;
}

bool idle_poll_rules::should_poll(uint64_t packets_received) {
    // Packets per wake-up, averaged over the last few (weight 1/4 for the newest), in sixteenths.
    const uint64_t n = packets_received - packets_at_idle_;
    packets_at_idle_ = packets_received;
    batch_avg16_ = batch_avg16_ - batch_avg16_ / 4 + n * 4;
    if (batch_avg16_ < uint64_t{b_.idle_poll_min_batch} * 16) {
        ++n_.sparse;
        return false;
    }
    if (!mode_[cur_].poll) {
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
    // An epoch with little traffic says nothing about any mode (and the first has no start). The mode that runs is
    // scored every epoch, so one odd epoch (the thread preempted, say) moves it by a quarter; the others are scored
    // one epoch in 32, and by half, so a change of traffic shows within a few of those.
    last_scored_ = epochs_++ != 0 && dpackets >= epoch_min_packets && dcpu != 0;
    if (last_scored_) {
        ++mode_[cur_].epochs;
        double& avg = mode_[cur_].packets_per_ns;
        const double now = double(dpackets) / double(dcpu);
        avg = avg == 0 ? now : avg + (now - avg) * (exploring_ ? 0.5 : 0.25);
    }
    const bool was_polling = mode_[cur_].poll;
    unsigned next = modes_;
    for (unsigned i = 0; i < modes_ && next == modes_; ++i)
        if (mode_[i].packets_per_ns == 0) next = i;
    if (next != modes_) {
        // A mode not yet measured goes next, in the order of the list: polling first, since sleeping is what a shard
        // did before it knew.
        exploring_ = true;
    } else {
        unsigned best = 0;
        for (unsigned i = 1; i < modes_; ++i)
            if (mode_[i].packets_per_ns > mode_[best].packets_per_ns) best = i; // a tie keeps the lower latency
        exploring_ = epochs_ % explore_every == 0;
        next = best;
        if (exploring_ && modes_ > 1) {
            // The modes that did less take turns, so that each is measured again every (modes - 1) x 32 epochs, not
            // only the runner-up: a mode that did worst once may be the best after the traffic has changed.
            const unsigned k = explore_turn_++ % (modes_ - 1);
            next = k < best ? k : k + 1;
        }
    }
    cur_ = next;
    // A polling epoch after sleeping ones starts with the found rule's slate clean: its average is from before the
    // sleeping epochs, and an epoch that hardly polls would score sleeping as polling.
    if (mode_[cur_].poll && !was_polling) {
        found_avg_ = 1u << 16;
        since_poll_ = 0;
        probe_gap_ = probe_every;
    }
}

} // namespace ringmq::broker
