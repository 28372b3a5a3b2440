#include "io/ring.hpp"

#include "util/assert.hpp"

#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fmt/format.h>

namespace ringmq::io {

namespace {

std::string init_error(int err) {
    if (err == ENOSYS) return "io_uring is not available: this kernel was built without io_uring (ENOSYS)";
    if (err == EPERM)
        return "io_uring is not permitted (EPERM): it is disabled by sysctl kernel.io_uring_disabled or blocked by a "
               "seccomp profile (containers: run with a profile that allows io_uring_setup)";
    if (err == ENOMEM) return "io_uring setup failed (ENOMEM): raise RLIMIT_MEMLOCK or use a newer kernel";
    return fmt::format("io_uring setup failed: {}", std::strerror(err));
}

// The running kernel's release string and its major.minor; false where either cannot be read.
bool kernel_release(utsname& u, int& major, int& minor) {
    return uname(&u) == 0 && std::sscanf(u.release, "%d.%d", &major, &minor) == 2;
}

// node.io_uring_kernel, as major * 1000 + minor (0: no cap). Written before the shards' threads start.
int feature_cap = 0;
// probe_recv_limit's finding; written before the shards' threads start.
bool recv_limit = false;
// The probe's receive buffers: static, as a receive the kernel might still hold must not write into freed memory.
char recv_limit_bufs[2][64];

} // namespace

void limit_features_to(int major, int minor) { feature_cap = major * 1000 + minor; }

bool features_allowed(int major, int minor) { return feature_cap == 0 || feature_cap >= major * 1000 + minor; }

bool kernel_at_least(int major, int minor) {
    utsname u{};
    int ma = 0, mi = 0;
    return features_allowed(major, minor) && kernel_release(u, ma, mi) && (ma > major || (ma == major && mi >= minor));
}

void prep_peer_name(io_uring_sqe* s, int fd, void* buf, unsigned len) {
    // liburing 2.3 has neither io_uring_prep_cmd_sock nor the SQE's socket-command names: the fields they name are
    // set where the kernel's layout (6.7) puts them.
    constexpr uint32_t socket_uring_op_getsockopt = 2;
    io_uring_prep_rw(IORING_OP_URING_CMD, s, fd, nullptr, 0, 0);
    s->cmd_op = socket_uring_op_getsockopt;
    const uint32_t level_and_name[2] = {SOL_SOCKET, SO_PEERNAME}; // `level` and `optname`, over `addr`
    std::memcpy(&s->addr, level_and_name, sizeof level_and_name);
    s->file_index = len;                         // `optlen`
    s->addr3 = reinterpret_cast<uintptr_t>(buf); // `optval`
}

void probe_recv_limit() {
    recv_limit = false;
    if (!features_allowed(6, 17)) return;
    io_uring r{};
    if (io_uring_queue_init(4, &r, 0) < 0) return;
    int sv[2] = {-1, -1};
    void* mem = nullptr;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0 && posix_memalign(&mem, 4096, 4096) == 0) {
        std::memset(mem, 0, 4096);
        auto* br = static_cast<io_uring_buf_ring*>(mem);
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<uint64_t>(mem);
        reg.ring_entries = 2;
        reg.bgid = 0;
        if (io_uring_register_buf_ring(&r, &reg, 0) == 0) {
            io_uring_buf_ring_init(br);
            for (int i = 0; i < 2; ++i)
                io_uring_buf_ring_add(br, recv_limit_bufs[i], sizeof recv_limit_bufs[i], static_cast<uint16_t>(i),
                                      io_uring_buf_ring_mask(2), i);
            io_uring_buf_ring_advance(br, 2);
            // Four bytes waiting, a limit of two: a kernel with the limit takes them (into one buffer: the limit stops
            // the receive after the buffer that reaches it) and ends the receive; one without it refuses the SQE.
            io_uring_cqe* cqe = nullptr;
            if (::write(sv[1], "four", 4) == 4) {
                io_uring_sqe* s = io_uring_get_sqe(&r);
                io_uring_prep_recv_multishot(s, sv[0], nullptr, 0, 0);
                s->flags |= IOSQE_BUFFER_SELECT;
                s->buf_group = 0;
                set_recv_limit(s, 2);
                if (io_uring_submit_and_wait(&r, 1) >= 0 && io_uring_peek_cqe(&r, &cqe) == 0) {
                    recv_limit = cqe->res > 0 && (cqe->flags & IORING_CQE_F_MORE) == 0;
                    io_uring_cqe_seen(&r, cqe);
                }
            }
            io_uring_unregister_buf_ring(&r, 0);
        }
    }
    for (const int fd : sv)
        if (fd >= 0) ::close(fd);
    io_uring_queue_exit(&r);
    std::free(mem);
}

