#include "reactor/gate.hpp"
#include "reactor/outbox.hpp"
#include "reactor/smp.hpp"
#include "reactor/spsc_queue.hpp"
#include "reactor/task.hpp"
#include "util/log.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ringmq::reactor::test {
namespace {

using ::testing::ElementsAre;

// ---------------------------------------------------------------------------------------------------------------
// Test scaffolding: a manual event and a driver that starts a lazy task from plain code.

// A one-shot event: coroutines that co_await it suspend until set() resumes them, in order, on the caller's stack.
// Non-copyable on purpose: GCC 12 copies the operand of `co_await x` when x is a by-reference lambda capture, so a
// copyable event captured with [&] would be awaited on a hidden copy and set() would never resume anyone. Deleting
// the copy turns that into a compile error; the coroutines below take their event as a parameter instead.
class event {
public:
    event() = default;
    event(const event&) = delete;
    event& operator=(const event&) = delete;

    bool await_ready() const noexcept { return set_; }
    void await_suspend(std::coroutine_handle<> h) { waiters_.push_back(h); }
    void await_resume() const noexcept {}

    void set() {
        set_ = true;
        std::vector<std::coroutine_handle<>> w;
        w.swap(waiters_);
        for (auto h : w)
            h.resume();
    }
    size_t waiting() const { return waiters_.size(); }

private:
    bool set_ = false;
    std::vector<std::coroutine_handle<>> waiters_;
};

// Eager, self-destroying coroutine used only to start a task and record its outcome.
struct fire_and_forget {
    struct promise_type {
        fire_and_forget get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() const noexcept { return {}; }
        std::suspend_never final_suspend() const noexcept { return {}; }
        void return_void() const noexcept {}
        void unhandled_exception() const noexcept { std::terminate(); }
    };
};

template <typename T> struct outcome {
    bool done = false;
    std::optional<T> value;
    std::exception_ptr error;
};

template <> struct outcome<void> {
    bool done = false;
    std::exception_ptr error;
};

template <typename T> fire_and_forget drive(task<T> t, outcome<T>& out) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await t;
        } else {
            out.value.emplace(co_await t);
        }
    } catch (...) {
        out.error = std::current_exception();
    }
    out.done = true;
}

std::string error_message(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        return ex.what();
    } catch (...) {
        return "<non-std exception>";
    }
}

// ---------------------------------------------------------------------------------------------------------------
// task

task<int> value_of(int v) { co_return v; }

task<int> sum_of_two(int a, int b) {
    const int x = co_await value_of(a);
    const int y = co_await value_of(b);
    co_return x + y;
}

task<int> nested_depth(int n) {
    if (n == 0) co_return 0;
    co_return 1 + co_await nested_depth(n - 1);
}

TEST(task, int_task_is_lazy_and_returns_value) {
    bool started = false;
    auto make = [&started]() -> task<int> {
        started = true;
        co_return 42;
    };
    task<int> t = make();
    EXPECT_FALSE(started) << "a task must not run before it is awaited";
    outcome<int> out;
    drive(std::move(t), out);
    EXPECT_TRUE(started);
    ASSERT_TRUE(out.done);
    EXPECT_FALSE(out.error);
    EXPECT_EQ(out.value, 42);
}

TEST(task, nested_int_tasks_compose) {
    outcome<int> out;
    drive(sum_of_two(40, 2), out);
    ASSERT_TRUE(out.done);
    EXPECT_EQ(out.value, 42);

    outcome<int> deep;
    drive(nested_depth(1000), deep);
    ASSERT_TRUE(deep.done);
    EXPECT_EQ(deep.value, 1000);
}

TEST(task, move_only_result_is_moved_out) {
    auto make = []() -> task<std::unique_ptr<int>> { co_return std::make_unique<int>(7); };
    outcome<std::unique_ptr<int>> out;
    drive(make(), out);
    ASSERT_TRUE(out.done);
    ASSERT_TRUE(out.value.has_value());
    ASSERT_NE(*out.value, nullptr);
    EXPECT_EQ(**out.value, 7);
}

TEST(task, void_task_chain_runs_in_order) {
    std::vector<std::string> trace;
    auto inner = [&trace](int i) -> task<void> {
        trace.push_back("inner" + std::to_string(i));
        co_return;
    };
    auto outer = [&trace, &inner]() -> task<void> {
        trace.push_back("outer-begin");
        co_await inner(1);
        trace.push_back("outer-mid");
        co_await inner(2);
        trace.push_back("outer-end");
    };
    outcome<void> out;
    task<void> t = outer();
    EXPECT_TRUE(trace.empty());
    drive(std::move(t), out);
    ASSERT_TRUE(out.done);
    EXPECT_FALSE(out.error);
    EXPECT_THAT(trace, ElementsAre("outer-begin", "inner1", "outer-mid", "inner2", "outer-end"));
}

TEST(task, long_loop_of_synchronously_completing_awaits) {
    // Every iteration starts a fresh task, transfers into it and is transferred back from its final suspend. The
    // count is kept modest on purpose: GCC 12 turns symmetric transfer into a real tail call only when sibling-call
    // optimisation is on (-O2); at -O0/-O1 each synchronous await nests a frame, and a million of them overflow an
    // 8 MiB stack. 10,000 fits at every optimisation level, but not with AddressSanitizer's redzones at -O0.
#if defined(__SANITIZE_ADDRESS__)
    constexpr int k_iterations = 1'000;
#else
    constexpr int k_iterations = 10'000;
#endif
    auto loop = []() -> task<int64_t> {
        int64_t sum = 0;
        for (int i = 0; i < k_iterations; ++i)
            sum += co_await value_of(i % 7);
        co_return sum;
    };
    outcome<int64_t> out;
    drive(loop(), out);
    ASSERT_TRUE(out.done);
    int64_t expected = 0;
    for (int i = 0; i < k_iterations; ++i)
        expected += i % 7;
    EXPECT_EQ(out.value, expected);
}

task<int> throws_int() {
    throw std::runtime_error("boom-int");
    co_return 0;
}

task<void> throws_void() {
    throw std::logic_error("boom-void");
    co_return;
}

