#pragma once
// Counts detached work started with spawn(); shutdown closes the gate and awaits the count reaching zero.
// Owned by one shard (the scheduler that runs the spawned tasks); not thread-safe.
#include "reactor/task.hpp"

#include <coroutine>
#include <cstddef>

namespace ringmq::reactor {

class gate {
public:
    bool closed() const { return closed_; }
    size_t count() const { return count_; }
    void enter() { ++count_; }
    void leave() {
        if (--count_ == 0 && waiter_) std::exchange(waiter_, {}).resume();
    }
    // Closes the gate: spawn() refuses new work; resumes when every spawned task has finished.
    auto close() {
        closed_ = true;
        struct awaiter {
            gate& g;
            bool await_ready() const noexcept { return g.count_ == 0; }
            void await_suspend(std::coroutine_handle<> h) noexcept { g.waiter_ = h; }
            void await_resume() const noexcept {}
        };
        return awaiter{*this};
    }

private:
    size_t count_ = 0;
    bool closed_ = false;
    std::coroutine_handle<> waiter_;
};

namespace detail {
// A self-destroying coroutine that owns a task while it runs and holds the gate open.
struct detached {
    struct promise_type {
        detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() const noexcept { return {}; }
        std::suspend_never final_suspend() const noexcept { return {}; }
        void return_void() const noexcept {}
        void unhandled_exception() const noexcept { std::terminate(); }
    };
};
detached run_detached(gate& g, task<void> t);
} // namespace detail

// Starts t now (it runs until its first suspension) as detached work tracked by g. Returns false if g is closed.
bool spawn(gate& g, task<void> t);

} // namespace ringmq::reactor
