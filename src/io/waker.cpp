#include "io/waker.hpp"

#include "util/assert.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

namespace ringmq::io {

waker::waker() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) { RINGMQ_ASSERT(fd_ >= 0); }

waker::~waker() {
    if (fd_ >= 0) ::close(fd_);
}

void waker::arm(ring& r) {
    ring_ = &r;
    if (pending_ || stopped_) return;
    io_uring_sqe* s = r.sqe();
    io_uring_prep_read(s, fd_, &value_, sizeof value_, 0);
    set_completion(s, this);
    pending_ = true;
}

void waker::wake() {
    uint64_t one = 1;
    ssize_t rc = ::write(fd_, &one, sizeof one);
    (void)rc; // EAGAIN means the counter is already non-zero: the shard will wake anyway
}

void waker::on_complete(int, uint32_t) {
    pending_ = false;
    if (!stopped_) arm(*ring_);
}

} // namespace ringmq::io
