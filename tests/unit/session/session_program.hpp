#pragma once
// Runs a program of session operations, read from bytes, against a session and a plain model of what the session
// header promises (offer, admit, next_ready, hold, the three outgoing acks, clear), and reports the first
// disagreement: a message handed out out of order or twice, a window entry without a unique non-zero packet id, a
// window past max_inflight, a queue past its limits, a drop that was not needed or not counted, an ack answered
// wrongly, PUBRELs not in PUBREC order. Used by the seeded unit test (test_session.cpp) and the libFuzzer target
// tests/fuzz/fuzz_session.cpp; test code only, single-threaded.
#include "session/session.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace ringmq::session::test {

class session_program {
public:
    // fail(what) is called on the first disagreement; the run stops there.
    template <class Fail> static void run(const uint8_t* data, size_t size, Fail&& fail) {
        session_program p(data, size);
        p.execute(fail);
    }

private:
    struct model_entry {
        uint64_t id;
        uint8_t qos;
        uint32_t bytes;
        uint16_t pid = 0;
        bool released = false;
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

    message_ref make(uint64_t id, uint8_t qos, uint32_t extra) {
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
            it = queue_.erase(it);
            ++dropped_;
        }
        return true;
    }
    uint64_t queued_bytes() const {
        uint64_t b = 0;
        for (const model_entry& e : queue_)
            b += e.bytes;
        return b;
    }
    bool room_for(uint32_t bytes) const {
        return (lim_.max_queued == 0 || queue_.size() < lim_.max_queued) &&
               (lim_.max_queued_bytes == 0 || queued_bytes() + bytes <= lim_.max_queued_bytes);
    }

    // A QoS > 0 message entered the window with the id the session gave it.
    template <class Fail> bool enter_window(model_entry e, const outgoing* o, Fail& fail) {
        if (o->pid == 0) return fail("a window entry got packet id 0"), false;
        for (const model_entry& w : window_)
            if (w.pid == o->pid) return fail("a packet id given twice in the window"), false;
        e.pid = o->pid;
        window_.push_back(e);
        return true;
    }

    template <class Fail> bool handed_out(uint64_t want, const outgoing* o, Fail& fail) {
        if (!o) return fail("nothing handed out where the model has a message"), false;
        if (id_of(*o) != want) return fail("a message handed out out of order"), false;
        return true;
    }

    template <class Fail> bool compare(const session& s, Fail& fail) {
        if (s.inflight_len() != window_.size()) return fail("window size differs"), false;
        if (s.queue_len() != queue_.size()) return fail("queue length differs"), false;
        if (s.queued_bytes() != queued_bytes()) return fail("queued bytes differ"), false;
        if (s.dropped() != dropped_) return fail("dropped count differs"), false;
        if (window_.size() > lim_.max_inflight) return fail("window past max_inflight"), false;
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
        const auto& rel = s.released_in_order();
        if (!std::equal(rel.begin(), rel.end(), released_.begin(), released_.end()))
            return fail("PUBRELs not in PUBREC order"), false;
        return true;
    }

    uint16_t pick_pid() {
        const uint8_t b = next();
        if (b < 200 && !window_.empty()) return window_[b % window_.size()].pid;
        return static_cast<uint16_t>(next() << 8 | next());
    }

