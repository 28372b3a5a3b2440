#include "io/buffer_ring.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

namespace ringmq::io {

buffer_ring::~buffer_ring() {
    if (br_) {
        io_uring_unregister_buf_ring(ring_->raw(), group_);
        munmap(br_, ring_bytes_);
    }
    if (base_) munmap(base_, size_t{count_} * size_);
}

namespace {
constexpr uint16_t pbuf_ring_inc = 2; // IOU_PBUF_RING_INC, io_uring_buf_reg.flags (named `pad` in older headers)
} // namespace

bool buffer_ring::incremental_supported(ring& r) {
    if (!features_allowed(6, 12)) return false;
    constexpr uint16_t spare_group = 0xfffe;
    void* m = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (m == MAP_FAILED) return false;
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(m);
    reg.ring_entries = 1;
    reg.bgid = spare_group;
    reg.pad = pbuf_ring_inc;
    const bool ok = io_uring_register_buf_ring(r.raw(), &reg, 0) == 0;
    if (ok) io_uring_unregister_buf_ring(r.raw(), spare_group);
    munmap(m, 4096);
    return ok;
}

bool buffer_ring::init(ring& r, uint16_t group, uint32_t count, uint32_t size, std::string& why, bool incremental) {
    ring_ = &r;
    group_ = group;
    count_ = count;
    size_ = size;
    ring_bytes_ = count * sizeof(io_uring_buf);
    void* m = mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (m == MAP_FAILED) {
        why = fmt::format("buffer ring: mmap failed: {}", std::strerror(errno));
        return false;
    }
    br_ = static_cast<io_uring_buf_ring*>(m);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<uint64_t>(br_);
    reg.ring_entries = count;
    reg.bgid = group;
    int rc = -EINVAL;
    if (incremental) {
        reg.pad = pbuf_ring_inc;
        rc = io_uring_register_buf_ring(r.raw(), &reg, 0);
        reg.pad = 0;
    }
    incremental_ = rc == 0;
    if (rc == -EINVAL) rc = io_uring_register_buf_ring(r.raw(), &reg, 0); // whole buffers: before Linux 6.12
    if (rc < 0) {
        munmap(br_, ring_bytes_);
        br_ = nullptr;
        why = fmt::format("buffer ring: register failed: {}", std::strerror(-rc));
        return false;
    }
    void* b = mmap(nullptr, size_t{count} * size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (b == MAP_FAILED) {
        why = fmt::format("buffer ring: mmap of {} buffers failed: {}", count, std::strerror(errno));
        return false;
    }
    base_ = static_cast<uint8_t*>(b);
    offset_ = std::make_unique<uint32_t[]>(count);
    io_uring_buf_ring_init(br_);
    for (uint32_t i = 0; i < count; ++i)
        io_uring_buf_ring_add(br_, data(static_cast<uint16_t>(i)), size, static_cast<uint16_t>(i),
                              io_uring_buf_ring_mask(count), static_cast<int>(i));
    io_uring_buf_ring_advance(br_, static_cast<int>(count));
    return true;
}

void buffer_ring::recycle(uint16_t bid) {
    io_uring_buf_ring_add(br_, data(bid), size_, bid, io_uring_buf_ring_mask(count_), pending_);
    ++pending_;
}

bool buffer_ring::commit() {
    if (pending_ == 0) return false;
    io_uring_buf_ring_advance(br_, pending_);
    pending_ = 0;
    return true;
}

} // namespace ringmq::io
