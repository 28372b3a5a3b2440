#pragma once
// Runs a program of session operations, read from bytes, against a session and a plain model of what the session
// header promises (offer, admit, next_ready, hold, wait_flight, requeue_front, the three outgoing acks, the incoming
// QoS 2 ids, clear), and reports the first disagreement: a message handed out out of order or twice, a window entry
// without a unique non-zero packet id, a window past max_inflight, a queue past its limits, a drop that was not needed
// or not counted, an ack answered wrongly, PUBRELs not in PUBREC order, an incoming QoS 2 id taken twice or past
// max_awaiting_rel, a packet-id bitmap where the window never outgrew a scan (or none where it did). Bursts fill
// windows past 64 entries; a "burn" (at most once a program, where allowed) acknowledges 65535+ messages while an older
// one stays in the window, so the packet-id rotation comes round to ids still in use. Used by the seeded unit test
// (test_session.cpp) and the libFuzzer target tests/fuzz/fuzz_session.cpp; test code only, single-threaded.
#include "session/session.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

namespace ringmq::session::test {

class session_program {
public:
    // fail(what) is called on the first disagreement; the run stops there. allow_burn lets the program run one burn
    // (about 65 k offers and acks: tens of milliseconds).
    template <class Fail> static void run(const uint8_t* data, size_t size, Fail&& fail, bool allow_burn = true) {
        session_program p(data, size);
        p.burn_left_ = allow_burn ? 1 : 0;
        p.execute(fail);
    }

private:
    struct model_entry {
        uint64_t id;
        uint8_t qos;
        uint32_t bytes;
        uint16_t pid = 0;
        bool released = false;
        bool burst = false; // queued past the limits' quarter (limits::burst_kib)
    };

    session_program(const uint8_t* data, size_t size) : p_(data), n_(size) {}

    uint8_t next() {
        if (n_ == 0) return 0;
        --n_;
        return *p_++;
    }

    static uint64_t id_of(const outgoing& o) {
        uint64_t id = 0;
        const auto payload = o.msg->payload();
        std::memcpy(&id, payload.data(), sizeof id);
        return id;
    }

    static message_ref make(uint64_t id, uint8_t qos, uint32_t extra) {
        std::vector<uint8_t> payload(sizeof id + extra, 0);
        std::memcpy(payload.data(), &id, sizeof id);
        return message_ref::adopt(message::make("t", payload, qos, false));
    }

    // Drops the queue's oldest QoS 0 entries while a message of `bytes` does not fit, as session::drop_qos0_for
    // promises: only when dropping them all would make room.
    bool drop_qos0_for(uint32_t bytes) {
        size_t q0 = 0;
        uint64_t q0_bytes = 0;
        for (const model_entry& e : queue_)
            if (e.qos == 0) {
                ++q0;
                q0_bytes += e.bytes;
            }
        if (q0 == 0 || (lim_.max_queued != 0 && queue_.size() - q0 >= lim_.max_queued) ||
            (lim_.max_queued_bytes != 0 && queued_bytes() - q0_bytes + bytes > lim_.max_queued_bytes))
            return false;
        for (auto it = queue_.begin(); it != queue_.end() && !room_for(bytes);) {
            if (it->qos != 0) {
                ++it;
                continue;
            }
            queued_bytes_ -= it->bytes;
            if (it->burst) burst_bytes_ -= it->bytes;
            it = queue_.erase(it);
            ++dropped_;
        }
        return true;
    }
    uint64_t queued_bytes() const { return queued_bytes_; }
    bool blocked() const { return held_ || waits_; }

