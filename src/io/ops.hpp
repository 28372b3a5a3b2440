#pragma once
// Awaitable one-shot socket operations for coroutine code (the admin shard's HTTP connections). The completion
// record lives in the awaiting coroutine's frame and its address goes in user_data; results are values (bytes or
// -errno), never exceptions.
#include "io/ring.hpp"

#include <coroutine>
#include <cstddef>
#include <cstdint>

namespace ringmq::io {

// recv with an optional idle timeout (a linked timeout: -ECANCELED when it fires).
class recv_some final : completion {
public:
    recv_some(ring& r, int fd, void* buf, size_t len, uint32_t timeout_ms)
        : ring_(r), fd_(fd), buf_(buf), len_(len), timeout_ms_(timeout_ms) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        waiter_ = h;
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_recv(s, fd_, buf_, len_, 0);
        set_completion(s, this);
        if (timeout_ms_) {
            s->flags |= IOSQE_IO_LINK;
            ts_.tv_sec = timeout_ms_ / 1000;
            ts_.tv_nsec = static_cast<long long>(timeout_ms_ % 1000) * 1000000;
            io_uring_sqe* t = ring_.sqe();
            io_uring_prep_link_timeout(t, &ts_, 0);
            set_completion(t, nullptr);
        }
    }
    int await_resume() const noexcept { return res_; }

private:
    void on_complete(int res, uint32_t) override {
        res_ = res;
        waiter_.resume();
    }
    ring& ring_;
    int fd_;
    void* buf_;
    size_t len_;
    uint32_t timeout_ms_;
    __kernel_timespec ts_{};
    std::coroutine_handle<> waiter_;
    int res_ = 0;
};

// One send (may be partial: the caller loops).
class send_some final : completion {
public:
    send_some(ring& r, int fd, const void* buf, size_t len) : ring_(r), fd_(fd), buf_(buf), len_(len) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
        waiter_ = h;
        io_uring_sqe* s = ring_.sqe();
        io_uring_prep_send(s, fd_, buf_, len_, MSG_NOSIGNAL);
        set_completion(s, this);
    }
    int await_resume() const noexcept { return res_; }

private:
    void on_complete(int res, uint32_t) override {
        res_ = res;
        waiter_.resume();
    }
    ring& ring_;
    int fd_;
    const void* buf_;
    size_t len_;
    std::coroutine_handle<> waiter_;
    int res_ = 0;
};

} // namespace ringmq::io
