#pragma once
// The outgoing side of one connection: bytes copied in (acks, encoded frames, small PUBLISHes) and references to
// bytes shared with other connections (a large fan-out frame copied once for all its subscribers), in the order they
// were queued, and the batch that is on its way to the socket. A backlog is kept in chunks of about chunk_bytes, a
// batch being one of them, so that what the socket has taken is freed chunk by chunk instead of staying with a whole
// backlog's batch while the queue refills behind it. A connection owns one; it lives on that connection's shard and
// is only touched there.
#include "session/message.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace ringmq::broker {

// A growable byte buffer for outgoing bytes: appending writes in place, with no per-byte construction and no call
// unless it must grow (a std::vector's resize() was a 40-instruction call for every ack and frame queued). Owned by
// whoever holds it (a send queue, a shard's scratch frame, a publish run), on that owner's shard.
class byte_vec {
public:
    byte_vec() = default;
    byte_vec(const byte_vec&) = delete;
    byte_vec& operator=(const byte_vec&) = delete;
    byte_vec(byte_vec&& o) noexcept : p_(o.p_), n_(o.n_), cap_(o.cap_) { o.p_ = nullptr, o.n_ = o.cap_ = 0; }
    byte_vec& operator=(byte_vec&& o) noexcept {
        byte_vec(std::move(o)).swap(*this);
        return *this;
    }
    ~byte_vec() { std::free(p_); }

    uint8_t* data() { return p_; }
    const uint8_t* data() const { return p_; }
    size_t size() const { return n_; }
    size_t capacity() const { return cap_; }
    bool empty() const { return n_ == 0; }
    const uint8_t* begin() const { return p_; }
    const uint8_t* end() const { return p_ + n_; }
    void clear() { n_ = 0; }
    void swap(byte_vec& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        std::swap(cap_, o.cap_);
    }
    // Frees the memory (the buffer is then empty).
    void release() { byte_vec().swap(*this); }
    // Makes room for n bytes in all, so that appends up to that size do not move the bytes.
    void reserve(size_t n) {
        if (n > cap_) reallocate(n);
    }
    // Makes room for n more bytes at the end and returns where they go (not zero-filled).
    uint8_t* grow(size_t n) {
        if (n > cap_ - n_) [[unlikely]]
            reallocate(n_ + n);
        uint8_t* at = p_ + n_;
        n_ += n;
        return at;
    }

private:
    void reallocate(size_t need);
    uint8_t* p_ = nullptr;
    size_t n_ = 0;
    size_t cap_ = 0;
};

inline uint8_t* grow(byte_vec& v, size_t n) { return v.grow(n); }
inline void append(byte_vec& v, const void* p, size_t n) {
    if (n != 0) __builtin_memcpy(v.grow(n), p, n);
}

// Immutable bytes with a plain reference count, made by the shard that routes a message and referenced by the send
// queues of that shard's connections; freed there when the last send that needs them has completed.
class shared_bytes {
public:
    static shared_bytes* make(std::span<const uint8_t> bytes); // one reference
    void add_ref() { ++refs_; }
    void release() {
        if (--refs_ == 0) destroy();
    }
    const uint8_t* data() const { return reinterpret_cast<const uint8_t*>(this + 1); }
    size_t size() const { return size_; }
    uint32_t refs() const { return refs_; }

private:
    explicit shared_bytes(size_t n) : size_(n) {}
    void destroy();
    size_t size_;
    uint32_t refs_ = 1;
};

class send_queue {
public:
    send_queue() = default;
    ~send_queue();
    send_queue(const send_queue&) = delete;
    send_queue& operator=(const send_queue&) = delete;

    // The queued inline bytes, for appending (grow/append/encode); what is appended goes after every shared piece
    // queued before it. One call per frame, at its start (then at most append_payload for its end): a call may seal
    // what is queued as a chunk, and chunks must begin at a frame (requeue_untaken parses the queue without the batch
    // in flight). The bytes do not move when sealed, so a pointer from grow() stays valid until the next growth.
    byte_vec& bytes() {
        if (out_.size() >= chunk_bytes) [[unlikely]]
            seal();
        return out_;
    }
    // Queues the first len bytes of b (takes a new reference): whole frames, so what is queued may be sealed after it.
    void append_shared(shared_bytes* b, size_t len);
    // Queues m's payload (takes a new reference on m): a frame's payload sent from the message itself, the frame's
    // end (what is queued may be sealed after it).
    void append_payload(session::message* m);

