#pragma once
// The state of one MQTT session, independent of any connection: its subscriptions, the outgoing QoS 1/2 window
// (packet ids, QoS 2 progress), the queue of messages waiting for the window or for the client to come back, and the
// incoming QoS 2 packet ids awaiting PUBREL. Pure state machine: no I/O, no clock, so it is unit-tested directly.
// Owned by the session registry of the client id's home shard and only touched on that shard's thread.
#include "session/fifo.hpp"
#include "session/message.hpp"
#include "session/pid_set.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace ringmq::session {

// What an incoming QoS 2 PUBLISH is to the session (session::incoming_qos2).
enum class qos2_arrival : uint8_t {
    fresh,     // its packet id was not awaiting release: deliver it now, answer PUBREC
    duplicate, // a resent copy of one delivered already: PUBREC only (exactly once)
    full,      // max_awaiting_rel ids await PUBREL already: dropped unanswered (the client keeps it, may resend it)
};

struct limits {
    uint32_t max_inflight = 32;    // outgoing QoS 1/2 messages awaiting acknowledgement, 1..65535
    uint32_t max_queued = 1000;    // messages waiting beyond the window; 0 = unlimited
    uint16_t max_awaiting_rel = 0; // incoming QoS 2 ids awaiting PUBREL; 0 = unlimited
    // offer's past_limit: a message that finds no room even in the quarter past the limits is still queued while the
    // messages so taken stay within burst_kib KiB (with max_queued_bytes: while the queue's bytes stay within its
    // quarter plus burst_kib KiB), and its limits within burst_limits times more (a message that was on its way from
    // another shard before that shard could hold its publisher: it took that memory already, see shard::offer_to).
    // 0 = none. (Small fields: session fits its size class.)
    uint16_t burst_limits = 4;
    uint32_t burst_kib = 0;
    uint64_t max_queued_bytes = 0; // topic and payload bytes of the messages waiting beyond the window; 0 = unlimited
};

// One outgoing message: in the window (pid != 0 for QoS > 0) or in the queue (pid 0 until it enters the window).
struct outgoing {
    message_ref msg;
    uint16_t pid = 0;
    uint8_t qos = 0;           // effective QoS: min(published, granted)
    bool released : 1 = false; // QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP
    bool burst : 1 = false;    // queued past the limits' quarter (limits::burst_kib): counted in session::burst_bytes_
    uint32_t pid_step = 0;     // the session's packet-id step when pid was given (see session::pid_step_)
};

class session {
public:
    session(std::string client_id, bool clean, limits l);
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    const std::string& client_id() const { return client_id_; }
    bool clean() const { return clean_ != 0; }
    void set_clean(bool c) { clean_ = c; }
    const limits& lim() const { return limits_; }

    // Subscriptions of this session: filter -> granted options (QoS in bits 0-1).
    std::unordered_map<std::string, uint8_t> subscriptions;

    enum class offer_result { send, queued, dropped, refused };
    // A message for this session at effective QoS. When `online` and nothing is queued ahead of it and the window
    // has room (QoS 0 needs no room), returns send with *out pointing at the entry to transmit (valid until the next
    // call on any session of this thread; for QoS > 0 it is in the window with its packet id). Otherwise it is queued
    // (returns queued) unless the queue is full (max_queued messages, or it would pass max_queued_bytes), in which
    // case the new message is dropped and counted (returns dropped); a QoS 1/2 message is queued instead if dropping
    // the oldest queued QoS 0 messages makes room (each counted dropped: dropped() tells how many). past_limit: the
    // limits are a quarter higher (at least one message) for this message (the broker holds its publisher back from
    // it on, see shard::may_hold_publisher). Past that quarter too, see limits::burst_kib. refuse: a message that
    // would be dropped is refused instead (returns refused, not counted): its publisher has not been answered and
    // sends it again later (shard::offer_to).
    offer_result offer(message_ref msg, uint8_t qos, bool online, const outgoing** out, bool past_limit = false,
                       bool refuse = false);

