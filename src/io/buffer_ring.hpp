#pragma once
// A provided-buffer ring for multishot recv: `count` buffers of `size` bytes registered with the shard's ring under
// one buffer group id. The kernel picks a buffer per recv completion; the shard hands each buffer back as soon as
// the packets in it are handled. Owned by one shard, used only on its thread.
#include "io/ring.hpp"

#include <cstdint>
#include <string>

namespace ringmq::io {

class buffer_ring {
public:
    buffer_ring() = default;
    ~buffer_ring();
    buffer_ring(const buffer_ring&) = delete;
    buffer_ring& operator=(const buffer_ring&) = delete;

    // count must be a power of two.
    bool init(ring& r, uint16_t group, uint32_t count, uint32_t size, std::string& why);

    uint16_t group() const { return group_; }
    uint32_t buffer_size() const { return size_; }
    uint8_t* data(uint16_t bid) { return base_ + size_t{bid} * size_; }
    // Returns a buffer to the kernel; made visible in one store by commit().
    void recycle(uint16_t bid);
    // Publishes the recycled buffers. Returns true if any were published.
    bool commit();
    uint64_t enobufs = 0; // times a multishot recv stopped for lack of buffers (flow control, counted)

private:
    ring* ring_ = nullptr;
    io_uring_buf_ring* br_ = nullptr;
    uint8_t* base_ = nullptr;
    size_t ring_bytes_ = 0;
    uint32_t count_ = 0;
    uint32_t size_ = 0;
    uint16_t group_ = 0;
    int pending_ = 0;
};

} // namespace ringmq::io
