#pragma once
// Cross-thread wake-ups of a shard blocked in its ring.
//
// waker: the shard's own end. An eventfd with a read kept pending on the shard's ring, for threads without a ring
// (main's stop request) and as the fallback; and, where the ring takes messages, the token that other rings'
// messages complete on. wake() may be called from any thread; arm(), announce() and the completions run on the
// owning shard.
//
// peer_waker: one participant's way of waking the others from its own ring (see below).
#include "io/ring.hpp"
#include "reactor/smp.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace ringmq::io {

class waker final : completion {
public:
    waker();
    ~waker();
    waker(const waker&) = delete;
    waker& operator=(const waker&) = delete;
    // Posts the read on r; re-posted after every wake-up until stop().
    void arm(ring& r);
    // Tells the SMP matrix that participant self can be woken by messaging r (when r can take messages).
    void announce(reactor::smp& s, unsigned self, ring& r);
    void stop() { stopped_ = true; }
    // False, with the reason, when the eventfd could not be made (the open-file limit, say): the owner then fails
    // to start, as when its ring cannot be set up.
    bool usable(std::string& why) const;
    void wake(); // any thread
    bool pending() const { return pending_; }
    // Wake-ups that arrived as messages from other rings.
    uint64_t messages() const { return sink_.count; }

private:
    // The completion a message from another ring lands on: waking the thread was all it had to do.
    struct sink final : completion {
        uint64_t count = 0;
        void on_complete(int, uint32_t) override { ++count; }
    };
    void on_complete(int res, uint32_t flags) override;
    int fd_ = -1;
    int error_ = 0; // errno of a failed eventfd()
    ring* ring_ = nullptr;
    uint64_t value_ = 0;
    bool pending_ = false;
    bool stopped_ = false;
    sink sink_;
};

// Wakes sleeping SMP participants from this participant's ring: one IORING_OP_MSG_RING SQE per wake-up, carried by
// the ring's next submission (which the loop makes right after publishing its queues), so no syscall of its own and
// no eventfd read to complete and re-arm on the other side. Where either ring cannot take messages, or a message
// fails, the destination's waker hook (its eventfd) instead. Owned by one shard (or the admin shard) and used only on
// its thread; attach() after the ring exists.
class peer_waker {
public:
    peer_waker(reactor::smp& s, bool enabled);
    // Its failure completions point back at it: it stays where it was made.
    peer_waker(const peer_waker&) = delete;
    peer_waker& operator=(const peer_waker&) = delete;
    void attach(ring& r);
    void wake(unsigned to);
    uint64_t messaged() const { return messaged_; }
    uint64_t fell_back() const { return fell_back_; }

private:
    // A failed message's completion: wakes its destination the other way.
    struct failed final : completion {
        peer_waker* owner = nullptr;
        unsigned to = 0;
        void on_complete(int res, uint32_t flags) override;
    };
    reactor::smp& smp_;
    ring* ring_ = nullptr;
    bool enabled_;
    std::unique_ptr<failed[]> failed_;
    uint64_t messaged_ = 0;
    uint64_t fell_back_ = 0;
    bool warned_ = false;
};

} // namespace ringmq::io
