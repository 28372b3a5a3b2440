#pragma once
// A FIFO in a ring of power-of-two capacity: no allocation while empty (unlike std::deque, whose empty instance
// already holds a 512-byte node), and a pop is an index step, with nothing to compact or move (a vector with a moving
// head cost about a hundred instructions per QoS 1 delivery in pops and compactions). A ring that a burst grew past 256
// entries shrinks once it holds under an eighth of that, so memory follows what is held. Owned by a session, on its
// home shard. Iterators are positions from the front: any pop, erase or insert shifts what they refer to. References
// stay valid across push_back unless it grows the ring, and across erase and insert except to the entries moved (those
// on the shorter side of the position) or when the ring shrinks.
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <utility>

namespace ringmq::session {

template <typename T> class fifo {
    template <typename F, typename V> class iter {
    public:
        using iterator_category = std::forward_iterator_tag;
        using value_type = T;
        using difference_type = std::ptrdiff_t;
        using pointer = V*;
        using reference = V&;
        iter() = default;
        iter(F* f, uint32_t i) : f_(f), i_(i) {}
        reference operator*() const { return f_->at(i_); }
        pointer operator->() const { return &f_->at(i_); }
        iter& operator++() {
            ++i_;
            return *this;
        }
        iter operator++(int) {
            iter r = *this;
            ++i_;
            return r;
        }
        iter operator+(std::ptrdiff_t n) const { return iter(f_, static_cast<uint32_t>(i_ + n)); }
        bool operator==(const iter& o) const { return i_ == o.i_; }
        uint32_t index() const { return i_; }

    private:
        F* f_ = nullptr;
        uint32_t i_ = 0; // position from the front
    };

public:
    using iterator = iter<fifo, T>;
    using const_iterator = iter<const fifo, const T>;

    fifo() = default;
    fifo(const fifo&) = delete;
    fifo& operator=(const fifo&) = delete;

    bool empty() const { return size_ == 0; }
    size_t size() const { return size_; }
    size_t capacity() const { return cap_; }
    T& front() { return buf_[head_]; }
    const T& front() const { return buf_[head_]; }
    T& back() { return at(size_ - 1); }
    const T& back() const { return at(size_ - 1); }
    T& operator[](size_t i) { return at(static_cast<uint32_t>(i)); }
    const T& operator[](size_t i) const { return at(static_cast<uint32_t>(i)); }
    void push_back(T&& v) {
        room_for_one();
        at(size_) = std::move(v);
        ++size_;
    }
    void pop_front() {
        buf_[head_] = T{}; // release what the element holds now (slots outside the live range stay empty)
        head_ = (head_ + 1) & (cap_ - 1);
        if (--size_ == 0)
            clear();
        else
            shrink_if_sparse();
    }
    iterator begin() { return iterator(this, 0); }
    iterator end() { return iterator(this, size_); }
    const_iterator begin() const { return const_iterator(this, 0); }
    const_iterator end() const { return const_iterator(this, size_); }
    // Removes the element at it; returns the position of the one that followed it. The shorter side is moved.
    iterator erase(iterator it) {
        const uint32_t i = it.index();
        if (i == 0) {
            pop_front();
            return begin();
        }
        if (i < size_ / 2) {
            for (uint32_t k = i; k > 0; --k)
                at(k) = std::move(at(k - 1));
            pop_front();
            return iterator(this, i);
        }
        for (uint32_t k = i; k + 1 < size_; ++k)
            at(k) = std::move(at(k + 1));
        at(size_ - 1) = T{};
        --size_;
        shrink_if_sparse();
        return iterator(this, i);
    }
    // Puts v at position i (0 = front), moving the shorter side: the entries before it one place towards the front,
    // or those from it on one place back.
    void insert(size_t i, T&& v) {
        room_for_one();
        const auto at_i = static_cast<uint32_t>(i);
        if (at_i < size_ / 2) {
            head_ = (head_ - 1) & (cap_ - 1);
            ++size_;
            for (uint32_t k = 0; k < at_i; ++k)
                at(k) = std::move(at(k + 1));
        } else {
            ++size_;
            for (uint32_t k = size_ - 1; k > at_i; --k)
                at(k) = std::move(at(k - 1));
        }
        at(at_i) = std::move(v);
    }
    void clear() {
        for (uint32_t k = 0; k < size_; ++k)
            at(k) = T{};
        size_ = 0;
        head_ = 0;
        if (cap_ > shrink_above) { // a drained burst gives its memory back
            buf_.reset();
            cap_ = 0;
        }
    }

private:
    static constexpr uint32_t min_cap = 4;
    static constexpr uint32_t shrink_above = 256;
    T& at(uint32_t i) { return buf_[(head_ + i) & (cap_ - 1)]; }
    const T& at(uint32_t i) const { return buf_[(head_ + i) & (cap_ - 1)]; }
    void room_for_one() {
        if (size_ == cap_) regrow(cap_ ? 2 * cap_ : min_cap);
    }
    void shrink_if_sparse() {
        if (cap_ > shrink_above && size_ < cap_ / 8) [[unlikely]]
            regrow(cap_ / 4);
    }
    // Out of line, so that push_back stays a few instructions inlined where it is called.
    [[gnu::noinline]] void regrow(uint32_t cap) {
        std::unique_ptr<T[]> bigger(new T[cap]);
        for (uint32_t k = 0; k < size_; ++k)
            bigger[k] = std::move(at(k));
        buf_ = std::move(bigger);
        cap_ = cap;
        head_ = 0;
    }

    std::unique_ptr<T[]> buf_;
    uint32_t head_ = 0;
    uint32_t size_ = 0;
    uint32_t cap_ = 0;
};

} // namespace ringmq::session