    // QoS 0 messages that were on their way to a closed connection go back to the queue's front, older than anything
    // in it: the newest of them that fit the limits (no slack), the older ones dropped and counted.
    template <class Fail> bool requeue_front(session& s, uint32_t n, Fail& fail) {
        std::vector<message_ref> msgs;
        std::vector<model_entry> back;
        for (uint32_t i = 0; i < n; ++i) {
            const uint32_t extra = next() % 24;
            back.push_back(model_entry{ids_++, 0, 1 + 8 + extra});
            msgs.push_back(make(back.back().id, 0, extra));
        }
        size_t keep = 0;
        uint64_t bytes = 0;
        for (size_t i = back.size(); i-- > 0;) {
            if ((lim_.max_queued != 0 && queue_.size() + keep >= lim_.max_queued) ||
                (lim_.max_queued_bytes != 0 && queued_bytes_ + bytes + back[i].bytes > lim_.max_queued_bytes))
                break;
            ++keep;
            bytes += back[i].bytes;
        }
        const uint64_t lost = back.size() - keep;
        if (s.requeue_front(msgs) != lost) return fail("requeue_front dropped another number"), false;
        dropped_ += lost;
        queued_bytes_ += bytes;
        queue_.insert(queue_.begin(), back.begin() + static_cast<std::ptrdiff_t>(lost), back.end());
        return true;
    }

    // An incoming QoS 2 PUBLISH (or, odd b, a PUBREL), mostly for a small id, so that ids repeat; else for any id, so
    // that the set of ids awaiting release grows.
    template <class Fail> bool incoming(session& s, uint8_t b, Fail& fail) {
        uint16_t pid = static_cast<uint16_t>(1 + (b >> 1) % 8);
        if (b >= 200) pid = static_cast<uint16_t>(std::max(1, next() << 8 | next()));
        const bool awaiting = std::find(awaiting_.begin(), awaiting_.end(), pid) != awaiting_.end();
        if (b & 1) {
            if (s.incoming_release(pid) != awaiting) return fail("PUBREL answered wrongly"), false;
            if (awaiting) awaiting_.erase(std::find(awaiting_.begin(), awaiting_.end(), pid));
            return true;
        }
        qos2_arrival want = qos2_arrival::fresh;
        if (awaiting)
            want = qos2_arrival::duplicate;
        else if (lim_.max_awaiting_rel != 0 && awaiting_.size() >= lim_.max_awaiting_rel)
            want = qos2_arrival::full;
        if (s.incoming_qos2(pid) != want) return fail("incoming QoS 2 PUBLISH answered wrongly"), false;
        if (want == qos2_arrival::fresh) awaiting_.push_back(pid);
        return true;
    }
    // slack: a quarter more (at least one message), for a message offered past_limit.
    bool room_for(uint32_t bytes, bool slack = false) const {
        const uint64_t most = lim_.max_queued + (slack ? std::max<uint32_t>(lim_.max_queued / 4, 1) : 0);
        const uint64_t most_bytes = lim_.max_queued_bytes + (slack ? lim_.max_queued_bytes / 4 : 0);
        return (lim_.max_queued == 0 || queue_.size() < most) &&
               (lim_.max_queued_bytes == 0 || queued_bytes() + bytes <= most_bytes);
    }
    // Past the slack, as limits::burst_kib promises: burst_limits times each limit more, and burst_kib KiB of the
    // messages so taken (with a byte limit: the queue's bytes within its quarter more plus that).
    bool burst_room(uint32_t bytes) const {
        const uint64_t kib = uint64_t{lim_.burst_kib} << 10, times = lim_.burst_limits;
        if (kib == 0 || times == 0) return false;
        if (lim_.max_queued != 0 &&
            queue_.size() >= lim_.max_queued + std::max<uint32_t>(lim_.max_queued / 4, 1) + times * lim_.max_queued)
            return false;
        const uint64_t qb = lim_.max_queued_bytes;
        if (qb == 0) return burst_bytes_ + bytes <= kib;
        return queued_bytes() + bytes <= qb + qb / 4 + std::min(kib, times * qb);
    }

    // A QoS > 0 message entered the window with the id the session gave it.
    template <class Fail> bool enter_window(model_entry e, const outgoing* o, Fail& fail) {
        if (o->pid == 0) return fail("a window entry got packet id 0"), false;
        if (pid_used_[o->pid]) return fail("a packet id given twice in the window"), false;
        pid_used_[o->pid] = true;
        e.pid = o->pid;
        window_.push_back(e);
        if (window_.size() > 64) bitmap_ = true; // an id was given with 64 entries in the window (scan_max)
        return true;
    }