    bool has_queued() const {
        return !out_.empty() || (g_ && (!g_->queued.empty() || g_->chunk_head < g_->chunks.size()));
    }
    // Bytes queued plus the bytes of the batch in flight not yet sent.
    size_t pending_bytes() const {
        return out_.size() + (g_ ? g_->queued_bytes + g_->chunks_bytes : 0) + flight_size() - sent_;
    }

    // Makes the oldest sealed chunk, or else everything queued, the batch in flight. The previous batch must be
    // complete.
    void start_batch();
    // Joins the backlog's chunks and what is queued after them into one, so that the next batch is all of it (a close
    // sends what is queued in one go, the answers at its end included, before its shutdown); not past max_bytes (a
    // socket takes no more at once: the shutdown would cut it, after a copy of it all).
    void unseal(size_t max_bytes);
    // What the next send of the batch carries: one contiguous range when that is all that is left to send, else an
    // iovec list in the returned msghdr (valid until the next call; at most max_iov entries, the rest goes in later
    // sends).
    struct next_send {
        const uint8_t* data = nullptr; // contiguous case
        size_t len = 0;
        msghdr* msg = nullptr; // gathered case
    };
    next_send next();
    // Records that n bytes of the batch were sent; returns true when the whole batch is.
    bool sent(size_t n);
    // Releases the finished batch (and memory a burst grew beyond what steady traffic needs).
    void finish_batch();

    // Frees the bookkeeping of shared pieces when none is queued or in flight (for a connection that went idle).
    void trim();
    // Appends the queued bytes, not those of the batch in flight, to out in the order they would go.
    void copy_queued(std::vector<uint8_t>& out) const;
    // Forgets the queued bytes (not the batch in flight), releasing their shared pieces.
    void drop_queued();
    // Whether the batch in flight has bytes the socket has not taken (a send of it is pending, or one failed).
    bool flight_unsent() const { return sent_ < flight_size(); }
    // Appends the whole batch in flight to out in the order it goes; returns how many of its bytes the socket took.
    size_t copy_flight(std::vector<uint8_t>& out) const;
    // The memory its inline bytes hold (queued, sealed and in flight), allocated room included.
    size_t held_bytes() const;

    static constexpr size_t max_iov = 256;
    // Inline bytes past which what is queued is sealed as a chunk of the backlog (a batch of its own).
    static constexpr size_t chunk_bytes = 262144;

private:
    struct piece {
        size_t at; // where in the inline bytes it goes: before out_[at]
        const uint8_t* data;
        size_t len;
        void* owner; // holds one reference: a shared_bytes, or a session::message when `message`
        bool message;
    };
    void push_piece(const piece& p);
    // Moves the queued bytes and pieces to the end of the backlog.
    void seal();
    // Seals what is queued once its bytes and pieces reach chunk_bytes (after a whole frame of pieces).
    void seal_full() {
        if (out_.size() + g_->queued_bytes >= chunk_bytes) [[unlikely]]
            seal();
    }
    // Bytes sealed by seal(), with the pieces that go among them (at positions in those bytes).
    struct chunk {
        byte_vec bytes;
        std::vector<piece> pieces;
    };
    // Only connections that have been sent a shared piece, or that have a backlog of chunks, allocate this.
    struct gather {
        std::vector<piece> queued;
        std::vector<piece> flight;
        size_t queued_bytes = 0;
        size_t flight_bytes = 0;
        // The backlog, oldest first from chunks[chunk_head] (a vector, which costs nothing until used), queued ahead
        // of the inline bytes and `queued`; chunks_bytes counts its bytes and pieces.
        std::vector<chunk> chunks;
        size_t chunk_head = 0;
        size_t chunks_bytes = 0;
        std::vector<iovec> iov;
        msghdr msg{};
        // Where the unsent part of the batch starts: segment `seg` of the flight (even: the inline bytes before piece
        // seg/2, or after the last piece; odd: piece seg/2), which starts at byte `seg_off` of the batch. Advanced by
        // sent(), so resuming a long batch does not walk it from its start again.
        size_t seg = 0;
        size_t seg_off = 0;
    };
    // Segment k of the batch in flight (see gather::seg); k <= 2 * flight.size().
    std::span<const uint8_t> segment(size_t k) const;
    size_t flight_size() const { return sending_.size() + (g_ ? g_->flight_bytes : 0); }
    static void release(std::vector<piece>& v);
    // Appends bytes with the pieces spliced in where they go (pieces may be null: inline bytes only).
    static void splice(const byte_vec& bytes, const std::vector<piece>* pieces, std::vector<uint8_t>& out);

    byte_vec out_;
    byte_vec sending_;
    size_t sent_ = 0; // bytes of the batch in flight already sent
    std::unique_ptr<gather> g_;
};

} // namespace ringmq::broker
