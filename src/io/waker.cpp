#include "io/waker.hpp"

#include "util/log.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace ringmq::io {

waker::waker() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (fd_ < 0) error_ = errno;
}

bool waker::usable(std::string& why) const {
    if (fd_ >= 0) return true;
    why = fmt::format("cannot make its wake-up eventfd: {}", std::strerror(error_));
    return false;
}

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

void waker::announce(reactor::smp& s, unsigned self, ring& r) {
    if (r.can_message()) s.set_ring(self, r.fd(), static_cast<completion*>(&sink_));
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

peer_waker::peer_waker(reactor::smp& s, bool enabled)
    : smp_(s), enabled_(enabled), failed_(std::make_unique<failed[]>(s.size())) {
    for (unsigned i = 0; i < s.size(); ++i) {
        failed_[i].owner = this;
        failed_[i].to = i;
    }
}

void peer_waker::attach(ring& r) {
    if (enabled_ && r.can_message()) ring_ = &r;
}

void peer_waker::wake(unsigned to) {
    const int fd = ring_ ? smp_.ring_fd(to) : -1;
    if (fd < 0) {
        ++fell_back_;
        smp_.wake(to);
        return;
    }
    ++messaged_;
    ring_->message(fd, smp_.ring_token(to), &failed_[to]);
}

void peer_waker::failed::on_complete(int res, uint32_t) {
    if (res >= 0) return;
    ++owner->fell_back_;
    --owner->messaged_;
    if (!owner->warned_) {
        owner->warned_ = true;
        log::warn("waking shard {} through its ring failed ({}): woken through its eventfd instead", to,
                  std::strerror(-res));
    }
    owner->smp_.wake(to);
}

} // namespace ringmq::io