bool recv_limit_supported() { return recv_limit; }

bool probe_kernel(std::string& why) {
    utsname u{};
    int major = 0, minor = 0;
    if (kernel_release(u, major, minor) && major < 6) {
        why = fmt::format("kernel {} is too old: ringmq needs io_uring multishot accept/recv and provided buffer rings "
                          "(Linux 6.0 or newer)",
                          u.release);
        return false;
    }
    io_uring r{};
    int rc = io_uring_queue_init(8, &r, 0);
    if (rc < 0) {
        why = init_error(-rc);
        return false;
    }
    io_uring_probe* p = io_uring_get_probe_ring(&r);
    if (!p) {
        io_uring_queue_exit(&r);
        why = "io_uring opcode probe failed (kernel too old?)";
        return false;
    }
    struct need {
        int op;
        const char* name;
    };
    static const need needs[] = {
        {IORING_OP_ACCEPT, "ACCEPT"},
        {IORING_OP_RECV, "RECV"},
        {IORING_OP_SEND, "SEND"},
        {IORING_OP_SENDMSG, "SENDMSG"},
        {IORING_OP_TIMEOUT, "TIMEOUT"},
        {IORING_OP_READ, "READ"},
        {IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"},
        {IORING_OP_CLOSE, "CLOSE"},
        {IORING_OP_SHUTDOWN, "SHUTDOWN"},
    };
    std::string missing;
    for (const need& n : needs)
        if (!io_uring_opcode_supported(p, n.op)) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", n.name);
    io_uring_free_probe(p);
    if (!missing.empty()) {
        io_uring_queue_exit(&r);
        why = fmt::format("io_uring lacks required opcodes: {}", missing);
        return false;
    }
    // Provided buffer rings (5.19+).
    io_uring_buf_reg reg{};
    void* mem = nullptr;
    if (posix_memalign(&mem, 4096, 4096) != 0) {
        io_uring_queue_exit(&r);
        why = "out of memory while probing io_uring";
        return false;
    }
    std::memset(mem, 0, 4096);
    reg.ring_addr = reinterpret_cast<uint64_t>(mem);
    reg.ring_entries = 8;
    reg.bgid = 0;
    rc = io_uring_register_buf_ring(&r, &reg, 0);
    if (rc == 0) io_uring_unregister_buf_ring(&r, 0);
    std::free(mem);
    io_uring_queue_exit(&r);
    if (rc < 0) {
        why = fmt::format("io_uring provided buffer rings are unsupported ({}): Linux 6.0 or newer is needed",
                          std::strerror(-rc));
        return false;
    }
    return true;
}

ring::~ring() {
    if (ok_) io_uring_queue_exit(&ring_);
}

// IORING_FEAT_MIN_TIMEOUT, newer than the headers of liburing 2.3.
constexpr uint32_t feat_min_timeout = 1U << 15;

bool ring::init(unsigned entries, std::string& why) {
    io_uring_params p{};
    // TASKRUN_FLAG: the kernel then flags in the SQ ring whether it holds task work (the completions DEFER_TASKRUN
    // posts only when the thread enters), so the shard can see without a system call that an enter would bring none.
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_CQSIZE;
    p.cq_entries = entries * 4;
    int rc = features_allowed(6, 1) ? io_uring_queue_init_params(entries, &ring_, &p) : -EINVAL; // DEFER_TASKRUN: 6.1
    if (rc == 0) {
        defer_taskrun_ = true;
        deferred_known_ = true;
        mode_ = "single-issuer+defer-taskrun";
    } else {
        p = {};
        p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 4;
        rc = io_uring_queue_init_params(entries, &ring_, &p);
        mode_ = "coop-taskrun";
        deferred_known_ = rc == 0;
        if (rc < 0) {
            p = {};
            p.flags = IORING_SETUP_CQSIZE;
            p.cq_entries = entries * 4;
            rc = io_uring_queue_init_params(entries, &ring_, &p);
            mode_ = "plain";
        }
    }
    if (rc < 0) {
        why = init_error(-rc);
        return false;
    }
    ok_ = true;
    if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
        can_message_ = io_uring_opcode_supported(probe, IORING_OP_MSG_RING) && (p.features & IORING_FEAT_CQE_SKIP);
        io_uring_free_probe(probe);
    }
    can_wait_batch_ = (p.features & feat_min_timeout) != 0 && features_allowed(6, 12);
    registered_fd_ = io_uring_register_ring_fd(&ring_) == 1; // optional speed-up; failure is harmless
    return true;
}