TEST(task, exception_propagates_through_int_chain) {
    bool after_throw = false;
    auto middle = [&after_throw]() -> task<int> {
        int v = co_await throws_int();
        after_throw = true;
        co_return v + 1;
    };
    auto outer = [&middle]() -> task<int> { co_return co_await middle(); };
    outcome<int> out;
    drive(outer(), out);
    ASSERT_TRUE(out.done);
    EXPECT_FALSE(after_throw);
    EXPECT_FALSE(out.value.has_value());
    ASSERT_TRUE(out.error);
    EXPECT_EQ(error_message(out.error), "boom-int");
}

TEST(task, exception_propagates_through_void_chain) {
    auto outer = []() -> task<void> { co_await throws_void(); };
    outcome<void> out;
    drive(outer(), out);
    ASSERT_TRUE(out.done);
    ASSERT_TRUE(out.error);
    EXPECT_EQ(error_message(out.error), "boom-void");
}

TEST(task, caught_exception_lets_the_awaiter_continue) {
    auto outer = []() -> task<int> {
        int r = 0;
        try {
            co_await throws_void();
            r = -1;
        } catch (const std::logic_error&) {
            r = 10;
        }
        try {
            r += co_await throws_int();
        } catch (const std::runtime_error&) {
            r += 5;
        }
        co_return r + co_await value_of(1);
    };
    outcome<int> out;
    drive(outer(), out);
    ASSERT_TRUE(out.done);
    EXPECT_FALSE(out.error);
    EXPECT_EQ(out.value, 16);
}

TEST(task, suspended_chain_resumes_through_all_awaiters) {
    event ev;
    std::vector<std::string> trace;
    auto leaf = [&trace](event& e) -> task<int> {
        trace.push_back("leaf-wait");
        co_await e;
        trace.push_back("leaf-resumed");
        co_return 5;
    };
    auto mid = [&]() -> task<int> {
        int v = co_await leaf(ev);
        trace.push_back("mid");
        co_return v * 2;
    };
    auto top = [&]() -> task<int> {
        int v = co_await mid();
        trace.push_back("top");
        co_return v + 1;
    };
    outcome<int> out;
    drive(top(), out);
    EXPECT_FALSE(out.done);
    EXPECT_EQ(ev.waiting(), 1u);
    EXPECT_THAT(trace, ElementsAre("leaf-wait"));
    ev.set();
    ASSERT_TRUE(out.done);
    EXPECT_EQ(out.value, 11);
    EXPECT_THAT(trace, ElementsAre("leaf-wait", "leaf-resumed", "mid", "top"));
}

TEST(task, exception_after_suspension_propagates) {
    event ev;
    auto leaf = [](event& e) -> task<int> {
        co_await e;
        throw std::runtime_error("late");
    };
    auto top = [&leaf](event& e) -> task<int> { co_return co_await leaf(e); };
    outcome<int> out;
    drive(top(ev), out);
    EXPECT_FALSE(out.done);
    ev.set();
    ASSERT_TRUE(out.done);
    ASSERT_TRUE(out.error);
    EXPECT_EQ(error_message(out.error), "late");
}

TEST(task, destroying_or_overwriting_a_task_destroys_its_frame) {
    auto token = std::make_shared<int>(0);
    auto hold = [](std::shared_ptr<int> p) -> task<void> {
        ++*p;
        co_return;
    };
    {
        task<void> t = hold(token);
        EXPECT_EQ(token.use_count(), 2) << "the frame owns a copy of the argument";
        task<void> moved = std::move(t);
        EXPECT_EQ(token.use_count(), 2) << "moving transfers the frame, no copy";
    }
    EXPECT_EQ(token.use_count(), 1) << "destroying an unstarted task frees its frame";
    EXPECT_EQ(*token, 0) << "and never runs it";

    auto other = std::make_shared<int>(0);
    task<void> a = hold(token);
    task<void> b = hold(other);
    EXPECT_EQ(token.use_count(), 2);
    a = std::move(b);
    EXPECT_EQ(token.use_count(), 1) << "move assignment destroys the overwritten frame";
    EXPECT_EQ(other.use_count(), 2);
    outcome<void> out;
    drive(std::move(a), out);
    EXPECT_TRUE(out.done);
    EXPECT_EQ(*other, 1);
    EXPECT_EQ(other.use_count(), 1) << "the driver destroyed the finished task";
}

// ---------------------------------------------------------------------------------------------------------------
// gate / spawn

// Silences the "detached task failed" error lines while a test deliberately throws from spawned work.
class quiet_log {
public:
    quiet_log() : saved_(log::current_level()) { log::set_level(log::level::off); }
    ~quiet_log() { log::set_level(saved_); }

private:
    log::level saved_;
};

TEST(gate, spawn_runs_eagerly_until_first_suspension) {
    gate g;
    event ev;
    int step = 0;
    auto work = [&step](event& e) -> task<void> {
        step = 1;
        co_await e;
        step = 2;
    };
    EXPECT_TRUE(spawn(g, work(ev)));
    EXPECT_EQ(step, 1);
    EXPECT_EQ(g.count(), 1u);
    ev.set();
    EXPECT_EQ(step, 2);
    EXPECT_EQ(g.count(), 0u);
}

TEST(gate, synchronous_task_leaves_gate_immediately) {
    gate g;
    int runs = 0;
    auto work = [&runs]() -> task<void> {
        ++runs;
        co_await value_of(1);
        ++runs;
    };
    EXPECT_TRUE(spawn(g, work()));
    EXPECT_TRUE(spawn(g, work()));
    EXPECT_EQ(runs, 4);
    EXPECT_EQ(g.count(), 0u);
    EXPECT_FALSE(g.closed());
}

TEST(gate, counts_each_spawned_task_and_close_waits_for_the_last) {
    gate g;
    event ev[3];
    int finished = 0;
    auto work = [&finished](event& e) -> task<void> {
        co_await e;
        ++finished;
    };
    for (auto& e : ev)
        ASSERT_TRUE(spawn(g, work(e)));
    EXPECT_EQ(g.count(), 3u);

    bool closed = false;
    auto closer = [&]() -> task<void> {
        co_await g.close();
        closed = true;
    };
    outcome<void> out;
    drive(closer(), out);
    EXPECT_TRUE(g.closed());
    EXPECT_FALSE(closed) << "close() must wait for running tasks";

    ev[1].set();
    EXPECT_EQ(g.count(), 2u);
    EXPECT_EQ(finished, 1);
    EXPECT_FALSE(closed);
    ev[0].set();
    EXPECT_EQ(g.count(), 1u);
    EXPECT_FALSE(closed);
    ev[2].set();
    EXPECT_EQ(g.count(), 0u);
    EXPECT_EQ(finished, 3);
    EXPECT_TRUE(closed);
    EXPECT_TRUE(out.done);
}

