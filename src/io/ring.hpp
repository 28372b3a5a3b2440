#pragma once
// The shard's io_uring: submission helpers, batched completion reaping and the start-up feature probe. One ring per
// MQTT shard, created on (and used only by) that shard's thread; this module is the only user of liburing.
//
// Every submitted operation carries the address of a `completion` in user_data; reaping calls its on_complete().
// user_data 0 marks fire-and-forget operations whose result nobody needs.
#include <liburing.h>

#include <cerrno>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace ringmq::io {

// A pending operation's completion record. Embedded in the object that issued the operation (connection, listener,
// timer awaiter), which must stay alive until the last completion (no IORING_CQE_F_MORE) has been delivered.
struct completion {
    virtual void on_complete(int res, uint32_t flags) = 0;

protected:
    ~completion() = default;
};

// One reaped completion, copied out of the CQ so the ring can be advanced before the handlers run.
struct reaped {
    completion* c;
    int res;
    uint32_t flags;
};

// Checks once, on the main thread, that io_uring works and has every opcode and feature the broker needs. Returns
// false with a one-line reason naming the cause (kernel too old, io_uring disabled by sysctl or a seccomp profile).
bool probe_kernel(std::string& why);

// Whether the running kernel's release is at least major.minor (uname; false where it cannot be read), and no cap
// below major.minor was set.
bool kernel_at_least(int major, int minor);

// Whether a multishot receive can be given a limit on all the bytes it takes (Linux 6.17: it then ends, without
// IORING_CQE_F_MORE, once that many came; set_recv_limit). Probed once on the main thread after limit_features_to and
// before any shard starts (probe_recv_limit); recv_limit_supported reads the result.
void probe_recv_limit();
bool recv_limit_supported();
// The limit is the SQE's optlen, in the field liburing 2.3 names file_index (an older kernel refuses a receive with it
// set: EINVAL).
inline void set_recv_limit(io_uring_sqe* s, uint32_t bytes) { s->file_index = bytes; }

// Caps the io_uring features every ring of the process uses to those of Linux major.minor (node.io_uring_kernel):
// a ring made afterwards, and kernel_at_least, behave as on that release where the running kernel is newer. Set once
// on the main thread before any shard starts; (0, 0) is no cap.
void limit_features_to(int major, int minor);
// Whether no cap keeps the features of Linux major.minor from use (the kernel itself may still lack them).
bool features_allowed(int major, int minor);

// The per-shard ring. Not thread-safe: only the owning shard's thread may call it.
class ring {
public:
    ring() = default;
    ~ring();
    ring(const ring&) = delete;
    ring& operator=(const ring&) = delete;

    // Creates the ring, preferring SINGLE_ISSUER|DEFER_TASKRUN, then COOP_TASKRUN, then no flags.
    bool init(unsigned entries, std::string& why);