    // Lets the next queued message into the window (gives it its packet id) if there is room. Returns it (valid
    // until the next call on any session of this thread) or nullptr. QoS 0 entries are returned without entering the
    // window. Returns nullptr while the queue is held.
    const outgoing* next_ready() {
        // Inline for the usual answer "nothing now" (pump asks once more after each message it sends).
        if (entries_.size() == inflight_ || (held_ | waits_flight_)) return nullptr;
        if (inflight_ >= limits_.max_inflight && entries_[inflight_].qos != 0) return nullptr;
        return take_next();
    }

    // Held: messages offered while online are queued as if something were queued ahead of them, and next_ready()
    // keeps them there, while the broker sends the retained messages a SUBSCRIBE asked for first (admit()). The
    // queue's limit still applies to what waits behind them.
    void hold(bool h) { held_ = h; }
    bool held() const { return held_ != 0; }
    // Waiting for a flight: held in the same way, for another reason and apart from hold(), while the send a closed
    // connection of this session left pending ends, so that what that send's socket did not take can go back to the
    // front of the queue before anything queued behind it goes to a new connection.
    void wait_flight(bool w) { waits_flight_ = w; }
    bool waits_flight() const { return waits_flight_ != 0; }
    // A message offered now would go out at once (window room permitting): nothing queued or held ahead of it.
    bool direct() const { return entries_.size() == inflight_ && (held_ | waits_flight_) == 0; }
    // A message that goes ahead of the queue (a retained message while held): for QoS 0 at once, for QoS > 0 into the
    // window with a packet id; nullptr when the window is full (msg is then not moved from). The result is valid as
    // for offer().
    const outgoing* admit(message_ref&& msg, uint8_t qos);

    // Outgoing acknowledgements. Each returns false when no message in the window has that id in the right state
    // (counted by the caller as "missed").
    bool on_puback(uint16_t pid) {
        // PUBACKs mostly come in the window's order: the oldest entry, a pop from the ring's front.
        if (inflight_ != 0) {
            outgoing& f = entries_.front();
            if (f.pid == pid && f.qos == 1) {
                if (pid_bits_) mark_pid(pid, false);
                entries_.pop_front();
                --inflight_;
                return true;
            }
        }
        return on_puback_scan(pid);
    }
    bool on_pubrec(uint16_t pid); // marks released: the caller sends PUBREL
    // The ids of the window's released entries in the order their PUBRECs came: on reconnect PUBRELs are resent in
    // that order [MQTT-4.6.0-4], which need not be the window's (PUBLISH) order.
    const fifo<uint16_t>& released_in_order() const {
        static const fifo<uint16_t> none;
        return qos2_ ? qos2_->released : none;
    }
    bool on_pubcomp(uint16_t pid);

    // The window's entries in order, as a range over the session's entries; valid until the session next changes.
    class window_view {
    public:
        window_view(const fifo<outgoing>& f, size_t n) : f_(f), n_(n) {}
        fifo<outgoing>::const_iterator begin() const { return f_.begin(); }
        fifo<outgoing>::const_iterator end() const { return f_.begin() + static_cast<std::ptrdiff_t>(n_); }
        size_t size() const { return n_; }
        bool empty() const { return n_ == 0; }
        const outgoing& front() const { return f_.front(); } // only when !empty()

