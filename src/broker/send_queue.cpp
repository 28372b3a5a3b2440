#include "broker/send_queue.hpp"

#include <algorithm>
#include <cstring>
#include <new>

namespace ringmq::broker {

void byte_vec::reallocate(size_t need) {
    // Doubling keeps appends amortised constant; realloc moves the old bytes in one copy (or not at all).
    const size_t cap = std::max(need, 2 * cap_);
    void* p = std::realloc(p_, cap);
    if (!p) throw std::bad_alloc();
    p_ = static_cast<uint8_t*>(p);
    cap_ = cap;
}

shared_bytes* shared_bytes::make(std::span<const uint8_t> bytes) {
    void* mem = ::operator new(sizeof(shared_bytes) + bytes.size());
    auto* b = ::new (mem) shared_bytes(bytes.size());
    if (!bytes.empty()) std::memcpy(b + 1, bytes.data(), bytes.size());
    return b;
}

void shared_bytes::destroy() {
    this->~shared_bytes();
    ::operator delete(this);
}

send_queue::~send_queue() {
    if (!g_) return;
    drop_queued();
    release(g_->flight);
}

void send_queue::release(std::vector<piece>& v) {
    for (piece& p : v) {
        if (p.message)
            static_cast<session::message*>(p.owner)->release();
        else
            static_cast<shared_bytes*>(p.owner)->release();
    }
    v.clear();
}

void send_queue::seal() {
    if (!g_) g_ = std::make_unique<gather>();
    chunk& k = g_->chunks.emplace_back();
    k.bytes.swap(out_);
    // A frame that went past the room reserved (or the first chunk's doubling) left up to twice its bytes allocated,
    // which the chunk would keep while it waits: one copy to its size is cheaper than that memory.
    if (k.bytes.capacity() - k.bytes.size() > k.bytes.size() / 8) {
        byte_vec exact;
        exact.reserve(k.bytes.size());
        append(exact, k.bytes.data(), k.bytes.size());
        k.bytes.swap(exact);
    }
    k.pieces.swap(g_->queued);
    g_->chunks_bytes += k.bytes.size() + g_->queued_bytes;
    g_->queued_bytes = 0;
    // A backlog of inline bytes goes on: the next chunk's room at once, rather than doubling up to it from nothing (a
    // copy of each byte more, and up to twice the room). Not for one of pieces (a fan-out's shared frames).
    if (k.bytes.size() >= chunk_bytes / 2) out_.reserve(chunk_bytes + chunk_bytes / 16);
}

void send_queue::push_piece(const piece& p) {
    if (!g_) g_ = std::make_unique<gather>();
    g_->queued.push_back(p);
    g_->queued_bytes += p.len;
}

void send_queue::append_shared(shared_bytes* b, size_t len) {
    if (len == 0) return;
    b->add_ref();
    push_piece(piece{out_.size(), b->data(), len, b, false});
    seal_full();
}

void send_queue::append_payload(session::message* m) {
    const std::span<const uint8_t> p = m->payload();
    if (p.empty()) return;
    m->add_ref();
    push_piece(piece{out_.size(), p.data(), p.size(), m, true});
    seal_full();
}

void send_queue::splice(const byte_vec& bytes, const std::vector<piece>* pieces, std::vector<uint8_t>& out) {
    size_t from = 0;
    if (pieces) {
        for (const piece& p : *pieces) {
            out.insert(out.end(), bytes.begin() + from, bytes.begin() + p.at);
            out.insert(out.end(), p.data, p.data + p.len);
            from = p.at;
        }
    }
    out.insert(out.end(), bytes.begin() + from, bytes.end());
}

void send_queue::copy_queued(std::vector<uint8_t>& out) const {
    if (g_) {
        for (size_t i = g_->chunk_head; i < g_->chunks.size(); ++i)
            splice(g_->chunks[i].bytes, &g_->chunks[i].pieces, out);
    }
    splice(out_, g_ ? &g_->queued : nullptr, out);
}

size_t send_queue::copy_flight(std::vector<uint8_t>& out) const {
    splice(sending_, g_ ? &g_->flight : nullptr, out);
    return sent_;
}

size_t send_queue::held_bytes() const {
    size_t n = out_.capacity() + sending_.capacity();
    if (g_) {
        for (size_t i = g_->chunk_head; i < g_->chunks.size(); ++i)
            n += g_->chunks[i].bytes.capacity();
    }
    return n;
}

void send_queue::drop_queued() {
    out_.clear();
    if (g_) {
        release(g_->queued);
        g_->queued_bytes = 0;
        for (size_t i = g_->chunk_head; i < g_->chunks.size(); ++i)
            release(g_->chunks[i].pieces);
        g_->chunks.clear();
        g_->chunk_head = 0;
        g_->chunks_bytes = 0;
    }
}

void send_queue::start_batch() {
    sending_.clear();
    sent_ = 0;
    if (g_ && g_->chunk_head < g_->chunks.size()) [[unlikely]] {
        // The sent batch's buffer goes with the chunk's husk: a backlog's chunks are each of their own size.
        chunk& k = g_->chunks[g_->chunk_head++];
        sending_.swap(k.bytes);
        k.bytes.release();
        g_->flight.swap(k.pieces);
        std::vector<piece>().swap(k.pieces);
        g_->flight_bytes = 0;
        for (const piece& p : g_->flight)
            g_->flight_bytes += p.len;
        g_->chunks_bytes -= sending_.size() + g_->flight_bytes;
        // The husks before the head go once they are half the list (a reader that keeps a backlog never empties it).
        if (2 * g_->chunk_head >= g_->chunks.size()) {
            g_->chunks.erase(g_->chunks.begin(), g_->chunks.begin() + static_cast<ptrdiff_t>(g_->chunk_head));
            g_->chunk_head = 0;
        }
        g_->seg = 0;
        g_->seg_off = 0;
        return;
    }
    sending_.swap(out_);
    if (g_) {
        g_->flight.swap(g_->queued);
        g_->flight_bytes = g_->queued_bytes;
        g_->queued_bytes = 0;
        g_->seg = 0;
        g_->seg_off = 0;
    }
}

void send_queue::unseal(size_t max_bytes) {
    if (!g_ || g_->chunk_head == g_->chunks.size() || pending_bytes() > max_bytes) return;
    byte_vec all;
    std::vector<piece> pieces;
    size_t total = out_.size(), count = g_->queued.size();
    for (size_t i = g_->chunk_head; i < g_->chunks.size(); ++i) {
        total += g_->chunks[i].bytes.size();
        count += g_->chunks[i].pieces.size();
    }
    all.reserve(total);
    pieces.reserve(count);
    const auto take = [&](byte_vec& bytes, std::vector<piece>& from) {
        const size_t base = all.size();
        append(all, bytes.data(), bytes.size());
        for (piece p : from) {
            p.at += base;
            pieces.push_back(p);
        }
        bytes.release();
        from.clear(); // the references move to `pieces`
    };
    for (size_t i = g_->chunk_head; i < g_->chunks.size(); ++i)
        take(g_->chunks[i].bytes, g_->chunks[i].pieces);
    take(out_, g_->queued);
    g_->queued_bytes = 0;
    for (const piece& p : pieces)
        g_->queued_bytes += p.len;
    g_->chunks.clear();
    g_->chunk_head = 0;
    g_->chunks_bytes = 0;
    out_.swap(all);
    g_->queued.swap(pieces);
}

std::span<const uint8_t> send_queue::segment(size_t k) const {
    const std::vector<piece>& f = g_->flight;
    const size_t j = k / 2;
    if (k % 2 == 1) return {f[j].data, f[j].len};
    const size_t from = j == 0 ? 0 : f[j - 1].at;
    const size_t to = j < f.size() ? f[j].at : sending_.size();
    return {sending_.data() + from, to - from};
}

send_queue::next_send send_queue::next() {
    if (!g_ || g_->flight.empty()) return next_send{sending_.data() + sent_, sending_.size() - sent_, nullptr};
    // The batch is the inline bytes with the pieces spliced in at their positions; start at the first unsent byte.
    std::vector<iovec>& iov = g_->iov;
    iov.clear();
    size_t skip = sent_ - g_->seg_off;
    const size_t segments = 2 * g_->flight.size() + 1;
    for (size_t k = g_->seg; k < segments && iov.size() < max_iov; ++k) {
        const std::span<const uint8_t> s = segment(k);
        if (s.size() > skip) iov.push_back(iovec{const_cast<uint8_t*>(s.data() + skip), s.size() - skip});
        skip -= std::min(skip, s.size());
    }
    // One range left (typically a lone shared fan-out frame): a plain send, which spares the kernel copying and
    // checking a msghdr and an iovec for every subscriber.
    if (iov.size() == 1) return next_send{static_cast<const uint8_t*>(iov[0].iov_base), iov[0].iov_len, nullptr};
    g_->msg = msghdr{};
    g_->msg.msg_iov = iov.data();
    g_->msg.msg_iovlen = iov.size();
    return next_send{nullptr, 0, &g_->msg};
}

void send_queue::trim() {
    if (g_ && g_->queued.empty() && g_->flight.empty() && g_->chunks.empty()) g_.reset();
}

bool send_queue::sent(size_t n) {
    sent_ += n;
    if (g_ && !g_->flight.empty()) {
        const size_t segments = 2 * g_->flight.size() + 1;
        while (g_->seg < segments) {
            const size_t len = segment(g_->seg).size();
            if (g_->seg_off + len > sent_) break;
            g_->seg_off += len;
            ++g_->seg;
        }
    }
    return sent_ >= flight_size();
}

void send_queue::finish_batch() {
    sending_.clear();
    sent_ = 0;
    if (sending_.capacity() > chunk_bytes) sending_.release(); // a burst is over: give memory back
    if (g_) {
        release(g_->flight);
        g_->flight_bytes = 0;
        // After a burst of more pieces than one sendmsg takes, the lists go (once nothing is queued) rather than stay
        // at their peak; either list may hold the large one, as start_batch swaps them.
        if (g_->queued.empty() && g_->chunks.empty() &&
            std::max(g_->queued.capacity(), g_->flight.capacity()) > max_iov)
            g_.reset();
    }
}

} // namespace ringmq::broker
