// The io module on a real ring: timers, the cross-thread wakers (eventfd and ring messages), the provided buffer ring
// with a multishot recv, and the awaitable recv/send ops. Needs a kernel with io_uring (the broker refuses to start
// without one anyway).
#include "io/buffer_ring.hpp"
#include "io/ops.hpp"
#include "io/ring.hpp"
#include "io/timer.hpp"
#include "io/waker.hpp"
#include "reactor/gate.hpp"
#include "reactor/smp.hpp"
#include "reactor/task.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

using namespace ringmq;

namespace {

// The feature cap (node.io_uring_kernel) is process-wide: a test that sets one holds this, so that it is lifted
// whatever happens there.
struct feature_cap_reset {
    ~feature_cap_reset() { io::limit_features_to(0, 0); }
};

// Runs the ring until pred() or the deadline; returns pred().
template <class P> bool run_until(io::ring& r, P pred, int timeout_ms = 3000) {
    io::reaped batch[64];
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!pred() && std::chrono::steady_clock::now() < end) {
        r.submit_and_wait(50);
        const unsigned n = r.reap(batch, 64);
        for (unsigned i = 0; i < n; ++i)
            if (batch[i].c) batch[i].c->on_complete(batch[i].res, batch[i].flags);
    }
    return pred();
}

reactor::task<void> sleeper(io::ring& r, uint32_t ms, bool& elapsed, bool& done) {
    elapsed = co_await io::sleep_for(r, ms);
    done = true;
}

reactor::task<void> echo_once(io::ring& r, int fd, std::string& got, bool& done) {
    char buf[64];
    const int n = co_await io::recv_some(r, fd, buf, sizeof buf, 0);
    if (n > 0) {
        got.assign(buf, static_cast<size_t>(n));
        const int w = co_await io::send_some(r, fd, buf, static_cast<size_t>(n));
        EXPECT_EQ(w, n);
    }
    done = true;
}

// Writes text into peer and runs echo_once on fd until it is done; returns what it received ("" if it never was).
std::string echo_through(io::ring& r, int fd, int peer, std::string_view text) {
    reactor::gate g;
    std::string got;
    bool done = false;
    if (!reactor::spawn(g, echo_once(r, fd, got, done))) return "";
    if (write(peer, text.data(), text.size()) != static_cast<ssize_t>(text.size())) return "";
    return run_until(r, [&] { return done; }) ? got : "";
}

reactor::task<void> recv_with_timeout(io::ring& r, int fd, int& res, bool& done) {
    char buf[16];
    res = co_await io::recv_some(r, fd, buf, sizeof buf, 100);
    done = true;
}

struct recv_record final : io::completion {
    std::string data;
    int completions = 0;
    int partial = 0;            // completions that left their buffer to the kernel (IORING_CQE_F_BUF_MORE)
    std::set<uint16_t> buffers; // buffer ids seen
    bool more = true;
    io::buffer_ring* bufs = nullptr;
    void on_complete(int res, uint32_t flags) override {
        ++completions;
        more = (flags & IORING_CQE_F_MORE) != 0;
        if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
            const uint16_t bid = static_cast<uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
            buffers.insert(bid);
            if (flags & io::buffer_ring::cqe_buf_more) ++partial;
            const uint8_t* p = bufs->received(bid, static_cast<uint32_t>(res), flags);
            data.append(reinterpret_cast<const char*>(p), static_cast<size_t>(res));
            bufs->release(bid, flags);
            bufs->commit();
        }
    }
};

void arm_multishot(io::ring& r, io::buffer_ring& bufs, int fd, recv_record& rec) {
    rec.bufs = &bufs;
    io_uring_sqe* s = r.sqe();
    io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = bufs.group();
    io::set_completion(s, &rec);
}

} // namespace

TEST(Io, ProbeSucceedsOnThisKernel) {
    std::string why;
    EXPECT_TRUE(io::probe_kernel(why)) << why;
}

TEST(Io, KernelAtLeastComparesMajorThenMinorWithUname) {
    utsname u{};
    ASSERT_EQ(uname(&u), 0);
    int major = 0, minor = 0;
    ASSERT_EQ(std::sscanf(u.release, "%d.%d", &major, &minor), 2) << u.release;
    EXPECT_TRUE(io::kernel_at_least(major, minor));
    EXPECT_TRUE(io::kernel_at_least(major, 0));
    EXPECT_TRUE(io::kernel_at_least(major - 1, minor + 50)); // an older major, whatever its minor
    EXPECT_FALSE(io::kernel_at_least(major, minor + 1));
    EXPECT_FALSE(io::kernel_at_least(major + 1, 0));
}

TEST(Io, SleepForElapsesRoughlyOnTime) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    reactor::gate g;
    bool elapsed = false, done = false;
    const auto start = std::chrono::steady_clock::now();
    ASSERT_TRUE(reactor::spawn(g, sleeper(r, 50, elapsed, done)));
    ASSERT_TRUE(run_until(r, [&] { return done; }));
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(elapsed);
    EXPECT_GE(ms, 45);
    EXPECT_LT(ms, 2000);
    EXPECT_EQ(g.count(), 0u);
}

