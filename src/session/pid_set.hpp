#pragma once
// A set of MQTT packet ids (1..65535): the incoming QoS 2 ids of one session that await PUBREL. Owned by that
// session, on its home shard. An open-addressed table of ids (0 marks a free slot) indexed by the id's low bits,
// with Robin Hood linear probing (along a run, ids stand in order of their distance from their home slot): a client
// gives its ids in rotation, so the ids awaiting release at one time are mostly consecutive, each in its home slot,
// and the lookup, insertion and the deletion's backward shift stop at once. At 65536 slots every id has its own.
// No allocation per id (std::unordered_set allocated a node for each QoS 2 PUBLISH and freed it at its PUBREL,
// about 190 instructions per message), and the table shrinks again when most of it is free.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace ringmq::session {

class pid_set {
public:
    pid_set() = default;
    // Not copied or moved: it lives in its session's QoS 2 state, allocated once, and a moved-from table would have to
    // be made consistent for nothing.
    pid_set(const pid_set&) = delete;
    pid_set& operator=(const pid_set&) = delete;

    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    // Slots held now (for tests: the table's memory is 2 bytes a slot).
    size_t capacity() const { return cap_; }

    bool contains(uint16_t pid) const {
        if (pid == 0 || cap_ == 0) return false;
        const size_t mask = cap_ - 1;
        // An id further along than any id of its distance from home could stand is not there.
        for (size_t i = pid & mask, d = 0;; i = (i + 1) & mask, ++d) {
            if (slots_[i] == pid) return true;
            if (slots_[i] == 0 || distance(i) < d) return false;
        }
    }
    // False when pid was in the set already. pid must not be 0 (not an id).
    bool insert(uint16_t pid) {
        if (2 * (size_ + 1) > cap_ && cap_ < max_slots) rehash(cap_ == 0 ? min_slots : 2 * cap_);
        const size_t mask = cap_ - 1;
        // One walk looks the id up and places it: the id being placed takes the slot of any id nearer its home than
        // it is, which moves on in its stead. Up to the first such slot the id would have stood, if present; the ids
        // carried on after it are ones taken out of the table, which stand nowhere else in it.
        for (size_t i = pid & mask, d = 0;; i = (i + 1) & mask, ++d) {
            if (slots_[i] == 0) {
                slots_[i] = pid;
                break;
            }
            if (slots_[i] == pid) return false;
            if (const size_t e = distance(i); e < d) {
                std::swap(slots_[i], pid);
                d = e;
            }
        }
        ++size_;
        return true;
    }
    // False when pid was not in the set.
    bool erase(uint16_t pid) {
        if (pid == 0 || cap_ == 0) return false;
        const size_t mask = cap_ - 1;
        size_t i = pid & mask;
        for (size_t d = 0; slots_[i] != pid; i = (i + 1) & mask, ++d)
            if (slots_[i] == 0 || distance(i) < d) return false;
        // Backward shift: the ids after it in the run move back one slot, up to the first free slot or id at home.
        for (size_t j = (i + 1) & mask; slots_[j] != 0 && distance(j) != 0; i = j, j = (j + 1) & mask)
            slots_[i] = slots_[j];
        slots_[i] = 0;
        --size_;
        if (cap_ > keep_slots && 8 * size_ < cap_) rehash(cap_ / 4 > keep_slots ? cap_ / 4 : keep_slots);
        return true;
    }

private:
    static constexpr size_t min_slots = 16;
    static constexpr size_t keep_slots = 256; // never shrunk below this (512 bytes): a steady flow keeps its table
    static constexpr size_t max_slots = 65536;

    // How far the id in slot i stands past its home slot.
    size_t distance(size_t i) const { return (i - (slots_[i] & (cap_ - 1))) & (cap_ - 1); }
    void rehash(size_t cap) {
        // Allocated before anything changes: should it throw, the set is as it was.
        std::unique_ptr<uint16_t[]> old = std::make_unique<uint16_t[]>(cap); // zeroed: every slot free
        old.swap(slots_);
        const size_t old_cap = cap_;
        cap_ = cap;
        size_ = 0;
        for (size_t k = 0; k < old_cap; ++k)
            if (old[k] != 0) insert(old[k]);
    }

    std::unique_ptr<uint16_t[]> slots_;
    size_t cap_ = 0;
    size_t size_ = 0;
};

} // namespace ringmq::session