void ring::message(int target_fd, void* token, completion* on_fail) {
    io_uring_sqe* s = sqe();
    io_uring_prep_msg_ring(s, target_fd, 0, reinterpret_cast<uint64_t>(token), 0);
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    set_completion(s, on_fail);
}

bool ring::init_files(unsigned n, std::string& why) {
    const int rc = io_uring_register_files_sparse(&ring_, n);
    if (rc < 0) {
        why = std::strerror(-rc);
        return false;
    }
    files_ = n;
    return true;
}

void ring::submitted() {
    // Nothing queued means every SQE so far went in with a submission, the closes and placements among them: io_uring
    // runs both when they are submitted, never later.
    if (io_uring_sq_ready(&ring_) != 0) return;
    if (!closing_files_.empty()) {
        free_files_.insert(free_files_.end(), closing_files_.begin(), closing_files_.end());
        closing_files_.clear();
    }
    installing_.clear();
}

int ring::install_file(int fd, completion* on_fail) {
    submitted();
    unsigned slot;
    if (!free_files_.empty()) {
        slot = free_files_.back();
        free_files_.pop_back();
    } else if (next_file_ < files_) {
        slot = next_file_++;
    } else {
        return -ENFILE;
    }
    // The kernel reads the descriptor from memory when it takes the SQE: a deque keeps earlier ones where they are.
    // (After sqe(), which may submit and so clear the deque.)
    io_uring_sqe* s = sqe();
    installing_.push_back(fd);
    io_uring_prep_files_update(s, &installing_.back(), 1, static_cast<int>(slot));
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    set_completion(s, on_fail);
    return static_cast<int>(slot);
}

void ring::close_descriptor(int fd) {
    io_uring_sqe* s = sqe();
    io_uring_prep_close(s, fd);
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    set_completion(s, nullptr);
}

void ring::close_file(unsigned slot) {
    io_uring_sqe* s = sqe();
    io_uring_prep_close_direct(s, slot);
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
    set_completion(s, nullptr);
    closing_files_.push_back(slot);
}

void ring::forced_submit() {
    ++forced_submits_;
    // The hook may queue SQEs of its own (a shard's wake-ups of other shards), and an SQ it fills is submitted by
    // them without running it again.
    if (forced_fn_ == nullptr || in_forced_) return;
    in_forced_ = true;
    forced_fn_(forced_arg_);
    in_forced_ = false;
}