TEST(Io, WakerWakesTheRingFromAnotherThread) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    io::waker w;
    w.arm(r);
    std::thread t([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        w.wake();
    });
    io::reaped batch[8];
    const auto start = std::chrono::steady_clock::now();
    r.submit_and_wait(5000); // returns because of the wake, long before the timeout
    const unsigned n = r.reap(batch, 8);
    t.join();
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    ASSERT_GE(n, 1u);
    EXPECT_LT(ms, 2000);
    for (unsigned i = 0; i < n; ++i)
        if (batch[i].c) batch[i].c->on_complete(batch[i].res, batch[i].flags);
    EXPECT_TRUE(w.pending()); // re-armed for the next wake
    w.stop();
}

// The MQTT shards' way of waking each other: ring A messages sleeping ring B, whose thread (here the test's) returns
// from its wait with the completion on B's waker token, without B's eventfd or the smp's hook.
TEST(Io, PeerWakerWakesASleepingRingThroughItsRing) {
    io::ring b;
    std::string why;
    ASSERT_TRUE(b.init(64, why)) << why;
    // Every kernel the broker starts on (6.0+) has both (5.18, 5.17): a ring without them is a probe bug.
    ASSERT_TRUE(b.can_message()) << "no IORING_OP_MSG_RING with IORING_FEAT_CQE_SKIP on a kernel the broker accepts";
    reactor::smp s(2, 8);
    std::atomic<int> hook{0};
    io::waker wb;
    s.set_waker(1, [&] {
        ++hook;
        wb.wake();
    });
    wb.arm(b);
    wb.announce(s, 1, b);
    ASSERT_EQ(s.ring_fd(1), b.fd());

    std::atomic<bool> sent{false};
    uint64_t messaged = 0, fell_back = 0;
    std::thread t([&] {
        io::ring a; // created on the thread that submits to it (SINGLE_ISSUER)
        std::string w;
        if (!a.init(64, w)) return;
        io::peer_waker pw(s, true);
        pw.attach(a);
        const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(3);
        while (!s.claim_wake(1) && std::chrono::steady_clock::now() < end)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::this_thread::sleep_for(std::chrono::milliseconds(20)); // let the test's thread block
        pw.wake(1);
        a.submit();
        sent = true;
        run_until(
            a, [] { return false; }, 100); // a failed message would complete here and fall back
        messaged = pw.messaged();
        fell_back = pw.fell_back();
    });
    s.set_sleeping(1, true);
    const auto start = std::chrono::steady_clock::now();
    b.submit_and_wait(5000);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    io::reaped batch[8];
    const unsigned n = b.reap(batch, 8);
    for (unsigned i = 0; i < n; ++i)
        if (batch[i].c) batch[i].c->on_complete(batch[i].res, batch[i].flags);
    t.join();
    EXPECT_TRUE(sent.load());
    EXPECT_LT(ms, 2000) << "woken long before the timeout";
    EXPECT_EQ(wb.messages(), 1u) << "the wake-up came as a message on the waker's token";
    EXPECT_EQ(hook.load(), 0) << "not through the eventfd";
    EXPECT_EQ(messaged, 1u);
    EXPECT_EQ(fell_back, 0u);
    wb.stop();
}

// A message that fails (here the announced fd is not a ring) completes on the sender, which then wakes the
// destination through its hook; and a disabled peer_waker, or a destination without a ring, uses the hook at once.
TEST(Io, PeerWakerFallsBackToTheHook) {
    io::ring a;
    std::string why;
    ASSERT_TRUE(a.init(64, why)) << why;
    reactor::smp s(3, 8);
    int hook[3] = {0, 0, 0};
    for (unsigned i = 0; i < 3; ++i)
        s.set_waker(i, [&hook, i] { ++hook[i]; });

    io::peer_waker off(s, false);
    off.attach(a);
    off.wake(1);
    EXPECT_EQ(hook[1], 1) << "disabled: the hook, at once";
    EXPECT_EQ(off.fell_back(), 1u);

    io::peer_waker on(s, true);
    on.attach(a);
    on.wake(2);
    EXPECT_EQ(hook[2], 1) << "participant 2 announced no ring: the hook, at once";

    ASSERT_TRUE(a.can_message()) << "no IORING_OP_MSG_RING with IORING_FEAT_CQE_SKIP on a kernel the broker accepts";
    int not_a_ring[2];
    ASSERT_EQ(::pipe(not_a_ring), 0);
    int token = 0;
    s.set_ring(1, not_a_ring[0], &token);
    on.wake(1);
    EXPECT_EQ(on.messaged(), 1u);
    EXPECT_TRUE(run_until(a, [&] { return hook[1] == 2; })) << "the failed message woke participant 1 by its hook";
    EXPECT_EQ(on.messaged(), 0u);
    EXPECT_EQ(on.fell_back(), 2u);
    ::close(not_a_ring[0]);
    ::close(not_a_ring[1]);
}