TEST(gate, close_on_idle_gate_completes_immediately) {
    gate g;
    bool closed = false;
    auto closer = [&]() -> task<void> {
        co_await g.close();
        closed = true;
    };
    outcome<void> out;
    drive(closer(), out);
    EXPECT_TRUE(closed);
    EXPECT_TRUE(g.closed());
}

TEST(gate, spawn_after_close_is_refused_and_task_never_runs) {
    gate g;
    event ev;
    auto blocker = [](event& e) -> task<void> { co_await e; };
    ASSERT_TRUE(spawn(g, blocker(ev)));
    bool closed = false;
    auto closer = [&]() -> task<void> {
        co_await g.close();
        closed = true;
    };
    outcome<void> out;
    drive(closer(), out);
    ASSERT_TRUE(g.closed());

    auto token = std::make_shared<int>(0);
    auto late = [](std::shared_ptr<int> p) -> task<void> {
        ++*p;
        co_return;
    };
    EXPECT_FALSE(spawn(g, late(token)));
    EXPECT_EQ(*token, 0) << "refused task must not run";
    EXPECT_EQ(token.use_count(), 1) << "refused task's frame must be destroyed";
    EXPECT_EQ(g.count(), 1u);

    ev.set();
    EXPECT_TRUE(closed);
    EXPECT_FALSE(spawn(g, late(token))) << "still refused after draining";
    EXPECT_EQ(*token, 0);
    EXPECT_EQ(g.count(), 0u);
}

TEST(gate, throwing_task_still_leaves_the_gate) {
    quiet_log quiet;
    gate g;
    event ev;
    auto eager_throw = []() -> task<void> {
        throw std::runtime_error("spawned failure");
        co_return;
    };
    auto late_throw = [](event& e) -> task<void> {
        co_await e;
        co_await throws_void();
    };
    EXPECT_TRUE(spawn(g, eager_throw()));
    EXPECT_EQ(g.count(), 0u);
    EXPECT_TRUE(spawn(g, late_throw(ev)));
    EXPECT_EQ(g.count(), 1u);
    bool closed = false;
    auto closer = [&]() -> task<void> {
        co_await g.close();
        closed = true;
    };
    outcome<void> out;
    drive(closer(), out);
    EXPECT_FALSE(closed);
    ev.set();
    EXPECT_EQ(g.count(), 0u);
    EXPECT_TRUE(closed);
}

// ---------------------------------------------------------------------------------------------------------------
// spsc_queue, single thread

std::vector<uint32_t> drain_all(spsc_queue<uint32_t>& q, size_t max) {
    std::vector<uint32_t> out;
    const size_t n = q.drain([&out](uint32_t v) { out.push_back(v); }, max);
    EXPECT_EQ(n, out.size());
    return out;
}

TEST(spsc_queue, capacity_is_reported) {
    EXPECT_EQ(spsc_queue<uint32_t>(1).capacity(), 1u);
    EXPECT_EQ(spsc_queue<uint32_t>(4).capacity(), 4u);
    EXPECT_EQ(spsc_queue<uint32_t>(1024).capacity(), 1024u);
}

TEST(spsc_queue, new_queue_is_empty) {
    spsc_queue<uint32_t> q(8);
    EXPECT_TRUE(q.empty_for_consumer());
    EXPECT_FALSE(q.publish()) << "nothing staged";
    EXPECT_TRUE(drain_all(q, 100).empty());
}

TEST(spsc_queue, push_refused_when_full_and_item_not_taken) {
    spsc_queue<uint32_t> q(4);
    for (uint32_t i = 0; i < 4; ++i)
        EXPECT_TRUE(q.try_push(i)) << i;
    EXPECT_FALSE(q.try_push(99));
    EXPECT_TRUE(q.publish());
    EXPECT_FALSE(q.try_push(99)) << "publishing does not free space";
    EXPECT_THAT(drain_all(q, 100), ElementsAre(0u, 1u, 2u, 3u));
    EXPECT_TRUE(q.empty_for_consumer());
    EXPECT_FALSE(q.publish());
}

TEST(spsc_queue, staged_items_invisible_until_publish) {
    spsc_queue<uint32_t> q(8);
    ASSERT_TRUE(q.try_push(10));
    ASSERT_TRUE(q.try_push(11));
    EXPECT_TRUE(q.empty_for_consumer());
    EXPECT_TRUE(drain_all(q, 100).empty());
    EXPECT_TRUE(q.publish());
    EXPECT_FALSE(q.publish()) << "second publish has nothing new";
    EXPECT_FALSE(q.empty_for_consumer());
    ASSERT_TRUE(q.try_push(12)); // staged after the publish
    EXPECT_THAT(drain_all(q, 100), ElementsAre(10u, 11u));
    EXPECT_TRUE(q.empty_for_consumer());
    EXPECT_TRUE(q.publish());
    EXPECT_THAT(drain_all(q, 100), ElementsAre(12u));
}