    io_uring* raw() { return &ring_; }
    // A free SQE; submits what is queued when the SQ is full, so it never returns null.
    io_uring_sqe* sqe();
    // fn(arg) runs before each submission that sqe() or reserve() makes for room (not re-entered: one that the hook's
    // own SQEs force runs without it), so that the owner makes visible first what the queued operations' effects may
    // depend on: a shard publishes its cross-shard queues, so that an ack submitted so, midway through a turn, is not
    // sent before the route adds it promises can be seen.
    void on_forced_submit(void (*fn)(void*), void* arg) {
        forced_fn_ = fn;
        forced_arg_ = arg;
    }
    // Submissions that sqe() or reserve() made for room.
    uint64_t forced_submits() const { return forced_submits_; }
    // Makes room for n SQEs taken next without a submission between them (submitting what is queued if needed): a
    // linked pair split over two submissions loses its link, and a timeout linked to nothing never fires.
    void reserve(unsigned n);
    // Submits without waiting and flushes deferred completions. Returns the number of SQEs submitted or -errno. Where
    // the ring can tell (deferred_known()) that nothing is queued and the kernel holds no completion back, it makes no
    // system call: at 1 us one (a deprivileged guest), the shard's idle points paid one for nothing per wake-up.
    int submit();
    // Submits and waits for at least one completion, or until timeout_ms (-1 = no timeout).
    int submit_and_wait(int timeout_ms);
    // Submits what is queued and, unless completions are then there to reap, sleeps until nr are, or until
    // min_wait_us (counted from when it went to sleep) have passed with at least one (0: at the first), or timeout_ms
    // without any. With a minimum wait timeout_ms must be > 0: without one the kernel ends the wait when the minimum
    // wait runs out, with or without a completion (0 is no timeout, for min_wait_us 0 only). Only where
    // can_wait_batch(). Returns 0 when it went to the kernel to wait, 1 when it did not (completions were there, or
    // the submission failed: the next turn retries it), -errno when the kernel refused the wait (-EINTR: a signal).
    int submit_then_wait(unsigned nr, unsigned min_wait_us, int timeout_ms);
    // Completions posted and not yet reaped.
    unsigned ready() { return io_uring_cq_ready(&ring_); }
    // Whether the kernel holds completions back until this thread enters it (a DEFER_TASKRUN ring's task work, or a
    // full CQ's overflow), read from the ring's shared flags without a system call. Only where deferred_known();
    // elsewhere it says true.
    bool deferred() const {
        return !deferred_known_ ||
               (IO_URING_READ_ONCE(*ring_.sq.kflags) & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
    }
    // Whether deferred() can tell: the ring was set up with IORING_SETUP_TASKRUN_FLAG, so the kernel flags its task
    // work in the SQ ring.
    bool deferred_known() const { return deferred_known_; }
    // Has the kernel post what it holds back (the task work of DEFER_TASKRUN), if deferred() says it holds any.
    void post_deferred();
    // System calls into io_uring made by this ring's waits, post_deferred and (on a DEFER_TASKRUN ring) submit; not
    // liburing's own when sqe() or reserve() submit a full SQ (which, with the flag up, also post what is held back).
    uint64_t enters() const { return enters_; }
    // Whether the kernel can wait for a batch of completions with a minimum wait (IORING_FEAT_MIN_TIMEOUT, 6.12+).
    bool can_wait_batch() const { return can_wait_batch_; }
    // Copies up to max completions into out and advances the CQ. Returns the count.
    unsigned reap(reaped* out, unsigned max);

    const char* mode() const { return mode_; }
    bool defer_taskrun() const { return defer_taskrun_; }

    // Whether this ring can post a completion into another ring (IORING_OP_MSG_RING, 5.18+) without a completion of
    // its own on success (IORING_FEAT_CQE_SKIP).
    bool can_message() const { return can_message_; }
    // The ring's file descriptor, the address other rings message it at.
    int fd() const { return ring_.ring_fd; }
    // Queues a message to the ring at target_fd: it completes there with token as user_data and res 0, which wakes
    // that ring's thread if it waits. Goes out with this ring's next submission; only a failure completes here, on
    // on_fail (-EBADFD: not a ring; -EOWNERDEAD: its thread is gone; -EOVERFLOW: its completion queue is full).
    void message(int target_fd, void* token, completion* on_fail);

    // The ring's table of registered files (io_uring "fixed files"). A socket placed there is used by slot number with
    // IOSQE_FIXED_FILE and needs no descriptor: the process's open-file limit then bounds the sockets of each ring
    // rather than of the whole process, and an operation skips the descriptor lookup and reference count that every
    // operation on a descriptor of a multi-threaded process pays. Sets up an empty table of n slots; false with the
    // kernel's reason when it refuses (the ring still works, with descriptors).
    bool init_files(unsigned n, std::string& why);
    // Slots in the table (0 without one).
    unsigned files() const { return files_; }
    // Picks a free slot for the file behind fd and queues its placement there with the next submission (an SQE rather
    // than a register system call of its own: a connect storm paid one per connection). Returns the slot, or -ENFILE
    // when none is free. SQEs queued after this one may use the slot, as the kernel takes them in order and places the
    // file inline; should it refuse (not a descriptor, no memory), on_fail completes with -errno and the slot stays
    // empty, so what uses it fails with -EBADF. The kernel reads fd from this ring's memory when it takes the SQE, so
    // the SQE queued just before must not be linked to it (IOSQE_IO_LINK would let the kernel take it later). fd stays
    // open: the caller closes it once nothing uses it by that number (close_descriptor, queued after this, is fine).
    int install_file(int fd, completion* on_fail);
    // Queues the close of a slot with the next submission. The slot is handed out again only after a submission has
    // taken every SQE queued so far (io_uring closes a slot inline, when submitted), so the close cannot hit a socket
    // placed there later. An operation that looks its slot up later than its submission (one io_uring always runs
    // from a worker, like SHUTDOWN) must not be used on slots for that reason. Posts no completion unless it fails
    // (IOSQE_CQE_SKIP_SUCCESS), and a failure is ignored.
    void close_file(unsigned slot);
    // Queues the close of a descriptor with the next submission (no system call of its own; the number stays taken
    // until the close has run, so nothing can reuse it in between). Like close_file, it posts no completion unless it
    // fails (IOSQE_CQE_SKIP_SUCCESS), and a failure is ignored.
    void close_descriptor(int fd);

private:
    // After a submission: slots whose close went in with it become free.
    void submitted();
    // sqe() or reserve() is about to submit for room: counts it and runs the owner's hook (on_forced_submit).
    void forced_submit();

    io_uring ring_{};
    bool ok_ = false;
    bool defer_taskrun_ = false;
    bool can_message_ = false;
    bool can_wait_batch_ = false;
    bool registered_fd_ = false; // the ring's fd is registered with the ring itself (io_uring_register_ring_fd)
    bool deferred_known_ = false;
    uint64_t enters_ = 0;
    uint64_t forced_submits_ = 0;
    void (*forced_fn_)(void*) = nullptr;
    void* forced_arg_ = nullptr;
    bool in_forced_ = false;
    const char* mode_ = "";
    unsigned files_ = 0;
    unsigned next_file_ = 0;              // slots from here up were never used
    std::vector<unsigned> free_files_;    // slots closed and submitted
    std::vector<unsigned> closing_files_; // slots whose close may still be queued
    std::deque<int> installing_;          // descriptors whose placement may still be queued (its SQE points here)
};

// Sets user_data on an SQE: the completion, or null for "ignore".
inline void set_completion(io_uring_sqe* s, completion* c) { io_uring_sqe_set_data(s, c); }

// Whether a socket's address can be read through the ring (prep_peer_name: io_uring's getsockopt socket command,
// Linux 6.7 or newer) instead of by a getpeername system call.
inline bool can_read_peer_name() { return kernel_at_least(6, 7); }
// Prepares s to read SO_PEERNAME of socket descriptor fd into buf. len must be the exact size of the socket's address
// (sockaddr_in's for AF_INET, sockaddr_in6's for AF_INET6): the kernel refuses a larger buffer with -EINVAL. The
// completion's res is the size written, or -errno. It runs when submitted, so its completion comes before that of
// any operation submitted after it.
void prep_peer_name(io_uring_sqe* s, int fd, void* buf, unsigned len);
// Whether prep_peer_name's failure res means the ring cannot read addresses at all (a kernel without the socket
// command, or one that refuses its fields), rather than something about this socket (-ENOTCONN: its client already
// gone; -EACCES or -EPERM: a security hook on this socket's getsockopt), which getpeername then tries on its own.
inline bool peer_name_refused(int res) { return res == -EOPNOTSUPP || res == -EINVAL; }

} // namespace ringmq::io