TEST(Io, MultishotRecvThroughBufferRingRecyclesBuffers) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    io::buffer_ring bufs;
    ASSERT_TRUE(bufs.init(r, 3, 4, 64, why)) << why; // only 4 small buffers: recycling must work
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    recv_record rec;
    arm_multishot(r, bufs, sv[0], rec);
    std::string sent;
    for (int i = 0; i < 20; ++i) {
        const std::string chunk = "chunk-" + std::to_string(i) + ";";
        ASSERT_EQ(write(sv[1], chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
        sent += chunk;
        ASSERT_TRUE(run_until(r, [&] { return rec.data.size() == sent.size(); }));
    }
    EXPECT_EQ(rec.data, sent);
    EXPECT_GE(rec.completions, 20);
    EXPECT_TRUE(rec.more); // still armed
    ::shutdown(sv[1], SHUT_WR);
    ASSERT_TRUE(run_until(r, [&] { return !rec.more; })); // EOF ends the multishot
    close(sv[0]);
    close(sv[1]);
}

// Incremental consumption needs Linux 6.12+ (the broker falls back to whole buffers before that). The tests below
// assert it is there: the kernel the project builds and tests on has it, and a fallback must not pass unnoticed.
TEST(Io, IncrementalSupportMatchesWhatInitGets) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    io::buffer_ring bufs;
    ASSERT_TRUE(bufs.init(r, 4, 2, 256, why, true)) << why;
    EXPECT_EQ(bufs.incremental(), io::buffer_ring::incremental_supported(r));
    io::buffer_ring whole;
    ASSERT_TRUE(whole.init(r, 7, 2, 256, why, false)) << why;
    EXPECT_FALSE(whole.incremental());
}

namespace {
// A ring with `count` buffers of `size` bytes under `group`, consumed incrementally (asserted).
void init_incremental(io::ring& r, io::buffer_ring& bufs, uint16_t group, uint32_t count, uint32_t size) {
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    ASSERT_TRUE(bufs.init(r, group, count, size, why, true)) << why;
    ASSERT_TRUE(bufs.incremental());
}
} // namespace

TEST(Io, IncrementalBuffersPackSmallReceivesFromSeveralSockets) {
    io::ring r;
    io::buffer_ring bufs;
    ASSERT_NO_FATAL_FAILURE(init_incremental(r, bufs, 5, 2, 256)); // two buffers of 256 B, shared by two sockets
    int a[2], b[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    recv_record ra, rb;
    arm_multishot(r, bufs, a[0], ra);
    arm_multishot(r, bufs, b[0], rb);
    std::string sent_a, sent_b;
    // 60 chunks of 10-12 bytes per socket: about 1.4 KB through 512 bytes of buffers, so buffers are shared between
    // the sockets, partly used, and recycled many times.
    for (int i = 0; i < 60; ++i) {
        const std::string ca = "a" + std::to_string(i) + "-xxxxxx;";
        const std::string cb = "b" + std::to_string(i) + "-yyyyyyy;";
        ASSERT_EQ(write(a[1], ca.data(), ca.size()), static_cast<ssize_t>(ca.size()));
        ASSERT_EQ(write(b[1], cb.data(), cb.size()), static_cast<ssize_t>(cb.size()));
        sent_a += ca;
        sent_b += cb;
        ASSERT_TRUE(run_until(r, [&] { return ra.data.size() == sent_a.size() && rb.data.size() == sent_b.size(); }));
    }
    EXPECT_EQ(ra.data, sent_a);
    EXPECT_EQ(rb.data, sent_b);
    EXPECT_GT(ra.partial + rb.partial, 60);               // most completions left room in their buffer for the next one
    EXPECT_EQ(ra.buffers.size() + rb.buffers.size(), 4u); // both buffers served both sockets
    EXPECT_TRUE(ra.more);
    EXPECT_TRUE(rb.more);
    for (int fd : {a[0], a[1], b[0], b[1]})
        close(fd);
}

TEST(Io, IncrementalBufferFilledByOneLargeReceive) {
    io::ring r;
    io::buffer_ring bufs;
    ASSERT_NO_FATAL_FAILURE(init_incremental(r, bufs, 6, 4, 1024));
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    recv_record rec;
    arm_multishot(r, bufs, sv[0], rec);
    std::string sent;
    for (int i = 0; i < 10; ++i) {
        const std::string chunk(700 + i * 37, static_cast<char>('A' + i)); // crosses buffer ends at odd offsets
        ASSERT_EQ(write(sv[1], chunk.data(), chunk.size()), static_cast<ssize_t>(chunk.size()));
        sent += chunk;
        ASSERT_TRUE(run_until(r, [&] { return rec.data.size() == sent.size(); }));
    }
    EXPECT_EQ(rec.data, sent);
    EXPECT_GT(rec.partial, 0);         // receives that left the rest of their buffer for the next one
    EXPECT_GT(rec.completions, 10);    // and receives cut at a buffer's end, continued in the next buffer
    EXPECT_EQ(rec.buffers.size(), 4u); // every buffer came round
    ::shutdown(sv[1], SHUT_WR);
    ASSERT_TRUE(run_until(r, [&] { return !rec.more; }));
    close(sv[0]);
    close(sv[1]);
}

// The rule for a completion that carries a buffer and no bytes, with the flags a kernel before the EOF fix gives it
// (no IORING_CQE_F_BUF_MORE): on an incremental ring the buffer stays the kernel's at its offset, on a whole-buffer
// ring it goes back.
TEST(Io, AnEmptyCompletionLeavesAnIncrementalBufferToTheKernel) {
    io::ring r;
    io::buffer_ring inc;
    ASSERT_NO_FATAL_FAILURE(init_incremental(r, inc, 7, 2, 256));
    const uint8_t* first = inc.received(0, 10, io::buffer_ring::cqe_buf_more);
    EXPECT_EQ(first, inc.data(0));
    inc.release(0, io::buffer_ring::cqe_buf_more);
    inc.received_nothing(0); // end of another socket's stream, BUF_MORE left out
    EXPECT_FALSE(inc.commit()) << "the buffer was put back in the ring while the kernel still had it";
    EXPECT_EQ(inc.received(0, 5, io::buffer_ring::cqe_buf_more), inc.data(0) + 10) << "its offset was lost";
    io::buffer_ring whole;
    std::string why;
    ASSERT_TRUE(whole.init(r, 8, 2, 256, why)) << why;
    whole.received_nothing(1);
    EXPECT_TRUE(whole.commit()) << "a whole buffer the kernel took must come back";
}

TEST(Io, AwaitableRecvAndSend) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    EXPECT_EQ(echo_through(r, sv[0], sv[1], "ping"), "ping");
    char back[8] = {};
    ASSERT_EQ(read(sv[1], back, sizeof back), 4);
    EXPECT_EQ(std::string(back, 4), "ping");
    close(sv[0]);
    close(sv[1]);
}