TEST(spsc_queue, drain_respects_max) {
    spsc_queue<uint32_t> q(8);
    for (uint32_t i = 0; i < 5; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    EXPECT_TRUE(drain_all(q, 0).empty());
    EXPECT_THAT(drain_all(q, 2), ElementsAre(0u, 1u));
    EXPECT_FALSE(q.empty_for_consumer());
    EXPECT_THAT(drain_all(q, 2), ElementsAre(2u, 3u));
    EXPECT_THAT(drain_all(q, 2), ElementsAre(4u));
    EXPECT_TRUE(q.empty_for_consumer());
}

TEST(spsc_queue, draining_frees_space_for_the_producer) {
    spsc_queue<uint32_t> q(4);
    for (uint32_t i = 0; i < 4; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    EXPECT_THAT(drain_all(q, 3), ElementsAre(0u, 1u, 2u));
    for (uint32_t i = 4; i < 7; ++i)
        EXPECT_TRUE(q.try_push(i)) << i;
    EXPECT_FALSE(q.try_push(7));
    q.publish();
    EXPECT_THAT(drain_all(q, 100), ElementsAre(3u, 4u, 5u, 6u));
}

TEST(spsc_queue, wraps_around_many_times_in_order) {
    spsc_queue<uint32_t> q(4);
    uint32_t next_push = 0, next_pop = 0;
    for (int round = 0; round < 1000; ++round) {
        const int k = 1 + round % 4;
        for (int i = 0; i < k; ++i)
            ASSERT_TRUE(q.try_push(next_push++));
        q.publish();
        for (uint32_t v : drain_all(q, 100))
            ASSERT_EQ(v, next_pop++);
    }
    EXPECT_EQ(next_pop, next_push);
    EXPECT_GT(next_push, 4u * 100);
}

// drain_until with items 0..n-1 published; cut() is true once `cut_after` items were taken, and the items must_take
// says may not wait are those in `must`. Returns what it took; `rest` gets what a later plain drain takes, `looks`
// how many items must_take looked at.
std::vector<uint32_t> drain_cut(uint32_t n, size_t cut_after, std::vector<uint32_t> must, std::vector<uint32_t>& rest,
                                int& looks, uint32_t start = 0) {
    spsc_queue<uint32_t> q(16, start);
    for (uint32_t i = 0; i < n; ++i)
        EXPECT_TRUE(q.try_push(i));
    q.publish();
    std::vector<uint32_t> out;
    looks = 0;
    bool left = false;
    const size_t taken =
        q.drain_until([&](uint32_t v) { out.push_back(v); }, 100, [&] { return out.size() >= cut_after; },
                      [&](uint32_t v) {
                          ++looks;
                          return std::find(must.begin(), must.end(), v) != must.end();
                      },
                      [](uint32_t&) {}, left);
    EXPECT_EQ(taken, out.size());
    rest = drain_all(q, 100);
    EXPECT_EQ(left, !rest.empty()) << "says whether it left items";
    return out;
}

TEST(spsc_queue, drain_until_stops_where_cut_says) {
    std::vector<uint32_t> rest;
    int looks = 0;
    EXPECT_THAT(drain_cut(6, 2, {}, rest, looks), ElementsAre(0u, 1u));
    EXPECT_THAT(rest, ElementsAre(2u, 3u, 4u, 5u)) << "the rest waits, in order";
    EXPECT_EQ(looks, 4) << "the items after the cut, once each";
    EXPECT_TRUE(drain_cut(6, 0, {}, rest, looks).empty());
    EXPECT_EQ(rest.size(), 6u);
    EXPECT_THAT(drain_cut(3, 10, {}, rest, looks), ElementsAre(0u, 1u, 2u)) << "never cut: all taken";
    EXPECT_TRUE(rest.empty());
    EXPECT_EQ(looks, 0) << "nothing looked at without a cut";
}

TEST(spsc_queue, drain_until_takes_through_the_last_item_that_may_not_wait) {
    std::vector<uint32_t> rest;
    int looks = 0;
    EXPECT_THAT(drain_cut(8, 2, {4}, rest, looks), ElementsAre(0u, 1u, 2u, 3u, 4u));
    EXPECT_THAT(rest, ElementsAre(5u, 6u, 7u));
    EXPECT_EQ(looks, 6);
    EXPECT_THAT(drain_cut(8, 2, {3, 6}, rest, looks), ElementsAre(0u, 1u, 2u, 3u, 4u, 5u, 6u));
    EXPECT_THAT(rest, ElementsAre(7u));
    EXPECT_EQ(looks, 6) << "looked through once, not again at the first item found";
    EXPECT_EQ(drain_cut(8, 2, {7}, rest, looks).size(), 8u);
    EXPECT_TRUE(rest.empty());
    EXPECT_THAT(drain_cut(8, 5, {1}, rest, looks), ElementsAre(0u, 1u, 2u, 3u, 4u)) << "one taken before the cut";
    EXPECT_THAT(rest, ElementsAre(5u, 6u, 7u));
    EXPECT_EQ(looks, 3);
    // Indices that wrap round 2^32 (and slots round the ring): 0xfffffffc up to 3.
    EXPECT_THAT(drain_cut(8, 1, {5}, rest, looks, 0xfffffffcu), ElementsAre(0u, 1u, 2u, 3u, 4u, 5u));
    EXPECT_THAT(rest, ElementsAre(6u, 7u));
    EXPECT_THAT(drain_cut(8, 1, {}, rest, looks, 0xfffffffcu), ElementsAre(0u));
    EXPECT_EQ(rest.size(), 7u);
    EXPECT_EQ(looks, 7);
}

TEST(spsc_queue, drain_until_handles_ahead_only_what_follows_every_item_that_may_not_wait) {
    // 1, 4 and 6 may be handled ahead (a route update, say), 3 may not wait: 1 is taken in its place, after 0; 4 and 6
    // are handled once 3 is taken, ahead of 5.
    spsc_queue<uint32_t> q(8);
    for (uint32_t i = 0; i < 7; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    std::vector<std::string> events;
    size_t taken = 0;
    bool left = false;
    EXPECT_EQ(q.drain_until(
                  [&](uint32_t v) {
                      events.push_back("take " + std::to_string(v));
                      ++taken;
                  },
                  100, [&] { return taken != 0; }, [](uint32_t v) { return v == 3; },
                  [&](uint32_t& v) {
                      if (v != 1 && v != 4 && v != 6) return;
                      events.push_back("ahead " + std::to_string(v));
                      v += 100; // handled: what is taken later says so
                  },
                  left),
              4u);
    EXPECT_TRUE(left);
    EXPECT_THAT(events, ElementsAre("take 0", "take 1", "take 2", "take 3", "ahead 4", "ahead 6"));
    EXPECT_THAT(drain_all(q, 100), ElementsAre(104u, 5u, 106u));
}

TEST(spsc_queue, drain_until_looks_at_an_item_once_over_many_cuts) {
    spsc_queue<uint32_t> q(16, 0xfffffff0u);
    for (uint32_t i = 0; i < 10; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    std::vector<uint32_t> out, looked, ahead;
    const std::vector<uint32_t> must{2, 12};
    bool left = false;
    auto drain = [&](size_t at_least) {
        const size_t before = out.size();
        return q.drain_until([&](uint32_t v) { out.push_back(v); }, 100,
                             [&] { return out.size() - before >= at_least; },
                             [&](uint32_t v) {
                                 looked.push_back(v);
                                 return std::find(must.begin(), must.end(), v) != must.end();
                             },
                             [&](uint32_t& v) { ahead.push_back(v); }, left);
    };
    EXPECT_EQ(drain(1), 3u) << "through item 2";
    EXPECT_THAT(looked, ElementsAre(1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 9u));
    EXPECT_THAT(ahead, ElementsAre(3u, 4u, 5u, 6u, 7u, 8u, 9u));
    EXPECT_TRUE(left);
    EXPECT_EQ(drain(2), 2u) << "3 and 4: no later item may not wait";
    EXPECT_TRUE(left);
    for (uint32_t i = 10; i < 14; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    looked.clear();
    ahead.clear();
    EXPECT_EQ(drain(1), 8u) << "5 to 12: a new item may not wait";
    EXPECT_THAT(looked, ElementsAre(10u, 11u, 12u, 13u)) << "only the new items looked at";
    EXPECT_THAT(ahead, ElementsAre(13u)) << "only the new items after 12, and once";
    looked.clear();
    ahead.clear();
    EXPECT_EQ(drain(0), 0u);
    EXPECT_TRUE(looked.empty());
    EXPECT_TRUE(ahead.empty());
    EXPECT_TRUE(left);
    EXPECT_THAT(drain_all(q, 100), ElementsAre(13u));
    EXPECT_EQ(drain(0), 0u);
    EXPECT_FALSE(left) << "nothing left: an empty queue";
    EXPECT_EQ(out.size(), 13u);
    for (uint32_t i = 0; i < out.size(); ++i)
        EXPECT_EQ(out[i], i);
}

TEST(spsc_queue, drain_until_takes_nothing_published_after_the_tail_it_is_given) {
    spsc_queue<uint32_t> q(8);
    for (uint32_t i = 0; i < 3; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    const uint32_t tail = q.tail_for_consumer();
    for (uint32_t i = 3; i < 5; ++i)
        ASSERT_TRUE(q.try_push(i));
    q.publish();
    std::vector<uint32_t> out;
    bool left = true;
    EXPECT_EQ(q.drain_until([&](uint32_t v) { out.push_back(v); }, 100, [] { return false; },
                            [](uint32_t) { return false; }, [](uint32_t&) {}, left, tail),
              3u);
    EXPECT_THAT(out, ElementsAre(0u, 1u, 2u));
    EXPECT_FALSE(left) << "not cut";
    EXPECT_FALSE(q.empty_for_consumer());
    EXPECT_THAT(drain_all(q, 100), ElementsAre(3u, 4u));
}

TEST(spsc_queue, carries_struct_items) {
    spsc_queue<smp_msg> q(2);
    int target = 0;
    ASSERT_TRUE(q.try_push(smp_msg{7, 0xdeadbeef, &target}));
    q.publish();
    std::vector<smp_msg> got;
    EXPECT_EQ(q.drain([&got](const smp_msg& m) { got.push_back(m); }, 10), 1u);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].kind, 7u);
    EXPECT_EQ(got[0].arg, 0xdeadbeefu);
    EXPECT_EQ(got[0].ptr, &target);
}

// ---------------------------------------------------------------------------------------------------------------
// spsc_queue, two threads

TEST(spsc_queue_threads, million_items_through_small_queue_in_order) {
    constexpr uint32_t k_items = 1'000'000;
    spsc_queue<uint32_t> q(64);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::atomic<bool> timed_out{false};

    std::thread producer([&] {
        uint32_t next = 0;
        unsigned staged = 0;
        while (next < k_items) {
            if (q.try_push(next)) {
                ++next;
                // Publish in small batches so staging and the cached-head refresh are both exercised.
                if (++staged == 8) {
                    q.publish();
                    staged = 0;
                }
                continue;
            }
            q.publish(); // full: make everything visible before waiting for the consumer
            staged = 0;
            if (timed_out.load(std::memory_order_relaxed)) return;
            if (std::chrono::steady_clock::now() > deadline) {
                timed_out = true;
                return;
            }
            std::this_thread::yield();
        }
        q.publish();
    });

    uint32_t expected = 0;
    uint32_t out_of_order = 0;
    uint32_t first_bad_expected = 0, first_bad_got = 0;
    size_t max_batch = 0;
    while (expected < k_items) {
        const size_t n = q.drain(
            [&](uint32_t v) {
                if (v != expected && out_of_order++ == 0) {
                    first_bad_expected = expected;
                    first_bad_got = v;
                }
                expected = v + 1; // resynchronise so one fault is not reported a million times
            },
            48);
        max_batch = std::max(max_batch, n);
        if (n == 0) {
            if (timed_out.load(std::memory_order_relaxed)) break;
            if (std::chrono::steady_clock::now() > deadline) {
                timed_out = true;
                break;
            }
            std::this_thread::yield();
        }
    }
    producer.join();

    ASSERT_FALSE(timed_out) << "stalled at item " << expected;
    EXPECT_EQ(out_of_order, 0u) << "first bad: expected " << first_bad_expected << " got " << first_bad_got;
    EXPECT_EQ(expected, k_items);
    EXPECT_LE(max_batch, 48u) << "drain exceeded max";
    EXPECT_TRUE(q.empty_for_consumer());
}

// ---------------------------------------------------------------------------------------------------------------
// smp

TEST(smp, builds_a_queue_per_ordered_pair) {
    smp s(3, 16);
    EXPECT_EQ(s.size(), 3u);
    std::vector<spsc_queue<smp_msg>*> seen;
    for (unsigned from = 0; from < 3; ++from) {
        for (unsigned to = 0; to < 3; ++to) {
            auto* q = &s.queue(from, to);
            EXPECT_EQ(q->capacity(), 16u);
            for (auto* other : seen)
                EXPECT_NE(q, other) << from << "->" << to;
            seen.push_back(q);
        }
    }
    EXPECT_EQ(&s.queue(1, 2), &s.queue(1, 2)) << "stable identity";
}

TEST(smp, messages_stay_on_their_pair) {
    smp s(3, 8);
    ASSERT_TRUE(s.queue(0, 2).try_push(smp_msg{1, 2, nullptr}));
    s.queue(0, 2).publish();
    for (unsigned from = 0; from < 3; ++from)
        for (unsigned to = 0; to < 3; ++to)
            EXPECT_EQ(s.queue(from, to).empty_for_consumer(), !(from == 0 && to == 2)) << from << "->" << to;
}

TEST(smp, has_incoming_sees_published_messages_from_other_shards) {
    smp s(3, 8);
    for (unsigned i = 0; i < 3; ++i)
        EXPECT_FALSE(s.has_incoming(i));

    ASSERT_TRUE(s.queue(0, 1).try_push(smp_msg{1, 0, nullptr}));
    EXPECT_FALSE(s.has_incoming(1)) << "staged but unpublished";
    s.queue(0, 1).publish();
    EXPECT_FALSE(s.has_incoming(0));
    EXPECT_TRUE(s.has_incoming(1));
    EXPECT_FALSE(s.has_incoming(2));

    ASSERT_TRUE(s.queue(2, 1).try_push(smp_msg{2, 0, nullptr}));
    s.queue(2, 1).publish();
    EXPECT_EQ(s.queue(0, 1).drain([](const smp_msg&) {}, 10), 1u);
    EXPECT_TRUE(s.has_incoming(1)) << "the 2->1 queue still holds a message";
    EXPECT_EQ(s.queue(2, 1).drain([](const smp_msg&) {}, 10), 1u);
    EXPECT_FALSE(s.has_incoming(1));

    // A shard's own diagonal queue is not incoming work from another shard.
    ASSERT_TRUE(s.queue(2, 2).try_push(smp_msg{3, 0, nullptr}));
    s.queue(2, 2).publish();
    EXPECT_FALSE(s.has_incoming(2));
}

TEST(smp, claim_wake_is_true_once_per_sleep) {
    smp s(2, 8);
    EXPECT_FALSE(s.claim_wake(0)) << "not sleeping: no wake";

    s.set_sleeping(0, true);
    EXPECT_FALSE(s.claim_wake(1)) << "shard 1 is not sleeping";
    EXPECT_TRUE(s.claim_wake(0));
    EXPECT_FALSE(s.claim_wake(0)) << "the first claim consumed the flag";

    s.set_sleeping(1, true);
    s.set_sleeping(1, false);
    EXPECT_FALSE(s.claim_wake(1)) << "flag cleared by the consumer itself";

    int woken = 0;
    s.set_waker(1, [&woken] { ++woken; });
    s.wake(1);
    EXPECT_EQ(woken, 1) << "wake() is unconditional";
}

TEST(smp_outbox, publish_wakes_each_sleeping_destination_once_through_the_given_waker) {
    smp s(3, 8);
    int hook[3] = {0, 0, 0};
    for (unsigned i = 0; i < 3; ++i)
        s.set_waker(i, [&hook, i] { ++hook[i]; });
    smp_outbox out(s, 0);
    std::vector<unsigned> woken;
    auto wake = [&woken](unsigned to) { woken.push_back(to); };

    s.set_sleeping(1, true);
    out.push(1, smp_msg{1, 0, nullptr});
    out.push(1, smp_msg{2, 0, nullptr});
    out.push(2, smp_msg{3, 0, nullptr});
    out.publish(wake);
    EXPECT_EQ(woken, std::vector<unsigned>{1}) << "only the sleeping destination, once for two messages";
    EXPECT_TRUE(s.has_incoming(1));
    EXPECT_TRUE(s.has_incoming(2));

    out.push(1, smp_msg{4, 0, nullptr});
    out.publish(wake);
    EXPECT_EQ(woken.size(), 1u) << "the flag was consumed by the first wake";
    EXPECT_EQ(hook[1] + hook[2], 0) << "the hooks are the waker's business, not the outbox's";
}

TEST(smp_outbox, wakes_only_once_every_destination_is_published) {
    // A wake-up may force the sender's submission (its last free SQE): what that submits (a SUBACK) must find the
    // messages to every destination visible, not only to those woken before it.
    smp s(3, 8);
    smp_outbox out(s, 0);
    s.set_sleeping(1, true);
    s.set_sleeping(2, true);
    out.push(1, smp_msg{1, 0, nullptr});
    out.push(2, smp_msg{2, 0, nullptr});
    std::vector<std::pair<unsigned, bool>> seen; // (woken, every destination had its message visible then)
    out.publish([&](unsigned to) { seen.emplace_back(to, s.has_incoming(1) && s.has_incoming(2)); });
    EXPECT_EQ(seen, (std::vector<std::pair<unsigned, bool>>{{1, true}, {2, true}}));
}

// Drains up to max messages of queue(from, to) as the receiving shard does: each carries its bytes in arg, the
// messages and bytes taken are reported once per batch. Returns note_taken's answer (the sender asked to be woken).
bool take(smp& s, unsigned from, unsigned to, size_t max = SIZE_MAX) {
    uint64_t w = 0;
    const size_t n = s.queue(from, to).drain([&](const smp_msg& m) { w += m.arg; }, max);
    return s.note_taken(from, to, n, w);
}

TEST(smp_outbox, weight_in_flight_counts_queue_and_backlog_until_taken) {
    smp s(3, 2);
    smp_outbox out(s, 0);
    auto nowake = [](unsigned) {};
    EXPECT_EQ(out.max_in_flight(), 0u);
    EXPECT_FALSE(out.weight_moved());
    out.push(1, smp_msg{1, 0, nullptr}); // holds no bytes (a route, an admin call), but counts one
    EXPECT_TRUE(out.weight_moved());
    EXPECT_EQ(out.max_in_flight(), 1u);
    EXPECT_FALSE(out.weight_moved());
    for (int i = 0; i < 5; ++i)
        out.push(1, smp_msg{2, 99, nullptr}, 99); // one in the queue of two, four in the backlog
    out.push(2, smp_msg{2, 29, nullptr}, 29);
    out.publish(nowake);
    EXPECT_TRUE(out.weight_moved());
    EXPECT_EQ(out.max_in_flight(), 501u) << "the worst destination, backlog included";
    EXPECT_FALSE(out.weight_moved());

    take(s, 0, 1);
    EXPECT_EQ(out.max_in_flight(), 400u) << "the weightless message and one of 99 bytes were taken";
    out.publish(nowake); // two more from the backlog into the queue
    take(s, 0, 1);
    out.publish(nowake);
    take(s, 0, 1);
    EXPECT_EQ(out.max_in_flight(), 30u) << "destination 2 now holds the most";
    take(s, 0, 2);
    EXPECT_EQ(out.max_in_flight(), 0u);
    EXPECT_FALSE(out.pending());
}

TEST(smp_outbox, a_waiting_sender_is_woken_once_its_destination_took_enough) {
    smp s(2, 64);
    smp_outbox out(s, 0);
    auto nowake = [](unsigned) {};
    for (int i = 0; i < 10; ++i)
        out.push(1, smp_msg{2, 99, nullptr}, 99); // 100 each, the message included
    out.publish(nowake);
    EXPECT_FALSE(out.arm_wakes(1000)) << "1000 in flight is not more than the level: nothing to wait for";
    ASSERT_TRUE(out.arm_wakes(400)); // woken once 600 of the 1000 were taken
    EXPECT_FALSE(out.woken());

    EXPECT_FALSE(take(s, 0, 1, 5)) << "500 taken: 500 still in flight, over the level";
    EXPECT_FALSE(out.woken());
    EXPECT_TRUE(take(s, 0, 1, 1)) << "600 taken: down to the level";
    EXPECT_TRUE(out.woken());
    EXPECT_FALSE(take(s, 0, 1, 1)) << "the request was used up by the batch that met it";

    ASSERT_TRUE(out.arm_wakes(100)); // 300 in flight
    out.disarm_wakes();
    EXPECT_FALSE(take(s, 0, 1)) << "a withdrawn request wakes no one";
}

TEST(smp_outbox, a_waiting_sender_with_a_backlog_is_woken_when_the_queue_is_empty) {
    // Only the sender moves its backlog into the queue: were it to wait for the level alone, a backlog heavier than
    // the level would leave it asleep with its destination idle.
    smp s(2, 2);
    smp_outbox out(s, 0);
    for (int i = 0; i < 8; ++i)
        out.push(1, smp_msg{2, 99, nullptr}, 99); // two queued, six in the backlog
    out.publish([](unsigned) {});
    ASSERT_TRUE(out.arm_wakes(100));
    EXPECT_TRUE(take(s, 0, 1)) << "the queue's 200 taken: 600 still here, but the sender must move them";
    EXPECT_TRUE(out.woken());
    EXPECT_TRUE(out.pending());
}

TEST(smp_outbox, behind_says_whether_messages_backlogged_up_to_a_mark_still_wait) {
    // What an ack waits for (shard::send_after_backlog): the messages its packet put in a backlog, to any destination,
    // and not those that came later.
    smp s(3, 2);
    smp_outbox out(s, 0);
    auto nowake = [](unsigned) {};
    out.push(1, smp_msg{1, 0, nullptr});
    out.push(1, smp_msg{1, 0, nullptr});
    EXPECT_EQ(out.backlogged(), 0u) << "both fit the queue";
    EXPECT_FALSE(out.behind(out.backlogged()));
    out.push(1, smp_msg{1, 0, nullptr}); // destination 1: the third waits
    out.push(2, smp_msg{1, 0, nullptr}); // destination 2: queued
    const uint64_t mark = out.backlogged();
    EXPECT_EQ(mark, 1u);
    out.push(1, smp_msg{1, 0, nullptr}); // behind the mark
    out.publish(nowake);
    EXPECT_TRUE(out.behind(mark));
    take(s, 0, 1, 1);
    out.publish(nowake); // the marked message goes into the queue, the later one still waits
    EXPECT_FALSE(out.behind(mark));
    EXPECT_TRUE(out.behind(out.backlogged()));
    take(s, 0, 1, 2);
    out.publish(nowake);
    EXPECT_FALSE(out.behind(out.backlogged()));
    EXPECT_FALSE(out.pending());
}

TEST(smp_outbox, a_backlog_of_weightless_messages_alone_is_waited_for_too) {
    // A shard that is not holding back but has a backlog (routes, admin calls, publishes under the byte limit) sleeps
    // until its destination has emptied the queue: the request needs no level, and counts messages.
    smp s(2, 2);
    smp_outbox out(s, 0);
    for (int i = 0; i < 7; ++i)
        out.push(1, smp_msg{1, 0, nullptr});
    out.publish([](unsigned) {});
    ASSERT_TRUE(out.pending());
    EXPECT_FALSE(out.arm_wakes(smp_outbox::no_level)) << "no level to be over";
    EXPECT_FALSE(out.woken());
    EXPECT_FALSE(take(s, 0, 1, 1)) << "one of the two queued taken: the queue is not empty yet";
    EXPECT_FALSE(out.woken());
    EXPECT_TRUE(take(s, 0, 1, 1)) << "the queue is empty: the sender must refill it";
    EXPECT_TRUE(out.woken());

    out.publish([](unsigned) {}); // two more queued, three left here
    out.arm_wakes(smp_outbox::no_level);
    EXPECT_FALSE(out.woken()) << "a new request, at the end of the refilled queue";
    out.disarm_wakes();
    EXPECT_FALSE(take(s, 0, 1)) << "a withdrawn request wakes no one";
    out.disarm_wakes(); // nothing standing: no store
}

TEST(smp_outbox, a_sender_waiting_for_a_mark_of_its_own_is_woken_once_it_is_taken) {
    // shard::ease_transit: a client waits until its destination has taken what was sent up to a mark (sent()), with
    // no level and no backlog; the smallest of several marks per destination is the one asked for.
    smp s(3, 64);
    smp_outbox out(s, 0);
    for (int i = 0; i < 4; ++i)
        out.push(1, smp_msg{2, 9, nullptr}, 9); // 10 each
    const uint64_t mark = out.sent(1);
    EXPECT_EQ(mark, 40u);
    for (int i = 0; i < 4; ++i)
        out.push(1, smp_msg{2, 9, nullptr}, 9);
    out.publish([](unsigned) {});
    std::vector<uint64_t> marks(3, smp_outbox::no_mark);
    marks[1] = mark;
    EXPECT_FALSE(out.arm_wakes(smp_outbox::no_level, marks)) << "no level to be over";
    EXPECT_FALSE(out.woken());
    EXPECT_FALSE(take(s, 0, 1, 3)) << "30 of the 40 taken";
    EXPECT_FALSE(out.woken());
    EXPECT_TRUE(take(s, 0, 1, 1)) << "the mark reached: the sender is woken, though 40 are still in flight";
    EXPECT_TRUE(out.woken());
    EXPECT_EQ(s.taken(0, 1), mark);

    marks[1] = out.sent(1);
    out.arm_wakes(smp_outbox::no_level, marks);
    EXPECT_FALSE(out.woken()) << "a mark further on";
    out.disarm_wakes();
    EXPECT_FALSE(take(s, 0, 1)) << "a withdrawn request wakes no one";
    marks[1] = mark;
    out.arm_wakes(smp_outbox::no_level, marks);
    EXPECT_TRUE(out.woken()) << "a mark taken already: the sender must not sleep on it";
}

// What a two-thread run of the sleep protocol saw from the sender's side.
struct waiting_run {
    uint32_t received = 0, out_of_order = 0, lost_wakeups = 0, bad_marks = 0, sleeps = 0;
};

// The sender pushes k_items messages of `bytes` each in bursts of 100 against a queue of 64, and waits as a shard
// does: with limit != 0, past `limit` in flight it holds back until its destination has taken it down to half;
// with limit == 0, whenever it has a backlog, until the queue is empty (arm_wakes, then the sleep flag, then
// woken()). The receiver drains in small batches and wakes it when note_taken says so. A lost wake-up shows as a
// sleep that times out.
waiting_run run_waiting_sender(uint32_t k_items, uint32_t bytes, uint64_t limit) {
    smp s(2, 64);
    std::counting_semaphore<> sem(0);
    s.set_waker(0, [&sem] { sem.release(); });
    std::atomic<bool> stop{false};
    waiting_run r;
    uint32_t sent = 0;
    auto must_wait = [&](smp_outbox& out) { return limit != 0 ? out.max_in_flight() > limit / 2 : out.pending(); };

    std::thread sender([&] {
        smp_outbox out(s, 0);
        while (sent < k_items && r.lost_wakeups <= 3) {
            for (int i = 0; i < 100 && sent < k_items; ++i, ++sent)
                out.push(1, smp_msg{sent, bytes, nullptr}, bytes);
            out.publish([&s](unsigned to) { s.wake(to); });
            if (limit != 0 && out.max_in_flight() <= limit) continue;
            while (must_wait(out)) {
                if (!out.arm_wakes(limit != 0 ? limit / 2 : smp_outbox::no_level) && limit != 0) {
                    // The receiver may have taken enough since max_in_flight looked, but what is in flight only
                    // shrinks: a look now must agree that the hold is over.
                    if (out.max_in_flight() > limit / 2) ++r.bad_marks;
                    break;
                }
                s.set_sleeping(0, true);
                if (out.woken()) {
                    s.set_sleeping(0, false);
                    out.publish([&s](unsigned to) { s.wake(to); });
                    continue;
                }
                ++r.sleeps;
                if (!sem.try_acquire_for(std::chrono::seconds(10))) {
                    ++r.lost_wakeups;
                    s.set_sleeping(0, false);
                    if (r.lost_wakeups > 3) break;
                }
                out.publish([&s](unsigned to) { s.wake(to); }); // the backlog moves only from here
            }
            out.disarm_wakes();
        }
        // The last burst may still wait here with no one to wake the receiver for it.
        while (out.pending() && !stop.load(std::memory_order_relaxed)) {
            out.publish([&s](unsigned to) { s.wake(to); });
            std::this_thread::yield();
        }
    });

    std::thread receiver([&] {
        while (r.received < k_items && !stop.load(std::memory_order_relaxed)) {
            uint64_t w = 0;
            const size_t n = s.queue(0, 1).drain(
                [&](const smp_msg& m) {
                    if (m.kind != r.received) ++r.out_of_order;
                    r.received = m.kind + 1;
                    w += m.arg;
                },
                5);
            if (n != 0 && s.note_taken(0, 1, n, w) && s.claim_wake(0)) s.wake(0);
            std::this_thread::yield();
        }
    });
    sender.join();
    if (r.lost_wakeups > 3) stop = true;
    receiver.join();
    return r;
}

// What both modes must show: every message once and in order, no wake-up lost, and a sender that had to sleep.
void expect_clean_run(const waiting_run& r, uint32_t k_items) {
    EXPECT_EQ(r.lost_wakeups, 0u);
    EXPECT_EQ(r.bad_marks, 0u);
    EXPECT_EQ(r.out_of_order, 0u);
    EXPECT_EQ(r.received, k_items);
    EXPECT_GT(r.sleeps, 10u) << "the sender should have had to wait";
}

TEST(smp_outbox, a_sender_holding_back_loses_no_wakeup_across_threads) {
    // A backlog heavier than the level forms: bursts of 100 against a queue of 64.
    expect_clean_run(run_waiting_sender(50'000, 9, 64 * 10), 50'000);
}

TEST(smp_outbox, a_sender_with_a_backlog_sleeps_and_loses_no_wakeup_across_threads) {
    expect_clean_run(run_waiting_sender(50'000, 0, 0), 50'000);
}

TEST(smp, sleep_protocol_loses_no_wakeup_across_threads) {
    constexpr uint32_t k_items = 20'000;
    smp s(2, 16);
    std::counting_semaphore<> sem(0);
    s.set_waker(1, [&sem] { sem.release(); });
    std::atomic<bool> stop{false};

    std::thread producer([&] {
        uint32_t next = 0;
        while (next < k_items && !stop.load(std::memory_order_relaxed)) {
            auto& q = s.queue(0, 1);
            while (next < k_items && q.try_push(smp_msg{next, 0, nullptr}))
                ++next;
            if (q.publish() && s.claim_wake(1)) s.wake(1);
            std::this_thread::yield();
        }
    });

    uint32_t received = 0, out_of_order = 0, lost_wakeups = 0;
    while (received < k_items) {
        const size_t n = s.queue(0, 1).drain(
            [&](const smp_msg& m) {
                if (m.kind != received) ++out_of_order;
                received = m.kind + 1;
            },
            64);
        if (n > 0) continue;
        s.set_sleeping(1, true);
        if (s.has_incoming(1)) {
            s.set_sleeping(1, false);
            continue;
        }
        // A correct protocol always gets a release for a publish that happened after the flag was set.
        if (!sem.try_acquire_for(std::chrono::seconds(10))) {
            ++lost_wakeups;
            s.set_sleeping(1, false);
            if (lost_wakeups > 3) break;
        }
    }
    stop = true;
    producer.join();
    EXPECT_EQ(lost_wakeups, 0u);
    EXPECT_EQ(out_of_order, 0u);
    EXPECT_EQ(received, k_items);
}

} // namespace
} // namespace ringmq::reactor::test
