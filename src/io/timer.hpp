#pragma once
// Awaitable sleep on the shard's ring (IORING_OP_TIMEOUT). The completion record lives in the awaiting coroutine's
// frame, so the frame must not be destroyed while the timeout is pending: shutdown awaits every sleeper through the
// shard's gate.
#include "io/ring.hpp"

#include <coroutine>
#include <cstdint>

namespace ringmq::io {

class sleep_for final : completion {
public:
    sleep_for(ring& r, uint32_t ms) : ring_(r) {
        ts_.tv_sec = ms / 1000;
        ts_.tv_nsec = static_cast<long long>(ms % 1000) * 1000000;
    }
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        waiter_ = h;
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_timeout(s, &ts_, 0, 0);
        set_completion(s, this);
    }
    // true when the full time elapsed, false when cancelled or failed.
    bool await_resume() const noexcept { return res_ == -ETIME; }

private:
    void on_complete(int res, uint32_t) override {
        res_ = res;
        waiter_.resume();
    }
    ring& ring_;
    __kernel_timespec ts_{};
    std::coroutine_handle<> waiter_;
    int res_ = 0;
};

} // namespace ringmq::io