namespace {
// A recv with a 100 ms idle timeout on a socket nothing is written to ends cancelled within 2 s.
void expect_recv_times_out(io::ring& r) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    reactor::gate g;
    int res = 1;
    bool done = false;
    ASSERT_TRUE(reactor::spawn(g, recv_with_timeout(r, sv[0], res, done)));
    EXPECT_TRUE(run_until(
        r, [&] { return done; }, 2000))
        << "the recv's 100 ms timeout never fired";
    EXPECT_EQ(res, -ECANCELED);
    close(sv[0]);
    close(sv[1]);
}
} // namespace

TEST(Io, RecvIdleTimeoutCancels) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    expect_recv_times_out(r);
}

// A recv and its linked timeout must go to the kernel in one submission: with one free SQE left, the recv would be
// submitted alone (its link cut at the end of the batch) and the timeout after it, linked to nothing, so the recv
// would wait for ever.
TEST(Io, RecvTimeoutStaysLinkedWhenTheSubmissionQueueIsAlmostFull) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(8, why)) << why;
    while (io_uring_sq_space_left(r.raw()) > 1) {
        io_uring_sqe* s = r.sqe();
        io_uring_prep_nop(s);
        io::set_completion(s, nullptr);
    }
    ASSERT_EQ(io_uring_sq_space_left(r.raw()), 1u);
    expect_recv_times_out(r);
}

TEST(Io, AFullSubmissionQueueRunsTheOwnersHookBeforeItIsSubmitted) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(8, why)) << why;
    struct seen {
        io::ring* r;
        std::vector<unsigned> queued; // SQEs waiting at each call: the hook runs before the submission
    } st{&r, {}};
    r.on_forced_submit(
        [](void* arg) {
            auto* st = static_cast<seen*>(arg);
            st->queued.push_back(io_uring_sq_ready(st->r->raw()));
            // The hook may take SQEs itself; one that finds the queue full submits without calling it again.
            io_uring_prep_nop(st->r->sqe());
        },
        &st);
    for (int i = 0; i < 8; ++i)
        io_uring_prep_nop(r.sqe());
    EXPECT_TRUE(st.queued.empty()) << "no submission yet";
    EXPECT_EQ(r.forced_submits(), 0u);
    io_uring_prep_nop(r.sqe()); // the ninth: the queue is full
    EXPECT_EQ(st.queued, std::vector<unsigned>{8});
    EXPECT_EQ(r.forced_submits(), 2u) << "the full queue, then the hook's own SQE finding it full";
    r.reserve(8); // the ninth is queued, seven free: a submission, the hook first
    EXPECT_EQ(st.queued, (std::vector<unsigned>{8, 1}));
    EXPECT_EQ(r.forced_submits(), 3u);
    EXPECT_EQ(io_uring_sq_ready(r.raw()), 0u) << "the hook's own SQE went with that submission";
    r.reserve(1); // room enough: no submission
    EXPECT_EQ(st.queued.size(), 2u);
    EXPECT_EQ(r.forced_submits(), 3u);
}