    template <class Fail> void execute(Fail& fail) {
        static constexpr uint32_t inflight[] = {1, 2, 3, 5, 64, 65, 100, 65535};
        static constexpr uint32_t queued[] = {0, 1, 3, 10};
        static constexpr uint64_t queued_bytes_lim[] = {0, 0, 30, 100};
        lim_.max_inflight = inflight[next() % 8];
        lim_.max_queued = queued[next() % 4];
        lim_.max_queued_bytes = queued_bytes_lim[next() % 4];
        session s("p", false, lim_);
        bool online = true, held = false;
        uint64_t ids = 0;
        for (int step = 0; step < 4096 && n_ > 0; ++step) {
            const uint8_t op = next() % 10;
            switch (op) {
            case 0:
            case 1:
            case 2: { // offer
                const uint8_t qos = next() % 3;
                const uint32_t extra = next() % 24;
                const uint32_t bytes = 1 + 8 + extra; // topic "t" and the payload
                const uint64_t id = ids++;
                const outgoing* o = nullptr;
                const auto r = s.offer(make(id, qos, extra), qos, online, &o);
                model_entry e{id, qos, bytes};
                const bool direct = online && queue_.empty() && !held;
                if (direct && (qos == 0 || window_.size() < lim_.max_inflight)) {
                    if (r != session::offer_result::send) return fail("offer did not send where it could");
                    if (!handed_out(id, o, fail)) return;
                    if (qos > 0 && !enter_window(e, o, fail)) return;
                } else if (room_for(bytes) || (qos > 0 && drop_qos0_for(bytes))) {
                    if (r != session::offer_result::queued) return fail("offer did not queue where it should");
                    queue_.push_back(e);
                } else {
                    if (r != session::offer_result::dropped) return fail("offer did not drop where it should");
                    ++dropped_;
                }
                break;
            }
            case 3: { // the broker pumps the queue while online
                if (!online) break;
                for (;;) {
                    const outgoing* o = s.next_ready();
                    const bool can =
                        !queue_.empty() && !held && (queue_.front().qos == 0 || window_.size() < lim_.max_inflight);
                    if (!can) {
                        if (o) return fail("next_ready handed out what the model holds back");
                        break;
                    }
                    const model_entry e = queue_.front();
                    queue_.pop_front();
                    if (!handed_out(e.id, o, fail)) return;
                    if (e.qos > 0 && !enter_window(e, o, fail)) return;
                }
                break;
            }
            case 4: { // PUBACK
                const uint16_t pid = pick_pid();
                auto it =
                    std::find_if(window_.begin(), window_.end(), [pid](const model_entry& e) { return e.pid == pid; });
                const bool want = it != window_.end() && it->qos == 1;
                if (s.on_puback(pid) != want) return fail("PUBACK answered wrongly");
                if (want) window_.erase(it);
                break;
            }
            case 5: { // PUBREC
                const uint16_t pid = pick_pid();
                auto it =
                    std::find_if(window_.begin(), window_.end(), [pid](const model_entry& e) { return e.pid == pid; });
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
                auto it =
                    std::find_if(window_.begin(), window_.end(), [pid](const model_entry& e) { return e.pid == pid; });
                const bool want = it != window_.end() && it->qos == 2 && it->released;
                if (s.on_pubcomp(pid) != want) return fail("PUBCOMP answered wrongly");
                if (want) {
                    window_.erase(it);
                    released_.erase(std::find(released_.begin(), released_.end(), pid));
                }
                break;
            }
            case 7: { // a retained message sent ahead of the queue (the session is held meanwhile in the broker)
                const uint8_t qos = next() % 3;
                const uint64_t id = ids++;
                message_ref m = make(id, qos, 0);
                const outgoing* o = s.admit(std::move(m), qos);
                const bool fits = qos == 0 || window_.size() < lim_.max_inflight;
                if (fits != (o != nullptr)) return fail("admit answered wrongly");
                if (o) {
                    if (!handed_out(id, o, fail)) return;
                    if (qos > 0 && !enter_window({id, qos, 9}, o, fail)) return;
                }
                break;
            }
            case 8:
                held = !held;
                s.hold(held);
                break;
            default:
                if (next() % 16 == 0) { // rare: everything goes
                    s.clear_messages();
                    window_.clear();
                    queue_.clear();
                    released_.clear();
                } else {
                    online = !online;
                }
            }
            if (!compare(s, fail)) return;
        }
    }

    const uint8_t* p_;
    size_t n_;
    limits lim_;
    std::vector<model_entry> window_;
    std::deque<model_entry> queue_;
    std::vector<uint16_t> released_;
    uint64_t dropped_ = 0;
};

} // namespace ringmq::session::test