    private:
        const fifo<outgoing>& f_;
        size_t n_;
    };
    // For resend on reconnect: every message in the window in order (PUBLISH with DUP where not released).
    window_view window() const { return window_view(entries_, inflight_); }
    size_t queue_len() const { return entries_.size() - inflight_; }
    // The QoS 0 messages among those in the queue.
    size_t queued_qos0() const { return queued_q0_; }
    // Topic and payload bytes of the messages in the queue (not the window), counted against max_queued_bytes.
    uint64_t queued_bytes() const { return queued_bytes_; }
    // Of those, the bytes of the messages taken past the limits' quarter (limits::burst_kib), which burst_room weighs
    // where there is no max_queued_bytes.
    uint64_t burst_bytes() const { return burst_bytes_; }
    size_t inflight_len() const { return inflight_; }
    // Messages not yet delivered: the queue and the window's entries still awaiting PUBACK or PUBREC (a QoS 2 entry
    // whose PUBREC came is delivered and waits for PUBCOMP only).
    uint64_t undelivered() const;
    uint64_t dropped() const { return dropped_; }
    // Whether a message of `bytes` would be taken from a publisher held for this queue (offer with past_limit: within
    // the limits' quarter of slack or the burst room).
    bool takes_held(uint64_t bytes) const { return room_for(bytes, true) || burst_room(bytes); }
    // Messages the broker dropped for this session outside the queue (QoS 0 backpressure), counted with the rest.
    void count_dropped(uint64_t n) { dropped_ += n; }

    // QoS 0 messages that were on their way to a connection that closed before they left: they go back to the front
    // of the queue, behind the window, in order. They are older than anything queued, so past the queue's limits the
    // oldest of them are the ones dropped (counted), as for a QoS 1/2 message that needs room. Returns how many.
    uint64_t requeue_front(std::vector<message_ref>& msgs);
    // Incoming QoS 2: records pid as awaiting release unless it does already or the limit is reached.
    qos2_arrival incoming_qos2(uint16_t pid);
    // PUBREL received: true when pid was awaiting release.
    bool incoming_release(uint16_t pid);
    size_t awaiting_rel() const { return qos2_ ? qos2_->awaiting_rel.size() : 0; }

    // Clears the window, the queue and the QoS 2 state (for tests: the broker drops a session whole instead).
    void clear_messages();

    // Whether the window's ids are kept in a bitmap (see pid_bits_).
    bool pid_bitmap() const { return pid_bits_ != nullptr; }

private:
    static constexpr size_t scan_max = 64;
    // Gives o the next free packet id (and its step). Inline for the common case (a window of at most scan_max whose
    // oldest entry is younger than a rotation: the next id in rotation is free); assign_pid_checked otherwise.
    void assign_pid(outgoing& o) {
        if (!pid_bits_ && !pid_scan_ && inflight_ < scan_max) {
            const uint32_t step = pid_step_;
            if (inflight_ == 0 || step_age(step, entries_.front().pid_step) < 65535) {
                advance_step();
                o.pid = pid_at(step);
                o.pid_step = step;
                return;
            }
        }
        assign_pid_checked(o);
    }
    void assign_pid_checked(outgoing& o);
    bool on_puback_scan(uint16_t pid);
    // The window position of the entry with pid, inflight_ when none has it.
    size_t window_index(uint16_t pid) const;
    // next_ready once it is known that something is queued, not held, and either QoS 0 or with room in the window.
    const outgoing* take_next();
    // A full queue and a QoS 1/2 message of `bytes`: drops the oldest queued QoS 0 messages to make room for it, if
    // dropping them all would; true when it did.
    bool drop_qos0_for(uint64_t bytes);
    // Whether one more queued message of `bytes` stays within max_queued and max_queued_bytes.
    // slack: the limits a quarter higher (offer's past_limit).
    bool room_for(uint64_t bytes, bool slack = false) const {
        const uint64_t messages = limits_.max_queued + (slack ? std::max<uint32_t>(limits_.max_queued / 4, 1) : 0);
        const uint64_t most = limits_.max_queued_bytes + (slack ? limits_.max_queued_bytes / 4 : 0);
        return (limits_.max_queued == 0 || queue_len() < messages) &&
               (limits_.max_queued_bytes == 0 || queued_bytes_ + bytes <= most);
    }
    // limits::burst_kib: room past the slack for that many bytes (as they were counted on their way), and at most
    // burst_limits times each limit more, so that a queue fed by many new topics at once, each gated only after a
    // round trip, stays bounded by its own limits too. Without max_queued_bytes the bytes taken past the slack are
    // counted apart from the rest (burst_bytes_): counted with them, a queue whose messages at its mark came near
    // burst_kib had no room left for smaller ones that were on their way (until stop 59).
    bool burst_room(uint64_t bytes) const {
        const uint64_t times = limits_.burst_limits;
        const uint64_t in_flight_bytes = uint64_t{limits_.burst_kib} << 10;
        if (in_flight_bytes == 0 || times == 0) return false;
        const uint64_t most =
            limits_.max_queued + std::max<uint32_t>(limits_.max_queued / 4, 1) + times * limits_.max_queued;
        if (limits_.max_queued != 0 && queue_len() >= most) return false;
        const uint64_t qb = limits_.max_queued_bytes;
        if (qb == 0) return burst_bytes_ + bytes <= in_flight_bytes;
        return queued_bytes_ + bytes <= qb + qb / 4 + std::min(in_flight_bytes, times * qb);
    }
    static uint32_t step_age(uint32_t step, uint32_t at) { return step >= at ? step - at : step + pid_step_mod - at; }
    static uint16_t pid_at(uint32_t step) { return static_cast<uint16_t>(step % 65535 + 1); }
    // Moves the rotation on by one step; returns the step it was at.
    uint32_t advance_step() {
        const uint32_t step = pid_step_;
        pid_step_ = step + 1 == pid_step_mod ? 0 : step + 1;
        return step;
    }
    bool pid_in_use(uint16_t pid) const;
    void mark_pid(uint16_t pid, bool used);