// ring::submit_then_wait, the batched wait of node.wake_batch_us: io_uring's minimum wait on a real ring, with recvs
// on socket pairs as the completions (Linux 6.12+ and a DEFER_TASKRUN ring, as the shard needs).
namespace {

struct IoBatchWait : ::testing::Test {
    io::ring r;
    int a[2]{-1, -1}, b[2]{-1, -1};
    char buf_a[8], buf_b[8];

    void SetUp() override {
        std::string why;
        ASSERT_TRUE(r.init(64, why)) << why;
        if (!r.can_wait_batch() || !r.defer_taskrun()) {
            // The shard then wakes at its first completion and never makes these waits; the probe must not miss it.
            ASSERT_FALSE(r.defer_taskrun() && io::kernel_at_least(6, 12)) << "Linux 6.12 has the minimum wait";
            GTEST_SKIP() << "no minimum wait on this kernel's io_uring (before Linux 6.12) or no DEFER_TASKRUN";
        }
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
        io_uring_prep_recv(r.sqe(), a[0], buf_a, sizeof buf_a, 0);
        io_uring_prep_recv(r.sqe(), b[0], buf_b, sizeof buf_b, 0);
        ASSERT_EQ(r.submit(), 2);
    }
    void TearDown() override {
        for (int fd : {a[0], a[1], b[0], b[1]})
            if (fd >= 0) close(fd);
    }
    // Milliseconds that submit_then_wait took; its result in rc.
    long long timed_wait(unsigned nr, unsigned min_wait_us, int timeout_ms, int& rc) {
        const auto start = std::chrono::steady_clock::now();
        rc = r.submit_then_wait(nr, min_wait_us, timeout_ms);
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
    }
    // Writes a byte to each socket after its delay (socket fd, ms), from other threads, while submit_then_wait waits;
    // milliseconds that the wait took, its result in rc.
    long long wait_with_writes(std::initializer_list<std::pair<int, int>> writes, unsigned nr, unsigned min_wait_us,
                               int timeout_ms, int& rc) {
        std::vector<std::thread> writers;
        for (auto [fd, ms] : writes)
            writers.emplace_back([fd, ms] {
                std::this_thread::sleep_for(std::chrono::milliseconds(ms));
                EXPECT_EQ(write(fd, "x", 1), 1);
            });
        const long long took = timed_wait(nr, min_wait_us, timeout_ms, rc);
        for (auto& w : writers)
            w.join();
        return took;
    }
};

// A completion that came while the shard was awake (task work DEFER_TASKRUN holds until the next enter) is reaped at
// once: counted only inside the wait, it would be the one the minimum wait needs and sleep out the whole of it.
TEST_F(IoBatchWait, WhatCameWhileAwakeIsReapedWithoutSleeping) {
    ASSERT_EQ(write(a[1], "x", 1), 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(r.ready(), 0u) << "the recv's completion was posted before any enter: this test shows nothing";
    int rc = -1;
    const long long ms = timed_wait(32, 300000, 1000, rc);
    EXPECT_EQ(rc, 1);
    EXPECT_EQ(r.ready(), 1u);
    EXPECT_LT(ms, 150) << "slept out the minimum wait with a completion in hand";
}

// Completions within the minimum wait wait until it has passed, and then wake the shard together.
TEST_F(IoBatchWait, CompletionsWithinTheMinimumWaitWakeItOnceWhenItHasPassed) {
    int rc = -1;
    const long long ms = wait_with_writes({{a[1], 10}, {b[1], 40}}, 32, 150000, 2000, rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(r.ready(), 2u);
    EXPECT_GE(ms, 140);
    EXPECT_LT(ms, 1000);
}

// The batch ends the wait before the minimum wait has passed.
TEST_F(IoBatchWait, AFullBatchEndsTheWaitEarly) {
    int rc = -1;
    const long long ms = wait_with_writes({{a[1], 10}, {b[1], 20}}, 2, 1000000, 3000, rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(r.ready(), 2u);
    EXPECT_LT(ms, 700);
}

// A first completion after the minimum wait wakes the shard at once; with none the timeout ends the wait.
TEST_F(IoBatchWait, AFirstCompletionPastTheMinimumWaitWakesAtOnce) {
    int rc = -1;
    const long long ms = wait_with_writes({{a[1], 200}}, 32, 20000, 2000, rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(r.ready(), 1u);
    EXPECT_GE(ms, 190);
    EXPECT_LT(ms, 1500) << "waited for the timeout, not the completion";
}

TEST_F(IoBatchWait, NothingComingEndsAtTheTimeout) {
    int rc = -1;
    const long long ms = timed_wait(32, 20000, 200, rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(r.ready(), 0u);
    EXPECT_GE(ms, 190);
    EXPECT_LT(ms, 1500);
}

// Without a minimum wait (and no timeout) it is a plain wait for the first completion.
TEST_F(IoBatchWait, APlainWaitWakesAtTheFirstCompletion) {
    int rc = -1;
    const long long ms = wait_with_writes({{a[1], 30}}, 1, 0, 0, rc);
    EXPECT_EQ(rc, 0);
    EXPECT_EQ(r.ready(), 1u);
    EXPECT_GE(ms, 25);
    EXPECT_LT(ms, 1000);
}

} // namespace

namespace {

// Queues a recv into buf on fd whose completion nobody handles (reaped by hand).
void queue_recv(io::ring& r, int fd, char* buf, size_t len) {
    io_uring_sqe* s = r.sqe();
    io_uring_prep_recv(s, fd, buf, len, 0);
    io::set_completion(s, nullptr);
}

// Waits up to 3 s for pred(), without entering the ring; returns pred().
template <class P> bool within_3s(P pred) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (!pred() && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return pred();
}

} // namespace

// A DEFER_TASKRUN ring holds a completion back as task work until its thread enters the kernel; with TASKRUN_FLAG the
// kernel says so in the SQ ring's flags. submit() enters only when something is queued or held back: the shard calls
// it at every idle point, and on a host where a system call costs a microsecond an enter for nothing was a measurable
// share of a closed loop's CPU.
TEST(Io, SubmitEntersOnlyForWhatIsQueuedOrHeldBack) {
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    ASSERT_TRUE(r.defer_taskrun()) << "this project's kernels have DEFER_TASKRUN (6.1)";
    ASSERT_TRUE(r.deferred_known());
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char buf[8];
    queue_recv(r, sv[0], buf, sizeof buf);
    EXPECT_FALSE(r.deferred());
    uint64_t enters = r.enters();
    EXPECT_EQ(r.submit(), 1);
    EXPECT_EQ(r.enters(), enters + 1);

    // Nothing queued, nothing held back: no system call, and no completion is missed by skipping it.
    enters = r.enters();
    EXPECT_EQ(r.submit(), 0);
    r.post_deferred();
    EXPECT_EQ(r.enters(), enters);
    EXPECT_EQ(r.ready(), 0u);

    // The recv's data arrives while the thread does not enter: the kernel holds the completion and flags it.
    ASSERT_EQ(write(sv[1], "x", 1), 1);
    EXPECT_TRUE(within_3s([&] { return r.deferred(); })) << "the kernel did not flag the task work it holds";
    EXPECT_EQ(r.ready(), 0u) << "posted before any enter: this test shows nothing";
    EXPECT_EQ(r.submit(), 0);
    EXPECT_EQ(r.enters(), enters + 1);
    EXPECT_FALSE(r.deferred());
    EXPECT_GE(r.ready(), 1u);
    io_uring_cqe* cqe = nullptr;
    bool got_recv = false;
    while (io_uring_peek_cqe(r.raw(), &cqe) == 0) {
        if (cqe->res == 1) got_recv = true;
        io_uring_cqe_seen(r.raw(), cqe);
    }
    EXPECT_TRUE(got_recv);

    // post_deferred enters for held-back work only.
    queue_recv(r, sv[0], buf, sizeof buf);
    EXPECT_EQ(r.submit(), 1);
    enters = r.enters();
    ASSERT_EQ(write(sv[1], "y", 1), 1);
    EXPECT_TRUE(within_3s([&] { return r.deferred(); }));
    r.post_deferred();
    EXPECT_EQ(r.enters(), enters + 1);
    EXPECT_EQ(r.ready(), 1u);
    EXPECT_FALSE(r.deferred());
    close(sv[0]);
    close(sv[1]);
}

// The ring of kernels before 6.1 (COOP_TASKRUN, TASKRUN_FLAG): its task work runs on the thread's way back from any
// system call, so the test's own sleep may already have posted the completion; either it is posted or the flag says it
// is held, and post_deferred() brings it. The idle poll spins on exactly that.
TEST(Io, TheCoopRingFlagsWhatItHoldsBackToo) {
    const feature_cap_reset reset_cap;
    io::limit_features_to(6, 0);
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    ASSERT_STREQ(r.mode(), "coop-taskrun");
    ASSERT_TRUE(r.deferred_known());
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    char buf[8];
    queue_recv(r, sv[0], buf, sizeof buf);
    EXPECT_EQ(r.submit(), 1);
    EXPECT_EQ(r.ready(), 0u);
    ASSERT_EQ(write(sv[1], "x", 1), 1);
    EXPECT_TRUE(within_3s([&] { return r.deferred() || r.ready() != 0; })) << "neither posted nor flagged as held back";
    r.post_deferred();
    EXPECT_EQ(r.ready(), 1u);
    EXPECT_FALSE(r.deferred());
    close(sv[0]);
    close(sv[1]);
}

namespace {

struct result_record final : io::completion {
    std::vector<int> results;
    void on_complete(int res, uint32_t) override { results.push_back(res); }
};

// Sends len bytes from p on a slot of r's file table; returns the send's result.
int send_on_slot(io::ring& r, unsigned slot, const char* p, size_t len) {
    result_record rec;
    io_uring_sqe* s = r.sqe();
    io_uring_prep_send(s, static_cast<int>(slot), p, len, 0);
    s->flags |= IOSQE_FIXED_FILE;
    io::set_completion(s, &rec);
    EXPECT_TRUE(run_until(r, [&] { return !rec.results.empty(); }));
    return rec.results.empty() ? -ETIME : rec.results.front();
}

// read() that gives up after a second (-2) rather than hanging the test binary.
ssize_t read_within(int fd, char* buf, size_t len) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 1000) != 1) return -2;
    return read(fd, buf, len);
}

} // namespace

// A ring with a file table of `slots`, and a socket pair whose first end is to be placed in it.
struct IoFileTable : ::testing::Test {
    io::ring r;
    int sv[2] = {-1, -1};
    result_record failed;

    void start(unsigned slots) {
        std::string why;
        ASSERT_TRUE(r.init(64, why)) << why;
        ASSERT_TRUE(r.init_files(slots, why)) << why;
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    }
    ~IoFileTable() override {
        if (sv[1] >= 0) close(sv[1]);
    }
};

TEST_F(IoFileTable, AnInstalledFileIsUsableBySlotInTheSameSubmissionAndItsDescriptorMayClose) {
    ASSERT_NO_FATAL_FAILURE(start(4));
    const int slot = r.install_file(sv[0], &failed);
    ASSERT_GE(slot, 0);
    // The placement, the descriptor's close and a send on the slot all go in one submission, in that order.
    r.close_descriptor(sv[0]);
    EXPECT_EQ(send_on_slot(r, static_cast<unsigned>(slot), "abc", 3), 3);
    char got[8] = {};
    ASSERT_EQ(read_within(sv[1], got, sizeof got), 3);
    EXPECT_EQ(std::string(got, 3), "abc");
    EXPECT_TRUE(failed.results.empty());
    // The slot holds the socket after its descriptor is gone; closing the slot closes it (the peer reads EOF).
    EXPECT_EQ(fcntl(sv[0], F_GETFD), -1);
    r.close_file(static_cast<unsigned>(slot));
    r.submit();
    EXPECT_EQ(read_within(sv[1], got, sizeof got), 0);
}

TEST_F(IoFileTable, ARefusedPlacementCompletesOnItsFailureRecordAndLeavesTheSlotEmpty) {
    ASSERT_NO_FATAL_FAILURE(start(2));
    const int bad = sv[0];
    ASSERT_EQ(close(bad), 0); // a number that is no descriptor now
    const int slot = r.install_file(bad, &failed);
    ASSERT_GE(slot, 0);
    EXPECT_EQ(send_on_slot(r, static_cast<unsigned>(slot), "x", 1), -EBADF);
    ASSERT_EQ(failed.results.size(), 1u);
    EXPECT_EQ(failed.results.front(), -EBADF);
}

TEST(Io, PlacementsQueuedPastAFullSubmissionQueueEachLandInTheirOwnSlot) {
    // An 8-entry SQ fills while the placements are queued (each sqe() may submit): every one must still read its own
    // descriptor.
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(8, why)) << why;
    constexpr int n = 20;
    ASSERT_TRUE(r.init_files(n, why)) << why;
    int pairs[n][2];
    int slots[n];
    result_record failed;
    for (int i = 0; i < n; ++i) {
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pairs[i]), 0);
        slots[i] = r.install_file(pairs[i][0], &failed);
        ASSERT_GE(slots[i], 0);
        r.close_descriptor(pairs[i][0]);
    }
    EXPECT_EQ(r.install_file(pairs[0][1], &failed), -ENFILE);
    for (int i = 0; i < n; ++i) {
        const char c = static_cast<char>('a' + i);
        EXPECT_EQ(send_on_slot(r, static_cast<unsigned>(slots[i]), &c, 1), 1) << i;
        char got = 0;
        ASSERT_EQ(read_within(pairs[i][1], &got, 1), 1);
        EXPECT_EQ(got, c) << i;
        close(pairs[i][1]);
    }
    EXPECT_TRUE(failed.results.empty());
}