    // A message the session handed out for sending: the one the model expects, at its QoS, with an id for QoS > 0
    // only (QoS 0 never enters the window).
    template <class Fail> bool check_handed_out(const model_entry& want, const outgoing* o, Fail& fail) {
        if (!o) return fail("nothing handed out where the model has a message"), false;
        if (id_of(*o) != want.id) return fail("a message handed out out of order"), false;
        if (o->qos != want.qos) return fail("a message handed out at another QoS"), false;
        if (want.qos == 0 && o->pid != 0) return fail("a QoS 0 message handed out with a packet id"), false;
        return true;
    }

    // One offer, checked against the queue's rules.
    template <class Fail>
    bool offer(session& s, uint8_t qos, uint32_t extra, bool online, Fail& fail, bool past_limit = false,
               bool refuse = false) {
        const uint32_t bytes = 1 + 8 + extra; // topic "t" and the payload
        model_entry e{ids_++, qos, bytes};
        const outgoing* o = nullptr;
        const auto r = s.offer(make(e.id, qos, extra), qos, online, &o, past_limit, refuse);
        const bool direct = online && queue_.empty() && !blocked();
        bool fits = room_for(bytes, past_limit);
        if (!fits && past_limit && burst_room(bytes)) fits = e.burst = true;
        if (direct && (qos == 0 || window_.size() < lim_.max_inflight)) {
            if (r != session::offer_result::send) return fail("offer did not send where it could"), false;
            if (!check_handed_out(e, o, fail)) return false;
            if (qos > 0 && !enter_window(e, o, fail)) return false;
        } else if (fits || (qos > 0 && drop_qos0_for(bytes))) {
            if (r != session::offer_result::queued) return fail("offer did not queue where it should"), false;
            queue_.push_back(e);
            queued_bytes_ += e.bytes;
            if (e.burst) burst_bytes_ += e.bytes;
        } else if (refuse) {
            if (r != session::offer_result::refused) return fail("offer did not refuse where it should"), false;
        } else {
            if (r != session::offer_result::dropped) return fail("offer did not drop where it should"), false;
            ++dropped_;
        }
        return true;
    }

    // About 65 k QoS 1 messages offered and acknowledged one by one while the window keeps what it holds: the id
    // rotation comes round to the ids of the entries still there, which must be skipped.
    template <class Fail> bool burn(session& s, uint32_t n, Fail& fail) {
        for (uint32_t i = 0; i < n; ++i) {
            if (!(online_ && queue_.empty() && !blocked() && window_.size() < lim_.max_inflight)) return true;
            if (!offer(s, 1, 0, true, fail)) return false;
            const uint16_t pid = window_.back().pid;
            if (!s.on_puback(pid)) return fail("PUBACK of a burned message answered wrongly"), false;
            pid_used_[pid] = false;
            window_.pop_back();
        }
        return true;
    }

    template <class Fail> bool compare(const session& s, Fail& fail) {
        if (!compare_counts(s, fail)) return false;
        if (window_.size() > lim_.max_inflight) return fail("window past max_inflight"), false;
        // Entry by entry only while the session is small, so that programs that grow it to thousands of entries stay
        // linear; the counts are compared at every step.
        if (window_.size() + queue_.size() > 512) return true;
        size_t i = 0, unreleased = 0;
        for (const outgoing& o : s.window()) {
            const model_entry& m = window_[i++];
            if (o.pid != m.pid || o.released != m.released || o.qos != m.qos)
                return fail("window entry differs"), false;
            if (!o.released) {
                ++unreleased;
                if (id_of(o) != m.id) return fail("window message differs"), false;
            }
        }
        if (s.undelivered() != queue_.size() + unreleased) return fail("undelivered count differs"), false;
        // The queue follows the window in the session's entries: the same messages, in the same order.
        auto q = s.window().end();
        for (const model_entry& m : queue_) {
            if (id_of(*q) != m.id) return fail("queued message differs"), false;
            ++q;
        }
        if (s.direct() != (queue_.empty() && !blocked()) || s.held() != held_ || s.waits_flight() != waits_)
            return fail("direct, held or waiting for a flight differs"), false;
        if (s.pid_bitmap() != bitmap_)
            return fail("packet-id bitmap where the window never outgrew a scan, or none"), false;
        const auto& rel = s.released_in_order();
        if (!std::equal(rel.begin(), rel.end(), released_.begin(), released_.end()))
            return fail("PUBRELs not in PUBREC order"), false;
        return true;
    }