    // Ordered by size so that a session fits mimalloc's 192-byte class.
    std::string client_id_;
    // The window (the first inflight_ entries, in the order their ids were given) and behind it the queue: a message
    // enters the window where it stands, by getting its packet id, without moving.
    fifo<outgoing> entries_;
    // QoS 2 state, allocated on the first QoS 2 flow in either direction (most sessions never have one).
    struct qos2_state {
        pid_set awaiting_rel;    // incoming: ids received, PUBREL not yet
        fifo<uint16_t> released; // outgoing: see released_in_order(); a ring, as PUBCOMPs mostly take its front
    };
    std::unique_ptr<qos2_state> qos2_;
    // Bitmap of ids in the window (8 KiB), allocated the first time the window holds more entries than a linear scan
    // handles well (scan_max), and kept from then on.
    std::unique_ptr<uint64_t[]> pid_bits_;
    uint64_t dropped_ = 0;
    uint64_t queued_bytes_ = 0;
    uint64_t burst_bytes_ = 0; // of the queued entries marked burst (without max_queued_bytes, see burst_room)
    limits limits_;
    uint32_t inflight_ = 0;
    // Kept so that a full queue of QoS 1/2 messages answers "no QoS 0 to drop" at once: the scan for them cost a walk
    // of the whole queue (a thousand entries by default) for each message dropped, just when a subscriber falls behind.
    uint32_t queued_q0_ = 0;
    // Packet ids are given in rotation: step k gives id k % 65535 + 1, and steps count modulo pid_step_mod (a
    // multiple of 65535, so the ids stay in rotation across the wrap). The window is in the order its ids were given,
    // so while its front (oldest) entry is fewer than 65535 steps old no entry can hold the next id and no scan is
    // needed; once the front is seen that old, ids are checked against the window (pid_scan_) until it empties.
    // Packed with the flags so that the session stays in its 192-byte class.
    static constexpr uint32_t pid_step_mod = 65535u * 4096u;
    uint32_t pid_step_ : 28 = 0;
    uint32_t pid_scan_ : 1 = 0;
    uint32_t clean_ : 1 = 0;
    uint32_t held_ : 1 = 0;
    uint32_t waits_flight_ : 1 = 0;
};

} // namespace ringmq::session
