#pragma once
// A provided-buffer ring for multishot recv: `count` buffers of `size` bytes registered with the shard's ring under
// one buffer group id. The shard hands each buffer back as soon as the packets in it are handled.
//
// Where the kernel allows it (Linux 6.12+, IOU_PBUF_RING_INC) buffers are consumed incrementally: each recv takes only
// the bytes it needs from the buffer at the head of the ring, and the next recv, from any socket, continues right
// after them. Small packets from many connections then pack densely into a few hot buffers instead of each taking a
// whole one, and a large burst from one socket fills a buffer in one recv. A completion flagged
// IORING_CQE_F_BUF_MORE leaves its buffer in the kernel's hands; the one without the flag ends the buffer's use, and
// the shard recycles it after handling those bytes. Owned by one shard, used only on its thread.
#include "io/ring.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace ringmq::io {

class buffer_ring {
public:
    buffer_ring() = default;
    ~buffer_ring();
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    // Whether the kernel takes IOU_PBUF_RING_INC (registers and drops a one-entry ring under a spare group id).
    static bool incremental_supported(ring& r);

    // count must be a power of two. incremental asks for IOU_PBUF_RING_INC and falls back to whole buffers on
    // kernels without it (see incremental()).
    //
    // An incremental ring relies on completions arriving in the order the kernel used the buffer: true for the
    // multishot recvs that share it, whose completions are posted as they happen, but not when a one-shot recv (whose
    // completion is posted at the end of the kernel's batch) shares the ring with them. One-shot recvs need a ring of
    // their own without incremental consumption.
    bool init(ring& r, uint16_t group, uint32_t count, uint32_t size, std::string& why, bool incremental = false);

    uint16_t group() const { return group_; }
    uint32_t buffer_size() const { return size_; }
    bool incremental() const { return incremental_; }
    uint8_t* data(uint16_t bid) { return base_ + size_t{bid} * size_; }

    // The first byte of a recv completion's `len` (> 0) bytes in buffer bid (cqe_flags as reaped). Call once per
    // completion that has IORING_CQE_F_BUFFER and bytes, in completion order, then release() once the bytes are
    // handled; a completion with a buffer and no bytes goes to received_nothing() instead.
    uint8_t* received(uint16_t bid, uint32_t len, uint32_t cqe_flags) {
        uint8_t* p = data(bid) + offset_[bid];
        offset_[bid] = incremental_ && (cqe_flags & cqe_buf_more) ? offset_[bid] + len : 0;
        return p;
    }
    // Ends this completion's use of buffer bid: recycles it unless the kernel keeps filling it (IORING_CQE_F_BUF_MORE).
    void release(uint16_t bid, uint32_t cqe_flags) {
        if (!(incremental_ && (cqe_flags & cqe_buf_more))) recycle(bid);
    }
    // A completion that carries buffer bid but no bytes (end of stream, or an error): the kernel consumed nothing of
    // it. A whole-buffer ring has still taken the buffer off its ring, so it is recycled. On an incremental ring it
    // stays the kernel's, at the offset it had, whatever the flags say: kernels 6.12 to 6.17 and early 6.18.y/6.12.y
    // (before "io_uring/kbuf: fix missing BUF_MORE for incremental buffers at EOF") leave IORING_CQE_F_BUF_MORE off
    // such a completion although the buffer stays at the head of their ring, and recycling it there would put it in
    // the ring twice and read the next socket's bytes from the wrong place.
    void received_nothing(uint16_t bid) {
        if (!incremental_) recycle(bid);
    }
    // Returns a buffer to the kernel; made visible in one store by commit().
    void recycle(uint16_t bid);
    // Publishes the recycled buffers. Returns true if any were published.
    bool commit();
    uint64_t enobufs = 0; // times a recv on this ring found no buffer (flow control: re-armed a turn later)

    // IORING_CQE_F_BUF_MORE (Linux 6.12); the liburing headers of Debian 12 predate it.
    static constexpr uint32_t cqe_buf_more = 1U << 4;

private:
    ring* ring_ = nullptr;
    io_uring_buf_ring* br_ = nullptr;
    uint8_t* base_ = nullptr;
    std::unique_ptr<uint32_t[]> offset_; // per buffer: where the next completion's bytes start
    size_t ring_bytes_ = 0;
    uint32_t count_ = 0;
    uint32_t size_ = 0;
    uint16_t group_ = 0;
    int pending_ = 0;
    bool incremental_ = false;
};

} // namespace ringmq::io
