#pragma once
// Wakes a shard blocked in its ring from another thread: an eventfd with a read kept pending on the shard's ring.
// wake() may be called from any thread; arm() and the completion run on the owning shard.
#include "io/ring.hpp"

#include <cstdint>

namespace ringmq::io {

class waker final : completion {
public:
    waker();
    ~waker();
    waker(const waker&) = delete;
    waker& operator=(const waker&) = delete;
    // Posts the read on r; re-posted after every wake-up until stop().
    void arm(ring& r);
    void stop() { stopped_ = true; }
    void wake(); // any thread
    bool pending() const { return pending_; }

private:
    void on_complete(int res, uint32_t flags) override;
    int fd_ = -1;
    ring* ring_ = nullptr;
    uint64_t value_ = 0;
    bool pending_ = false;
    bool stopped_ = false;
};

} // namespace ringmq::io