io_uring_sqe* ring::sqe() {
    io_uring_sqe* s = io_uring_get_sqe(&ring_);
    while (!s) {
        forced_submit();
        io_uring_submit(&ring_);
        submitted();
        s = io_uring_get_sqe(&ring_);
    }
    return s;
}

void ring::reserve(unsigned n) {
    if (io_uring_sq_space_left(&ring_) < n) {
        forced_submit();
        io_uring_submit(&ring_);
        submitted();
    }
}

int ring::submit() {
    int rc = 0;
    if (!defer_taskrun_) {
        rc = io_uring_submit(&ring_); // liburing enters only for a submission or the flags it reads itself
    } else if (io_uring_sq_ready(&ring_) != 0 || deferred()) {
        ++enters_;
        rc = io_uring_submit_and_get_events(&ring_);
    }
    submitted();
    return rc;
}

void ring::post_deferred() {
    if (!deferred()) return;
    ++enters_;
    io_uring_get_events(&ring_);
}

int ring::submit_and_wait(int timeout_ms) {
    ++enters_;
    int rc;
    if (timeout_ms < 0) {
        rc = io_uring_submit_and_wait(&ring_, 1);
    } else {
        __kernel_timespec ts{};
        ts.tv_sec = timeout_ms / 1000;
        ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1000000;
        io_uring_cqe* cqe = nullptr;
        rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    submitted();
    return rc;
}

int ring::submit_then_wait(unsigned nr, unsigned min_wait_us, int timeout_ms) {
    // What the submission completes at once (most sends) is posted before any wait: counted by the wait, it would make
    // the shard sleep out the minimum wait for its own send, and the packet that comes next wait on top of that. A
    // batched wait also flushes the completions that came while the shard was awake (deferred task work): the kernel
    // would otherwise post them only inside the wait and keep them there for the whole minimum wait.
    // submit() does both on a DEFER_TASKRUN ring, the only kind a shard waits for a batch on (and enters only where
    // something is queued or the ring flags completions held back). A submission that fails
    // (a full CQ, memory) is retried by the next turn, as after any other submit.
    RINGMQ_DASSERT(min_wait_us == 0 || defer_taskrun_);
    if ((min_wait_us != 0 || io_uring_sq_ready(&ring_) != 0) && submit() < 0) return 1;
    if (io_uring_cq_ready(&ring_) != 0) return 1;
    RINGMQ_DASSERT(min_wait_us == 0 || timeout_ms > 0);
    // io_uring_getevents_arg as the kernel reads it since 6.12: liburing 2.3 calls min_wait_usec "pad", later ones
    // rename it, so the layout is spelled out here.
    struct getevents_arg {
        uint64_t sigmask;
        uint32_t sigmask_sz;
        uint32_t min_wait_usec;
        uint64_t ts;
    };
    static_assert(sizeof(getevents_arg) == sizeof(io_uring_getevents_arg));
    __kernel_timespec ts{};
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = static_cast<long long>(timeout_ms % 1000) * 1000000;
    getevents_arg arg{};
    arg.min_wait_usec = min_wait_us;
    if (timeout_ms > 0) arg.ts = reinterpret_cast<uint64_t>(&ts);
    unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
    int fd = ring_.ring_fd;
    if (registered_fd_) {
        flags |= IORING_ENTER_REGISTERED_RING;
        fd = ring_.enter_ring_fd;
    }
    ++enters_;
    const int rc = io_uring_enter2(fd, 0, nr, flags, reinterpret_cast<sigset_t*>(&arg), sizeof(arg));
    return rc < 0 && rc != -ETIME ? rc : 0;
}

unsigned ring::reap(reaped* out, unsigned max) {
    unsigned n = 0;
    unsigned head;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
        if (n == max) break;
        out[n++] = reaped{static_cast<completion*>(io_uring_cqe_get_data(cqe)), cqe->res, cqe->flags};
    }
    io_uring_cq_advance(&ring_, n);
    return n;
}

} // namespace ringmq::io
