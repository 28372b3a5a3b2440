#include "session/session.hpp"

#include "util/assert.hpp"

#include <algorithm>

namespace ringmq::session {

namespace {
// The QoS 0 entry offer() and next_ready() hand out. Callers use it before they make the next call on any session of
// their shard, so one per thread does, instead of 16 bytes in every session.
thread_local outgoing handed_out;
} // namespace

// Thousands of offline sessions are common: keep one in mimalloc's 192-byte size class.
static_assert(sizeof(session) <= 192, "session outgrew the 192-byte size class");

session::session(std::string client_id, bool clean, limits l)
    : client_id_(std::move(client_id)), limits_(l), clean_(clean) {
    if (limits_.max_inflight == 0) limits_.max_inflight = 1;
    if (limits_.max_inflight > 65535) limits_.max_inflight = 65535;
}

void session::mark_pid(uint16_t pid, bool used) {
    if (!pid_bits_) return;
    if (used)
        pid_bits_[pid >> 6] |= uint64_t{1} << (pid & 63);
    else
        pid_bits_[pid >> 6] &= ~(uint64_t{1} << (pid & 63));
}

bool session::pid_in_use(uint16_t pid) const {
    if (pid_bits_) return (pid_bits_[pid >> 6] >> (pid & 63)) & 1;
    const window_view w = window();
    return std::any_of(w.begin(), w.end(), [pid](const outgoing& o) { return o.pid == pid; });
}

void session::assign_pid_checked(outgoing& o) {
    if (inflight_ >= scan_max && !pid_bits_) {
        // The window outgrew a linear scan: from here on its ids are kept in a bitmap. Only then, so that a session
        // allowed a large window but never using it (an idle client) does not carry 8 KiB for it.
        pid_bits_ = std::make_unique<uint64_t[]>(1024);
        for (const outgoing& w : window())
            mark_pid(w.pid, true);
    }
    if (inflight_ == 0) pid_scan_ = 0; // every entry from here on is younger than the rotation
    // The window holds at most 65535 entries, so a free id always exists; ids are reused in rotation.
    for (;;) {
        const uint32_t step = advance_step();
        const uint16_t pid = pid_at(step);
        bool free;
        if (pid_bits_) {
            free = !pid_in_use(pid);
        } else {
            // An id comes round again only after 65535 steps; the front is the oldest entry. Each call moves the
            // steps on by at most 65535, so the front is seen past 65535 long before its age could wrap.
            if (!pid_scan_ && inflight_ != 0) {
                if (step_age(step, entries_.front().pid_step) >= 65535) pid_scan_ = 1;
            }
            free = !pid_scan_ || !pid_in_use(pid);
        }
        if (free) {
            mark_pid(pid, true);
            o.pid = pid;
            o.pid_step = step;
            return;
        }
    }
}

session::offer_result session::offer(message_ref msg, uint8_t qos, bool online, const outgoing** out, bool past_limit,
                                     bool refuse) {
    if (online && direct()) {
        if (const outgoing* o = admit(std::move(msg), qos)) {
            *out = o;
            return offer_result::send;
        }
    }
    const uint64_t bytes = msg->data_size();
    bool burst = false;
    if (!room_for(bytes, past_limit)) {
        burst = past_limit && burst_room(bytes);
        if (!burst && !(qos > 0 && drop_qos0_for(bytes))) {
            if (refuse) return offer_result::refused;
            ++dropped_;
            return offer_result::dropped;
        }
    }
    entries_.push_back(outgoing{std::move(msg), 0, qos, false});
    if (burst) [[unlikely]] {
        entries_.back().burst = true;
        burst_bytes_ += bytes;
    }
    queued_bytes_ += bytes;
    queued_q0_ += qos == 0;
    return offer_result::queued;
}

uint64_t session::requeue_front(std::vector<message_ref>& msgs) {
    size_t keep = 0;
    uint64_t bytes = 0;
    for (size_t i = msgs.size(); i-- > 0;) {
        const uint64_t b = msgs[i]->data_size();
        if ((limits_.max_queued != 0 && queue_len() + keep >= limits_.max_queued) ||
            (limits_.max_queued_bytes != 0 && queued_bytes_ + bytes + b > limits_.max_queued_bytes))
            break;
        ++keep;
        bytes += b;
    }
    const size_t first = msgs.size() - keep;
    for (size_t i = 0; i < keep; ++i)
        entries_.insert(inflight_ + i, outgoing{std::move(msgs[first + i]), 0, 0, false});
    queued_bytes_ += bytes;
    queued_q0_ += static_cast<uint32_t>(keep);
    dropped_ += first;
    return first;
}

bool session::drop_qos0_for(uint64_t bytes) {
    // QoS 1/2 messages must be stored for an offline session [MQTT-3.1.2-5], QoS 0 ones may be: a queue full of QoS 0
    // made the next QoS 1/2 message the one dropped. Room is made only where dropping the queue's QoS 0 messages is
    // enough, so none is dropped for nothing.
    if (queued_q0_ == 0) return false;
    size_t q0 = 0;
    uint64_t q0_bytes = 0;
    for (size_t i = inflight_; i < entries_.size(); ++i)
        if (entries_[i].qos == 0) {
            ++q0;
            q0_bytes += entries_[i].msg->data_size();
        }
    if (q0 == 0 || (limits_.max_queued != 0 && queue_len() - q0 >= limits_.max_queued) ||
        (limits_.max_queued_bytes != 0 && queued_bytes_ - q0_bytes + bytes > limits_.max_queued_bytes))
        return false;
    // The oldest first, until the new message fits.
    for (size_t i = inflight_; i < entries_.size() && !room_for(bytes);) {
        if (entries_[i].qos != 0) {
            ++i;
            continue;
        }
        const uint64_t b = entries_[i].msg->data_size();
        queued_bytes_ -= b;
        if (entries_[i].burst) burst_bytes_ -= b;
        entries_.erase(entries_.begin() + i);
        --queued_q0_;
        ++dropped_;
    }
    return true;
}

const outgoing* session::admit(message_ref&& msg, uint8_t qos) {
    if (qos == 0) {
        handed_out = outgoing{std::move(msg), 0, 0, false};
        return &handed_out;
    }
    if (inflight_ >= limits_.max_inflight) return nullptr;
    outgoing o{std::move(msg), 0, qos, false};
    assign_pid(o);
    // Ahead of the queue: at the end when nothing is queued (the usual case), else moved in before the queue.
    if (inflight_ == entries_.size())
        entries_.push_back(std::move(o));
    else
        entries_.insert(inflight_, std::move(o));
    return &entries_[inflight_++];
}

const outgoing* session::take_next() {
    outgoing& next = entries_[inflight_];
    queued_bytes_ -= next.msg->data_size();
    if (next.burst) [[unlikely]] {
        burst_bytes_ -= next.msg->data_size();
        next.burst = false;
    }
    if (next.qos == 0) {
        --queued_q0_;
        handed_out = std::move(next);
        entries_.erase(entries_.begin() + inflight_);
        return &handed_out;
    }
    assign_pid(next);
    ++inflight_;
    return &next;
}

size_t session::window_index(uint16_t pid) const {
    if (inflight_ == 0) return 0;
    // Ids are given in rotation (1..65535) in the window's order, so without acknowledgements out of order or ids
    // skipped for being in use, the entry with pid stands as many places behind the front as pid is ids past the
    // front's: one probe instead of a scan of the window (a QoS 2 flow's PUBRECs come for entries behind the released
    // ones that still wait for PUBCOMP).
    const uint16_t f = entries_.front().pid;
    const size_t guess = pid >= f ? size_t{pid} - f : size_t{pid} + 65535 - f;
    if (guess < inflight_ && entries_[guess].pid == pid) return guess;
    // A window past scan_max keeps its ids in a bitmap: an id it does not hold (a stray or repeated ack) is answered
    // without a scan of up to 65535 entries.
    if (pid_bits_ && !pid_in_use(pid)) return inflight_;
    for (size_t i = 0; i < inflight_; ++i)
        if (entries_[i].pid == pid) return i;
    return inflight_;
}

bool session::on_puback_scan(uint16_t pid) {
    const size_t i = window_index(pid);
    if (i == inflight_ || entries_[i].qos != 1) return false;
    mark_pid(pid, false);
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
    --inflight_;
    return true;
}

bool session::on_pubrec(uint16_t pid) {
    const size_t i = window_index(pid);
    if (i == inflight_) return false;
    outgoing& o = entries_[i];
    if (o.qos != 2) return false;
    if (!o.released) {
        if (!qos2_) qos2_ = std::make_unique<qos2_state>();
        qos2_->released.push_back(uint16_t{pid});
    }
    o.released = true;
    o.msg = message_ref(); // the payload is no longer needed: only PUBREL/PUBCOMP remain
    return true;
}

uint64_t session::undelivered() const {
    uint64_t n = queue_len();
    for (const outgoing& o : window())
        if (!o.released) ++n;
    return n;
}

bool session::on_pubcomp(uint16_t pid) {
    const size_t i = window_index(pid);
    if (i == inflight_ || entries_[i].qos != 2 || !entries_[i].released) return false;
    mark_pid(pid, false);
    // Usually the oldest release (PUBCOMPs mostly come in PUBREL order): a pop from the ring's front.
    fifo<uint16_t>& rel = qos2_->released;
    const auto at = std::find(rel.begin(), rel.end(), pid);
    RINGMQ_ASSERT(at != rel.end()); // every released entry's id went in at its first PUBREC
    rel.erase(at);
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(i));
    --inflight_;
    return true;
}

qos2_arrival session::incoming_qos2(uint16_t pid) {
    if (!qos2_) qos2_ = std::make_unique<qos2_state>();
    pid_set& awaiting = qos2_->awaiting_rel;
    if (limits_.max_awaiting_rel != 0 && awaiting.size() >= limits_.max_awaiting_rel)
        return awaiting.contains(pid) ? qos2_arrival::duplicate : qos2_arrival::full;
    return awaiting.insert(pid) ? qos2_arrival::fresh : qos2_arrival::duplicate;
}

bool session::incoming_release(uint16_t pid) { return qos2_ && qos2_->awaiting_rel.erase(pid); }

void session::clear_messages() {
    for (const outgoing& o : window())
        mark_pid(o.pid, false);
    entries_.clear();
    inflight_ = 0;
    queued_bytes_ = 0;
    burst_bytes_ = 0;
    queued_q0_ = 0;
    qos2_.reset();
}

} // namespace ringmq::session