    // Mostly an id in the window; else a small id (0, or one just freed in a short window).
    template <class Fail> bool compare_counts(const session& s, Fail& fail) {
        if (s.inflight_len() != window_.size()) return fail("window size differs"), false;
        if (s.queue_len() != queue_.size()) return fail("queue length differs"), false;
        if (s.queued_bytes() != queued_bytes_) return fail("queued bytes differ"), false;
        if (s.burst_bytes() != burst_bytes_) return fail("bytes queued past the slack differ"), false;
        if (s.queued_qos0() != static_cast<size_t>(std::count_if(queue_.begin(), queue_.end(),
                                                                 [](const model_entry& e) { return e.qos == 0; })))
            return fail("queued QoS 0 count differs"), false;
        if (s.dropped() != dropped_) return fail("dropped count differs"), false;
        if (s.released_in_order().size() != released_.size()) return fail("PUBREL count differs"), false;
        if (s.awaiting_rel() != awaiting_.size()) return fail("incoming QoS 2 ids awaiting PUBREL differ"), false;
        return true;
    }

    std::vector<model_entry>::iterator find_pid(uint16_t pid) {
        return std::find_if(window_.begin(), window_.end(), [pid](const model_entry& e) { return e.pid == pid; });
    }

    uint16_t pick_pid() {
        const uint8_t b = next();
        if (b < 200 && !window_.empty()) return window_[b % window_.size()].pid;
        return next();
    }