TEST(Io, AFeatureCapMakesRingsBehaveAsOnTheOlderRelease) {
    const feature_cap_reset reset_cap;
    io::limit_features_to(6, 0);
    EXPECT_TRUE(io::features_allowed(6, 0));
    EXPECT_FALSE(io::features_allowed(6, 1));
    EXPECT_FALSE(io::kernel_at_least(6, 1));
    io::ring old;
    std::string why;
    ASSERT_TRUE(old.init(64, why)) << why;
    EXPECT_STREQ(old.mode(), "coop-taskrun");
    EXPECT_FALSE(old.defer_taskrun());
    EXPECT_FALSE(old.can_wait_batch());
    EXPECT_FALSE(io::buffer_ring::incremental_supported(old));
    // A ring that still works: a message to itself completes.
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    EXPECT_EQ(echo_through(old, sv[0], sv[1], "old"), "old");
    close(sv[0]);
    close(sv[1]);

    io::limit_features_to(0, 0);
    EXPECT_TRUE(io::features_allowed(6, 13));
    io::ring now;
    ASSERT_TRUE(now.init(64, why)) << why;
    // This project's kernels have DEFER_TASKRUN (6.1); a cap of 6.11 keeps it but not the 6.12 minimum wait.
    EXPECT_STREQ(now.mode(), "single-issuer+defer-taskrun");
    io::limit_features_to(6, 11);
    io::ring mid;
    ASSERT_TRUE(mid.init(64, why)) << why;
    EXPECT_STREQ(mid.mode(), "single-issuer+defer-taskrun");
    EXPECT_FALSE(mid.can_wait_batch());
    EXPECT_FALSE(io::buffer_ring::incremental_supported(mid));
    EXPECT_EQ(io::kernel_at_least(6, 13), false);
}

