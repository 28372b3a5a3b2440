#pragma once
// An immutable application message (topic + payload + QoS + retain), allocated once when it must outlive the packet
// it came in (offline queue, inflight window, retained store, cross-shard forwarding) and shared by reference.
// Created on the shard that received the PUBLISH; it may then be referenced from any shard. The reference count is
// atomic because a message crosses shards; whichever shard drops the last reference frees it (mimalloc frees
// cross-thread cheaply). Nothing in it changes after creation.
#include "mqtt/varint.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <string_view>
#include <utility>

namespace ringmq::session {

// The topic and payload are held as a 3.x PUBLISH frame with a packet id (QoS 1 or 2): a subscriber's copy is then
// the frame with its first byte and packet id set, not an encoding (about a hundred instructions per QoS 1 delivery
// less), for 6 to 9 bytes more per message.
class message {
public:
    // Always inlined: it is on every QoS 1 publish's path, and GCC's size estimate put it out of line at the edge
    // (20 instructions more per 1->1 QoS 1 delivery in perf/profile instr, most of it saving and restoring registers).
    [[gnu::always_inline]] static message* make(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                                                bool retain) {
        const uint32_t rl = static_cast<uint32_t>(2 + topic.size() + 2 + payload.size());
        const size_t hl = head_len(rl);
        void* mem = std::malloc(sizeof(message) + hl + topic.size() + 2 + payload.size());
        if (!mem) throw std::bad_alloc();
        auto* m =
            new (mem) message(static_cast<uint16_t>(topic.size()), static_cast<uint32_t>(payload.size()), qos, retain);
        uint8_t* d = m->bytes();
        *d++ = static_cast<uint8_t>(0x32 | (retain ? 1 : 0));
        d += mqtt::write_varint(rl, d);
        *d++ = static_cast<uint8_t>(topic.size() >> 8);
        *d++ = static_cast<uint8_t>(topic.size());
        std::memcpy(d, topic.data(), topic.size());
        d += topic.size();
        d[0] = d[1] = 0; // the packet id, set in each subscriber's copy
        if (!payload.empty()) std::memcpy(d + 2, payload.data(), payload.size());
        return m;
    }
    // A copy with a different retain flag / QoS (retained copies, will messages).
    message* with(uint8_t qos, bool retain) const { return make(topic(), payload(), qos, retain); }

    void add_ref() { refs_.fetch_add(1, std::memory_order_relaxed); }
    void release() {
        if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            this->~message();
            std::free(this);
        }
    }

    std::string_view topic() const { return {reinterpret_cast<const char*>(bytes()) + topic_at(), topic_len_}; }
    std::span<const uint8_t> payload() const { return {bytes() + topic_at() + topic_len_ + 2, payload_len_}; }
    // The message as a PUBLISH frame with a packet id (first byte 0x32 | retain, packet id 0); its head is the frame
    // up to the payload.
    std::span<const uint8_t> frame() const { return {bytes(), frame_head() + payload_len_}; }
    size_t frame_head() const { return topic_at() + topic_len_ + 2; }
    uint8_t qos() const { return qos_; }
    bool retain() const { return retain_; }
    size_t size() const { return sizeof(message) + frame().size(); }
    // The topic and payload bytes (what mqtt.max_queued_bytes counts).
    size_t data_size() const { return size_t{topic_len_} + payload_len_; }
    // A retained message's place in the node's order of retained updates (see retained_store::store); 0 elsewhere.
    uint32_t stamp() const { return stamp_; }
    void set_stamp(uint32_t s) { stamp_ = s; }
    // The references held now (exact only when no other shard holds one; for tests and diagnostics).
    uint32_t refs() const { return refs_.load(std::memory_order_relaxed); }

private:
    // The fixed header (1 byte and the remaining length's 1-4) and the topic length (2). A QoS 0 PUBLISH of the
    // largest size MQTT allows gains the 2 bytes of a packet id past what 4 bytes can say: 5 are written, and such a
    // frame is never sent (a QoS 0 message goes out at QoS 0, encoded apart).
    static size_t head_len(uint32_t rl) { return 1 + mqtt::varint_size(rl) + 2; }
    size_t topic_at() const { return head_len(2u + topic_len_ + 2u + payload_len_); }
    message(uint16_t tl, uint32_t pl, uint8_t qos, bool retain)
        : topic_len_(tl), qos_(qos), retain_(retain), payload_len_(pl) {}
    uint8_t* bytes() { return reinterpret_cast<uint8_t*>(this + 1); }
    const uint8_t* bytes() const { return reinterpret_cast<const uint8_t*>(this + 1); }

    std::atomic<uint32_t> refs_{1};
    uint16_t topic_len_;
    uint8_t qos_;
    bool retain_;
    uint32_t payload_len_;
    uint32_t stamp_ = 0; // in what was padding: the header stays 16 bytes
};

// An owning reference to a message (one add_ref/release pair).
class message_ref {
public:
    message_ref() = default;
    // Adopts a reference the caller already holds.
    static message_ref adopt(message* m) {
        message_ref r;
        r.m_ = m;
        return r;
    }
    static message_ref share(message* m) {
        if (m) m->add_ref();
        return adopt(m);
    }
    message_ref(const message_ref& o) : m_(o.m_) {
        if (m_) m_->add_ref();
    }
    message_ref(message_ref&& o) noexcept : m_(o.m_) { o.m_ = nullptr; }
    // Plain moves and copies, not copy-and-swap: the per-message paths move entries in and out of the session's
    // window and queue, and a by-value swap cost a temporary and a second null test each time.
    message_ref& operator=(message_ref&& o) noexcept {
        message* old = std::exchange(m_, std::exchange(o.m_, nullptr));
        if (old) old->release(); // (a self-move leaves old null)
        return *this;
    }
    message_ref& operator=(const message_ref& o) noexcept {
        if (o.m_) o.m_->add_ref();
        message* old = std::exchange(m_, o.m_);
        if (old) old->release();
        return *this;
    }
    ~message_ref() {
        if (m_) m_->release();
    }
    message* get() const { return m_; }
    message* operator->() const { return m_; }
    explicit operator bool() const { return m_ != nullptr; }
    message* detach() { return std::exchange(m_, nullptr); }

private:
    message* m_ = nullptr;
};

} // namespace ringmq::session