    template <class Fail> void execute(Fail& fail) {
        // Windows on both sides of scan_max (64: a linear scan below, a bitmap above) and the extremes; queue limits
        // where 0 (unlimited) comes up often, and a byte limit of 30 that holds one 9-30-byte message but not two.
        static constexpr uint32_t inflight[] = {1, 2, 3, 5, 64, 65, 100, 65535};
        static constexpr uint32_t queued[] = {0, 1, 3, 10};
        static constexpr uint64_t queued_bytes_lim[] = {0, 0, 30, 100};
        lim_.max_inflight = inflight[next() % 8];
        lim_.max_queued = queued[next() % 4];
        lim_.max_queued_bytes = queued_bytes_lim[next() % 4];
        // Past the quarter (bursts offered past_limit): none, or 1 KiB (30-110 messages) within 1 or 4 times the
        // limits more.
        const uint8_t burst = next() % 4;
        lim_.burst_kib = burst == 0 ? 0 : 1;
        lim_.burst_limits = burst == 1 ? 1 : 4;
        static constexpr uint16_t awaiting_rel[] = {0, 1, 3, 0};
        lim_.max_awaiting_rel = awaiting_rel[next() % 4];
        session s("p", false, lim_);
        for (int step = 0; step < 4096 && n_ > 0; ++step) {
            const uint8_t op = next() % 14;
            switch (op) {
            case 0:
            case 1:
            case 2: { // offer
                const uint8_t qos = next() % 3;
                const uint32_t extra = next() % 24;
                if (!offer(s, qos, extra, online_, fail)) return;
                break;
            }
            case 3: { // the broker pumps the queue while online
                if (!online_) break;
                for (;;) {
                    const outgoing* o = s.next_ready();
                    const bool can = !queue_.empty() && !blocked() &&
                                     (queue_.front().qos == 0 || window_.size() < lim_.max_inflight);
                    if (!can) {
                        if (o) return fail("next_ready handed out what the model holds back");
                        break;
                    }
                    const model_entry e = queue_.front();
                    queue_.pop_front();
                    queued_bytes_ -= e.bytes;
                    if (e.burst) burst_bytes_ -= e.bytes;
                    if (!check_handed_out(e, o, fail)) return;
                    if (e.qos > 0 && !enter_window(e, o, fail)) return;
                }
                break;
            }
            case 4: { // PUBACK
                const uint16_t pid = pick_pid();
                auto it = find_pid(pid);
                const bool want = it != window_.end() && it->qos == 1;
                if (s.on_puback(pid) != want) return fail("PUBACK answered wrongly");
                if (want) {
                    pid_used_[pid] = false;
                    window_.erase(it);
                }
                break;
            }
            case 5: { // PUBREC (a duplicate for a released entry is answered true: the broker sends PUBREL again)
                const uint16_t pid = pick_pid();
                auto it = find_pid(pid);
                const bool want = it != window_.end() && it->qos == 2;
                if (s.on_pubrec(pid) != want) return fail("PUBREC answered wrongly");
                if (want && !it->released) {
                    it->released = true;
                    released_.push_back(pid);
                }
                break;
            }
            case 6: { // PUBCOMP
                const uint16_t pid = pick_pid();
                auto it = find_pid(pid);
                const bool want = it != window_.end() && it->qos == 2 && it->released;
                if (s.on_pubcomp(pid) != want) return fail("PUBCOMP answered wrongly");
                if (want) {
                    pid_used_[pid] = false;
                    window_.erase(it);
                    released_.erase(std::find(released_.begin(), released_.end(), pid));
                }
                break;
            }
            case 7: { // a retained message sent ahead of the queue (the session is held meanwhile in the broker)
                const uint8_t qos = next() % 3;
                const model_entry e{ids_++, qos, 9};
                message_ref m = make(e.id, qos, 0);
                const outgoing* o = s.admit(std::move(m), qos);
                const bool fits = qos == 0 || window_.size() < lim_.max_inflight;
                if (fits != (o != nullptr)) return fail("admit answered wrongly");
                if (o) {
                    if (!check_handed_out(e, o, fail)) return;
                    if (qos > 0 && !enter_window(e, o, fail)) return;
                } else if (!m) {
                    return fail("admit refused a message and still took it");
                }
                break;
            }
            case 8:
                held_ = !held_;
                s.hold(held_);
                break;
            case 9: { // a burst of QoS 1 and 2 messages: windows past 64 entries, queues past their limits
                // Half of them offered past_limit (a held publisher's, or on their way from another shard), half of
                // those refusable (a client's that would be dropped).
                const uint8_t mode = next() % 4;
                const uint32_t n = 50 + next() % 100;
                for (uint32_t i = 0; i < n; ++i)
                    if (!offer(s, 1 + i % 2, i % 8, online_, fail, mode >= 2, mode == 3)) return;
                break;
            }
            case 10: // the send of a closed connection pending, or ended
                waits_ = !waits_;
                s.wait_flight(waits_);
                break;
            case 11: // what that send did not take goes back
                if (!requeue_front(s, 1 + next() % 8, fail)) return;
                break;
            case 12:
                if (!incoming(s, next(), fail)) return;
                break;
            default: {
                const uint8_t b = next();
                if (b == 0) { // rare: everything goes
                    s.clear_messages();
                    for (const model_entry& e : window_)
                        pid_used_[e.pid] = false;
                    window_.clear();
                    queue_.clear();
                    queued_bytes_ = 0;
                    burst_bytes_ = 0;
                    released_.clear();
                    awaiting_.clear();
                } else if (b == 1 && burn_left_ > 0) {
                    --burn_left_;
                    if (!burn(s, 65535 + next(), fail)) return;
                } else {
                    online_ = !online_;
                }
            }
            }
            if (!compare(s, fail)) return;
        }
    }

    const uint8_t* p_;
    size_t n_;
    limits lim_;
    std::vector<model_entry> window_;
    std::vector<bool> pid_used_ = std::vector<bool>(65536); // the ids of window_, for the uniqueness check
    std::deque<model_entry> queue_;
    std::vector<uint16_t> released_;
    uint64_t dropped_ = 0;
    uint64_t queued_bytes_ = 0;
    uint64_t burst_bytes_ = 0;
    uint64_t ids_ = 0;
    bool online_ = true;
    std::vector<uint16_t> awaiting_; // incoming QoS 2 ids awaiting PUBREL
    bool held_ = false;
    bool waits_ = false;  // session::wait_flight
    bool bitmap_ = false; // the session must keep a packet-id bitmap from now on
    int burn_left_ = 0;
};

} // namespace ringmq::session::test