namespace {

// A TCP connection on loopback (AF_INET, or AF_INET6 on ::1): the accepted end and the client's.
struct tcp_pair {
    int accepted = -1, client = -1;
    explicit tcp_pair(int family) {
        const int l = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_storage ss{};
        socklen_t len = 0;
        if (family == AF_INET6) {
            auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_loopback;
            len = sizeof *a;
        } else {
            auto* a = reinterpret_cast<sockaddr_in*>(&ss);
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            len = sizeof *a;
        }
        if (l < 0 || bind(l, reinterpret_cast<sockaddr*>(&ss), len) != 0 || listen(l, 1) != 0 ||
            getsockname(l, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
            if (l >= 0) close(l);
            return;
        }
        client = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(client, reinterpret_cast<sockaddr*>(&ss), len) == 0)
            accepted = accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
        close(l);
    }
    ~tcp_pair() {
        if (accepted >= 0) close(accepted);
        if (client >= 0) close(client);
    }
};

// Reads SO_PEERNAME of fd through r into buf, asking for len bytes; returns the completion's result.
int peer_name_by_ring(io::ring& r, int fd, void* buf, unsigned len) {
    result_record rec;
    io_uring_sqe* s = r.sqe();
    io::prep_peer_name(s, fd, buf, len);
    io::set_completion(s, &rec);
    EXPECT_TRUE(run_until(r, [&] { return !rec.results.empty(); }));
    return rec.results.empty() ? -ETIME : rec.results.front();
}

} // namespace

