#pragma once
// Awaitable one-shot socket operations for coroutine code (the admin shard's HTTP connections). The completion
// record lives in the awaiting coroutine's frame and its address goes in user_data; results are values (bytes or
// -errno), never exceptions.
#include "io/ring.hpp"

#include <coroutine>
#include <cstddef>
#include <cstdint>

namespace ringmq::io {

// Shared part of the one-shot awaiters: the completion record that stores the result and resumes the coroutine.
class socket_op : protected completion {
public:
    bool await_ready() const noexcept { return false; }
    int await_resume() const noexcept { return res_; }
    // What an io_uring_prep_cancel names to end the operation (-ECANCELED) while it waits.
    completion* record() noexcept { return this; }

protected:
    explicit socket_op(ring& r) : ring_(r) {}
    ~socket_op() = default;
    // timeout_ms: the timeout link_timeout will add (0 = none), so that both SQEs go in the same submission.
    io_uring_sqe* prepare(std::coroutine_handle<> h, uint32_t timeout_ms) {
        waiter_ = h;
        ring_.reserve(timeout_ms != 0 ? 2 : 1);
        io_uring_sqe* s = ring_.sqe();
        set_completion(s, this);
        return s;
    }
    // Links a timeout to sqe s (the operation ends with -ECANCELED when it fires); 0 = none.
    void link_timeout(io_uring_sqe* s, uint32_t ms) {
        if (ms == 0) return;
        s->flags |= IOSQE_IO_LINK;
        ts_.tv_sec = ms / 1000;
        ts_.tv_nsec = static_cast<long long>(ms % 1000) * 1000000;
        io_uring_sqe* t = ring_.sqe();
        io_uring_prep_link_timeout(t, &ts_, 0);
        set_completion(t, nullptr);
    }
    ring& ring_;

private:
    __kernel_timespec ts_{};
    void on_complete(int res, uint32_t) override {
        res_ = res;
        waiter_.resume();
    }
    std::coroutine_handle<> waiter_;
    int res_ = 0;
};

// recv with an optional idle timeout (a linked timeout: -ECANCELED when it fires).
class recv_some final : public socket_op {
public:
    recv_some(ring& r, int fd, void* buf, size_t len, uint32_t timeout_ms)
        : socket_op(r), fd_(fd), buf_(buf), len_(len), timeout_ms_(timeout_ms) {}
    void await_suspend(std::coroutine_handle<> h) {
        io_uring_sqe* s = prepare(h, timeout_ms_);
        io_uring_prep_recv(s, fd_, buf_, len_, 0);
        link_timeout(s, timeout_ms_);
    }

private:
    int fd_;
    void* buf_;
    size_t len_;
    uint32_t timeout_ms_;
};

// One send (may be partial: the caller loops), with an optional timeout (-ECANCELED when it fires).
class send_some final : public socket_op {
public:
    send_some(ring& r, int fd, const void* buf, size_t len, uint32_t timeout_ms = 0)
        : socket_op(r), fd_(fd), buf_(buf), len_(len), timeout_ms_(timeout_ms) {}
    void await_suspend(std::coroutine_handle<> h) {
        io_uring_sqe* s = prepare(h, timeout_ms_);
        io_uring_prep_send(s, fd_, buf_, len_, MSG_NOSIGNAL);
        link_timeout(s, timeout_ms_);
    }

private:
    int fd_;
    const void* buf_;
    size_t len_;
    uint32_t timeout_ms_;
};

} // namespace ringmq::io
