#pragma once
// A FIFO on one vector with a moving head: no allocation while empty, unlike std::deque whose empty instance already
// holds a 512-byte node (two per session made idle sessions cost over a kilobyte). Owned by a session, on its home
// shard. Iterators and references are invalidated by push_back, pop_front (when compacting) and erase.
#include <cstddef>
#include <utility>
#include <vector>

namespace ringmq::session {

template <typename T> class fifo {
public:
    using iterator = typename std::vector<T>::iterator;
    using const_iterator = typename std::vector<T>::const_iterator;

    bool empty() const { return head_ == items_.size(); }
    size_t size() const { return items_.size() - head_; }
    T& front() { return items_[head_]; }
    const T& front() const { return items_[head_]; }
    T& back() { return items_.back(); }
    const T& back() const { return items_.back(); }
    void push_back(T&& v) { items_.push_back(std::move(v)); }
    void pop_front() {
        items_[head_] = T{}; // release what the element holds now, not at the next compaction
        ++head_;
        if (head_ == items_.size()) {
            clear();
        } else if (head_ >= 64 && head_ * 2 >= items_.size()) {
            items_.erase(items_.begin(), items_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
    }
    iterator begin() { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
    iterator end() { return items_.end(); }
    const_iterator begin() const { return items_.begin() + static_cast<std::ptrdiff_t>(head_); }
    const_iterator end() const { return items_.end(); }
    iterator erase(iterator it) {
        if (it == begin()) {
            pop_front();
            return begin();
        }
        return items_.erase(it);
    }
    void clear() {
        items_.clear();
        head_ = 0;
        if (items_.capacity() > 256) std::vector<T>().swap(items_); // a drained burst gives its memory back
    }

private:
    std::vector<T> items_;
    size_t head_ = 0;
};

} // namespace ringmq::session