TEST(Io, APeerNameReadThroughTheRingIsTheClientsAddress) {
    // This project's kernels (6.13 and newer) have io_uring's socket commands (6.7).
    ASSERT_TRUE(io::can_read_peer_name());
    io::ring r;
    std::string why;
    ASSERT_TRUE(r.init(64, why)) << why;
    for (const int family : {AF_INET, AF_INET6}) {
        tcp_pair p(family);
        ASSERT_GE(p.accepted, 0) << family;
        sockaddr_storage want{}, got{};
        socklen_t want_len = sizeof want;
        ASSERT_EQ(getsockname(p.client, reinterpret_cast<sockaddr*>(&want), &want_len), 0);
        const int n = peer_name_by_ring(r, p.accepted, &got, want_len);
        ASSERT_EQ(n, static_cast<int>(want_len)) << std::strerror(n < 0 ? -n : 0);
        EXPECT_EQ(std::memcmp(&got, &want, want_len), 0) << family;
        // More room than the address takes is refused: the length asked for must be the family's address size.
        EXPECT_EQ(peer_name_by_ring(r, p.accepted, &got, sizeof got), -EINVAL) << family;
    }
    // A socket that is not connected has no peer.
    const int lone = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    const int gone = peer_name_by_ring(r, lone, &a, sizeof a);
    EXPECT_EQ(gone, -ENOTCONN);
    // ...which is about that socket, not the ring: the shard keeps reading addresses this way.
    EXPECT_FALSE(io::peer_name_refused(gone));
    close(lone);
    // Refused for want of the socket command: an operation on something that has no such command (a pipe).
    int pipe_fds[2];
    ASSERT_EQ(pipe(pipe_fds), 0);
    const int refused = peer_name_by_ring(r, pipe_fds[0], &a, sizeof a);
    EXPECT_TRUE(io::peer_name_refused(refused)) << refused;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
}

TEST(Io, TheFeatureCapTurnsThePeerNameReadOff) {
    const feature_cap_reset reset_cap;
    io::limit_features_to(6, 6);
    EXPECT_FALSE(io::can_read_peer_name());
    io::limit_features_to(6, 7);
    EXPECT_TRUE(io::can_read_peer_name()); // this project's kernels are newer
}
