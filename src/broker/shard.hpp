#pragma once
// One MQTT shard: a thread with its own io_uring, buffer ring, connections, sessions, topic trie, retained copy and
// counters. The app creates every shard on the main thread, then run() executes on the shard's own thread until
// request_stop(); nothing of a shard is touched by another thread except through the SMP queues, the waker and the
// `node` counters that are atomic.
#include "broker/control.hpp"
#include "broker/flight_waits.hpp"
#include "broker/idle_poll.hpp"
#include "broker/metrics.hpp"
#include "broker/retained_store.hpp"
#include "broker/send_queue.hpp"
#include "broker/wake_batch.hpp"
#include "config/config.hpp"
#include "io/buffer_ring.hpp"
#include "io/ring.hpp"
#include "io/waker.hpp"
#include "listener/listener.hpp"
#include "listener/peer_addr.hpp"
#include "mqtt/types.hpp"
#include "reactor/deadline_wheel.hpp"
#include "reactor/gate.hpp"
#include "reactor/outbox.hpp"
#include "reactor/smp.hpp"
#include "reactor/task.hpp"
#include "routing/topic_trie.hpp"
#include "session/session.hpp"
#include "util/log.hpp"

#include <atomic>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace ringmq::broker {

class shard;
class connection;

// Process-wide state shared by all shards: the immutable config, the SMP matrix and the few node-wide atomics.
// Created by main before the shards and destroyed after they have all stopped.
struct node {
    node(const config::config& c, unsigned n);
    const config::config& cfg;
    unsigned mqtt_shards; // MQTT shards 0..n-1; the admin shard is participant n of the SMP matrix
    reactor::smp smp;
    int64_t started_at = 0;                  // unix seconds
    std::atomic<bool> retainer_active{true}; // the retainer module (admin plugin switch)
    std::atomic<uint32_t> connections{0};    // accepted sockets, node-wide, checked against max_connections
    std::atomic<uint32_t> sessions{0};       // sessions, connected or offline, node-wide, checked against max_sessions
    std::atomic<uint32_t> retained_seq{0};   // the last stamp given to a retained update (wraps; each store widens it)
    // The admin stats' high-water marks (clients/max, sessions/max, subscriptions/max), raised by the shard whose
    // count grows, at the moment it grows: shards peak at different times, so neither the sum of their own peaks nor
    // samples of their counts give the node's. Each count is one RMW per connect, session or (un)subscription.
    std::atomic<uint64_t> connected{0};     // connections in CONNECTED state
    std::atomic<uint64_t> subscriptions{0}; // (session, filter) entries in the shards' tries
    std::atomic<uint64_t> connected_peak{0};
    std::atomic<uint64_t> sessions_peak{0};
    std::atomic<uint64_t> subscriptions_peak{0};
    std::atomic<bool> stopping{false};
    std::atomic<unsigned> ready{0};  // shards whose ring is up and accepting
    std::atomic<bool> failed{false}; // a shard could not start (logged by it)
    std::vector<shard*> shards;
    // [from * mqtt_shards + to]: the k_gate_close messages shard `from` has pushed to `to` so far, each counted before
    // `from` reports the message that caused it taken (see shard::snapshot_transit).
    std::unique_ptr<std::atomic<uint64_t>[]> gate_closes;
};

inline void raise_peak(std::atomic<uint64_t>& peak, uint64_t v) {
    uint64_t p = peak.load(std::memory_order_relaxed);
    while (v > p && !peak.compare_exchange_weak(p, v, std::memory_order_relaxed)) {
    }
}

// A session and the connection currently attached to it (null while the client is offline). Owned by the home
// shard's registry; its address is the subscriber id stored in the topic trie.
struct session_slot {
    std::unique_ptr<session::session> s;
    connection* conn = nullptr;
    int64_t created_at = 0;       // unix seconds
    int64_t offline_since_ms = 0; // persistent and offline: when its connection closed (shard clock); else 0
};

// The sessions homed on one shard, by client id. A set of owning pointers hashed by the session's own client id: a
// map keyed by a view of the id would spend 16 more bytes per session on the key. Owned by its shard, touched only on
// that shard's thread.
class session_registry {
public:
    session_slot* find(std::string_view client_id) const {
        auto it = set_.find(client_id);
        return it == set_.end() ? nullptr : it->get();
    }
    session_slot& insert(std::unique_ptr<session_slot> slot) { return **set_.insert(std::move(slot)).first; }
    void erase(std::string_view client_id) {
        auto it = set_.find(client_id);
        if (it != set_.end()) set_.erase(it);
    }
    size_t size() const { return set_.size(); }
    void clear() { set_.clear(); }
    // Calls f(session_slot&) for each session, in no particular order; f must not add or remove sessions.
    template <class F> void for_each(F&& f) const {
        for (const auto& slot : set_)
            f(*slot);
    }

private:
    static std::string_view id_of(std::string_view id) { return id; }
    static std::string_view id_of(const std::unique_ptr<session_slot>& slot) { return slot->s->client_id(); }
    struct hash {
        using is_transparent = void;
        template <class T> size_t operator()(const T& v) const { return std::hash<std::string_view>{}(id_of(v)); }
    };
    struct equal {
        using is_transparent = void;
        template <class A, class B> bool operator()(const A& a, const B& b) const { return id_of(a) == id_of(b); }
    };
    std::unordered_set<std::unique_ptr<session_slot>, hash, equal> set_;

public:
    using table = decltype(set_);
    const table& entries() const { return set_; } // for walks in bucket order (admin pages)
};

// The retained messages that SUBSCRIBEs asked for and that one session has yet to be sent, in SUBSCRIBE order; each
// read resumes after the last topic it passed. While a session has any, its queue is held: live messages wait behind
// them, so a retained message never reaches the subscriber after a newer message on its topic, and a read of any size
// costs the session's queue limit nothing. Owned by the session's home shard (shard::readers_ while the session is
// connected, shard::offline_readers_ while it is not), on its thread.
struct retained_reads {
    struct read {
        std::string filter;
        std::string after; // the last topic passed; empty before the first step
        uint8_t granted;
        // The store's applied() when the read began: what was stored here since was delivered live to this session
        // too (held behind the read), and is passed over (a QoS 2 retained PUBLISH during a read reached the
        // subscriber twice, neither copy marked DUP; a QoS 0 one came ahead of the older live copies) while the
        // session has dropped nothing since (its dropped() then, `dropped`): a live copy dropped as it came, the read
        // sends the topic as before.
        uint64_t upto;
        uint64_t dropped;
    };
    session_slot* slot;
    std::deque<read> reads;
    bool offline = false; // in shard::offline_readers_

    // Forgets the read of filter, if any (an UNSUBSCRIBE, or a SUBSCRIBE that starts it over).
    void drop(std::string_view filter) {
        std::erase_if(reads, [&](const read& rd) { return rd.filter == filter; });
    }
};

// Cross-shard message kinds (reactor::smp_msg::kind).
enum msg_kind : uint32_t {
    k_handoff = 1, // ptr: handoff*, a connection whose CONNECT names a client homed on the receiving shard
    k_route_add,   // ptr: std::string* filter, arg: its weight; the sender's first local subscriber on filter
    k_route_del,   // ptr: std::string* filter, arg: its weight; the sender's last local subscriber left
    k_publish,     // ptr: session::message* (one reference), arg: its weight (see msg_weight)
    k_retain, // ptr: session::message* (one reference), arg: its weight; store or (empty payload) clear the topic, and
              // deliver it live to the receiver's subscribers (see retain_from)
    k_retain_clear, // ptr: session::message* (one reference, empty payload), arg: its weight; clear the topic, deliver
                    // nothing
    k_admin_call,   // ptr: admin_call*, from the admin shard: run it here and send it back
    k_admin_done,   // ptr: admin_call*, back to the admin shard; arg: the shard that ran it
    k_publish_run,  // ptr: publish_run*, arg: its weight; QoS 0 frames for the receiver's local subscribers
    // Publishers held across shards (see shard::remote_gate): a QoS 1/2 message of a client that may be held, for the
    // receiver's subscribers alone, on a topic the sender has no gate for (the receiver answers k_gate_close where it
    // finds the queue at its mark), or has one for: one unit of the credit it was given, or past it (its client is
    // held: the receiver gives it a turn for credit). As k_publish; in this order (see shard::offer_to).
    k_publish_holdable,
    k_publish_credited,
    k_publish_held,
    k_gate_close,  // ptr: gate_close*: hold the receiver's publishers on this topic until credit comes
    k_gate_credit, // ptr: the queue's key (never dereferenced), arg: messages more the receiver's publishers may send
    k_gate_open,   // ptr: the queue's key: its publishers are no longer held (offline, gone or stuck)
    k_gate_drop,   // ptr: std::string* topic: no queue that closed a gate counted its message (its subscriber changed),
                   // or (arg 1) one did and others got it too
    k_gate_wait,   // ptr: the queue's key: one more of the sender's clients waits for a turn (see shard::ease_gates)
    k_gate_return, // ptr: the queue's key, arg: credit the sender had no client waiting for
    k_gate_forget, // ptr: the queue's key: the sender let its gate go (k_gate_drop): forget it was told
    k_gate_unwait, // ptr: the queue's key, arg: turns asked for (k_publish_held, k_gate_wait) whose clients closed
                   // or were read again at a subscription (shard::read_refused_again)
    k_gate_ask,    // ptr: gate_close*: a topic let go for a filter no gate holds (ungated_filter_takes): is the queue
                   // its only subscriber there?
    k_gate_pin,    // ptr: gate_close*, the answer: arg 1, it is (the gate holds the topic), 0: others get it too;
                   // 2: unasked, a message let go reached the queue alone at its mark (counted as k_gate_close is)
    k_gate_join,   // ptr: std::string* filter, arg: its weight: a session there subscribed a filter it did not have
                   // and that had a subscriber there already (no k_route_add), while another session's queue there has
                   // gates told here: its topics pinned are asked anew (taken ahead of deliveries, as route updates
                   // are)
    k_taken_ahead, // arg: its weight; a route update, k_gate_join or handoff handled ahead of deliveries before it
                   // (drain_smp)
    k_gate_unfilter, // ptr: gate_close*: the queue's session left that filter, the queue still fed what its publishers
                     // were held for by others (shard::still_fed): the gate holds the filter no longer
};

// The bytes a cross-shard message holds, as its sender counted them (smp_outbox::push) and its receiver reports them
// taken (smp::note_taken): the messages that carry publishes and the route updates put it in arg, the others hold
// nothing (each message counts one besides, on both sides, so that the others' progress shows too).
inline uint32_t msg_weight(const reactor::smp_msg& m) {
    return m.kind == k_publish || m.kind == k_retain || m.kind == k_retain_clear || m.kind == k_publish_run ||
                   m.kind == k_publish_holdable || m.kind == k_publish_credited || m.kind == k_publish_held ||
                   m.kind == k_route_add || m.kind == k_route_del || m.kind == k_gate_join || m.kind == k_taken_ahead
               ? m.arg
               : 0;
}

// k_gate_close: a queue on the sending shard (its slot's address, a key only) at its hold mark, and a topic on which
// the receiver's publishers fill it; also k_gate_ask's question about a topic and k_gate_pin's answer. Made by the
// sending shard, freed by the receiving one (or release_message).
struct gate_close {
    uint64_t queue;
    std::string topic; // the queue's subscription filter that took the message (its topic, for an exact one); for
                       // k_gate_ask and k_gate_pin, the topic asked about
};

// An accepted socket on its way to its home shard, with the bytes read so far (the CONNECT and whatever followed).
struct handoff {
    int fd;
    listener::peer_addr peer;
    std::vector<uint8_t> bytes;
};

// A run of QoS 0 PUBLISH frames to one topic, exactly as they go on the wire, on its way to another shard's
// subscribers. The publishing shard makes one per destination shard; the receiving shard owns and frees it.
struct publish_run {
    uint64_t count; // frames in `frames`
    byte_vec frames;
};

// Incoming QoS 0 PUBLISH frames that go out exactly as they arrived (3.x, no retain), `count` of them to one topic;
// empty when the message must be encoded. A view for the duration of one routing call on the shard routing it.
struct raw_frames {
    std::span<const uint8_t> bytes;
    uint64_t count = 1;
};

// The completion records of the two operations a connection keeps in flight, as bases of the connection itself: each
// costs the connection one vtable pointer, where a member record would also carry a pointer back to it. The handler
// is called directly on the derived type (no second virtual call per completion).
template <class D> struct recv_completion : io::completion {
    void on_complete(int res, uint32_t flags) final { static_cast<D*>(this)->on_recv(res, flags); }

protected:
    ~recv_completion() = default;
};
template <class D> struct send_completion : io::completion {
    void on_complete(int res, uint32_t flags) final { static_cast<D*>(this)->on_send(res, flags); }

protected:
    ~send_completion() = default;
};

// Slots of a shard's io_uring file table: one for each descriptor the process may open, so a shard alone can hold as
// many connections as the whole process could with descriptors, and no more than mqtt.max_connections. The kernel
// allocates the table up front, 16 bytes of kernel memory a slot: at most this many slots (1 MiB) a shard, past which
// connections keep descriptors.
inline constexpr unsigned max_file_slots = 65536;

// A client connection. Created by the shard that accepted it or received it by handoff, and owned by that shard's
// connection table until its last io_uring operation has completed.
class connection final : public recv_completion<connection>, public send_completion<connection> {
public:
    enum class state : uint8_t { awaiting_connect, connected, closing };

    connection(shard& sh, int fd, listener::peer_addr peer);

    // The records to put in user_data for the connection's recv and send.
    io::completion* recv_record() { return static_cast<recv_completion<connection>*>(this); }
    io::completion* send_record() { return static_cast<send_completion<connection>*>(this); }

    // Fields are ordered by size so that an idle connection fits mimalloc's 256-byte class (checked in shard.cpp).
    shard& sh;
    uint64_t id;
    session_slot* slot = nullptr;
    int fd; // a descriptor, or a slot of the shard's ring file table when `fixed`
    uint16_t keepalive = 0;
    state st = state::awaiting_connect;
    mqtt::protocol_version ver = mqtt::protocol_version::v311;
    int64_t last_rx_ms = 0;
    int64_t connected_at_ms = 0;
    // The deadline this connection has in the shard's wheel (0: none): CONNECT, then keepalive (or a recheck while its
    // receive is held), or the close after a failed send (on_send).
    int64_t check_at_ms = 0;
    int64_t connected_wall = 0;            // unix seconds
    listener::peer_addr peer;              // unknown until the accepting shard has read it (ask_peer_name)
    std::string client_id_;                // empty until CONNECT is accepted (or refused with an id)
    std::unique_ptr<std::string> username; // null: CONNECT had none (most clients, so it is held out of line)

    const std::string& client_id() const {
        static const std::string none = "-";
        return client_id_.empty() ? none : client_id_;
    }

    // Will message from CONNECT, published on abnormal close. Held out of line: most clients have none, and an idle
    // connection should cost as little as possible.
    struct will_msg {
        std::string topic;
        std::vector<uint8_t> payload;
        uint8_t qos = 0;
        bool retain = false;
    };
    std::unique_ptr<will_msg> will;

    std::vector<uint8_t> rx; // partial packet straddling recv buffers (bounded by max_packet_size)

    // Send side: frames are queued in `sq`; one send is in flight at a time.
    send_queue sq;
    // Outstanding io_uring operations: a recv, a send, and a slot's shutdown or the read of its address at most.
    int8_t ops = 0;
    // Flags as single bits: as bools, with the padding after them, they took 16 bytes of every idle connection.
    bool send_busy : 1 = false;
    bool dirty : 1 = false;
    bool reply : 1 = false; // dirty with a reply (an ack, CONNACK, PINGRESP): first when a turn has too much to send
    bool backlogged : 1 = false; // dirty and waiting in the shard's send backlog (not in this turn's dirty list)
    bool in_backlog : 1 = false; // its id is in the send backlog (maybe left behind by a reply: then not backlogged)
    bool recv_armed : 1 = false;
    bool needs_rearm : 1 = false;
    bool shut : 1 = false;
    bool recv_cancel_found : 1 = false; // its close's cancel found the receive (which then ends within a turn)
    bool disconnect_received : 1 = false;
    bool close_after_flush : 1 = false;
    bool answer_on_close : 1 = false; // closed after a DISCONNECT or protocol error: what it was answered goes first
    bool shut_deferred : 1 = false;   // closing, its shutdown waits for the send pending or its answers' smp_wait
    bool over_limit : 1 = false;      // accepted beyond max_connections: CONNECT is answered with return code 3
    bool handed_off : 1 = false;      // the socket now belongs to another shard
    bool buried : 1 = false;          // queued for destruction at the end of the loop turn
    bool refused : 1 = false;
    bool clean : 1 = true;
    bool recv_oneshot : 1 = false; // the armed recv is the one-shot of awaiting_connect (buffer from first_bufs_)
    bool smp_wait : 1 = false;     // nothing is sent until what its packet sent other shards is queued (smp_waiters_)
    bool pump_waits : 1 = false;   // pump() stopped at mqtt.max_outgoing_bytes: on_send resumes it
    bool send_failed : 1 = false;  // a send failed: nothing more is sent; the receive path closes it (on_send)
    bool send_reset : 1 = false;   // and it failed with EPIPE or ECONNRESET
    bool fixed : 1 = false;        // fd is a slot of the ring's file table (settle_socket), used with IOSQE_FIXED_FILE
    // Not read while a subscriber's queue drains (hold_publisher): what it sent meanwhile waits in rx, unhandled.
    bool queue_held : 1 = false;
    // Its id went into a hold's waiting list (hold_publisher, push_gated) and has not been read again since: a close
    // takes it out (forget_gone_holds), or a client gone would be waited for.
    bool hold_listed : 1 = false;
    // Let go while held because what it kept passed its limit with messages in flight to it (waive_hold): until
    // read_again has handled what it kept, no queue holds it (its acks behind that would wait with the rest).
    bool hold_waived : 1 = false;
    // Stopped after a packet because the turn's routing work passed node.turn_work_us (pause_reading): queue_held too,
    // so what it sends meanwhile waits in rx (its acks and PINGREQs served), until resume_paused reads it again.
    bool paused : 1 = false;
    // Its send queue is counted in the shard's heavy_ (over out_mark_ when it went in; it leaves under half of that, or
    // at the close).
    bool heavy : 1 = false;
    // While paused, its socket ended (recv_end; 0: it has not): closed once what it kept is handled.
    uint8_t left_how : 2 = 0;
    // Bytes received while the send queue stayed over mqtt.max_outgoing_bytes (saturating): a client that keeps
    // sending but does not read its answers is closed when this passes that limit too (see check_unread). After the
    // flags, in what was padding: an idle connection stays in the 256-byte class.
    uint32_t rx_while_full = 0;
    // While queue_held: the bytes at the front of rx that serve_held_acks has looked through (whole packets it kept),
    // so that each receive while held costs only what it brought.
    uint32_t held_scanned = 0;

    size_t queued_bytes() const { return sq.pending_bytes(); }

private:
    friend struct recv_completion<connection>;
    friend struct send_completion<connection>;
    void on_recv(int res, uint32_t flags);
    void on_send(int res, uint32_t flags);
};

// The per-shard broker. See the file comment for ownership.
class shard final : public shard_control {
public:
    shard(node& n, unsigned id, int listen_fd);
    ~shard();
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;

    // Thread body. Returns when stopped; false if the ring could not be set up (logged).
    bool run();
    // Any thread: asks the shard to stop (graceful) and wakes it.
    void request_stop();
    // Any thread: wakes the shard if it sleeps in its ring.
    void wake() { waker_.wake(); }

    unsigned id() const { return id_; }
    const metrics& counters() const { return m_; }
    const stats& gauges() const { return st_; }

    // shard_control (admin facade), on this shard's thread
    unsigned shard_id() const override { return id_; }
    size_t client_count() const override { return connected_; }
    list_chunk clients(list_cursor& cur, size_t offset, size_t want, std::vector<client_row>& out) const override;
    bool client(std::string_view id, client_row& out) const override;
    size_t session_count() const override { return sessions_.size(); }
    list_chunk sessions(list_cursor& cur, size_t offset, size_t want, std::vector<session_row>& out) const override;
    bool session(std::string_view id, session_row& out) const override;
    size_t subscription_count() const override { return trie_.subscription_count(); }
    list_chunk subscriptions(list_cursor& cur, size_t offset, size_t want,
                             std::vector<subscription_row>& out) const override;
    void client_subscriptions(std::string_view id, std::vector<subscription_row>& out) const override;
    size_t route_count() const override { return trie_.first_holder_count(); }
    bool routes_after(std::string_view after, size_t max_rows, std::vector<std::string>& out) const override {
        return trie_.local_filters_after(after, max_rows, k_route_chunk_bytes, out);
    }
    bool has_route(std::string_view filter) const override { return trie_.has_local(filter); }
    bool kick(std::string_view id) override;
    subscribe_result subscribe(std::string_view id, std::string_view filter, uint8_t qos) override;
    bool unsubscribe(std::string_view id, std::string_view filter) override;
    void publish(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, bool retain) override;
    void snapshot(shard_snapshot& out) const override;

private:
    friend class connection;
    struct accept_op final : io::completion {
        explicit accept_op(shard* sh) : s(sh) {}
        shard* s;
        void on_complete(int res, uint32_t flags) override { s->on_accept(res, flags); }
    };
    // Completes only when the kernel refused to place a settling socket in the file table (settle_socket).
    struct install_failed_op final : io::completion {
        explicit install_failed_op(shard* sh) : s(sh) {}
        shard* s;
        void on_complete(int res, uint32_t flags) override;
    };

    // loop
    void loop();
    // Submits what the turn queued; true when some of it completed at once (a send to a socket with room): that is
    // work for the next turn, not an idle point, so the polling rules neither count nor spend it.
    bool completed_on_submit();
    // Polls the ring and the incoming queues for node.idle_poll_us; true when something came in (the loop goes on
    // without sleeping), false when the time ran out.
    bool poll_idle();
    // Whether another shard queued something for this one, or a stop was asked for that this shard has not begun:
    // what an idle shard must look at before it sleeps (and while it polls).
    bool has_news() const;
    size_t drain_smp(); // the messages taken
    void handle_smp(const reactor::smp_msg& m, unsigned from);
    void flush();
    void publish_smp();
    void arm_accept();
    void on_accept(int res, uint32_t flags);
    reactor::task<void> housekeeping();
    void tick(int64_t now);
    // The deadlines the tick found due (keepalives, connect timeouts...), run by the loop once the turn's completions
    // are handled: judged at the turn's start, `turn_start` (keepalives up to caught_up_ms_).
    void run_deadlines(int64_t turn_start);
    void cancel_stuck(); // the shutdown grace ran out: cancels what the connections still have in the ring
    // Puts c's keepalive deadline in the wheel unless an earlier deadline is already there.
    void schedule_check(connection& c);
    void check_deadline(const reactor::deadline_wheel::entry& e, int64_t now);
    void begin_shutdown();
    void push(unsigned to, uint32_t kind, uint32_t arg, void* ptr);
    // weight: the bytes the message holds (put in its arg, see msg_weight).
    void push_weighed(unsigned to, uint32_t kind, size_t weight, void* ptr);
    // Holds this shard's receives while another shard has more than mqtt.max_cross_shard_bytes of its messages to
    // take, and lets them go once it is down to half.
    void check_cross_shard();
    // Stops reading c until the hold ends (cancels its multishot receive if one is armed).
    void hold_recv(connection& c);
    // Marks c not to be re-armed (needs_rearm) and cancels its receive if one is armed; whoever set it re-arms it.
    void stop_recv(connection& c);
    void end_hold();
    // Publishers held for a subscriber's queue (mqtt.publisher_hold_ms): whether the publisher_ of a message for slot's
    // session at its hold mark may wait, unread, for it (offer_to then queues the message even past the limit), and
    // its hold.
    bool may_hold_publisher(const session_slot& slot) const;
    // Whether p may be held (for a queue here or on another shard).
    bool publisher_holdable(const connection& p) const;
    // What a held client may leave unread before its receive stops: held_rx_max past the first packet it kept.
    size_t held_keep_max(const connection& c) const;
    bool held_past_keep(const connection& c) const { return c.queue_held && c.rx.size() > held_keep_max(c); }
    // Past held_keep_max a held client's receive stops, and one with messages in flight to it is let go (waive_hold):
    // whether it was past.
    bool stop_held_recv(connection& c);
    void settle_held_recv(connection& c);
    void waive_hold(connection& c);
    void hold_publisher(const session_slot& slot, std::string_view topic);
    // The queue's hold entry, made (and its queue's movement counted from now) if it had none.
    struct queue_hold;
    queue_hold& hold_of(const session_slot& slot);
    const char* hold_reason(const session::session& s) const; // for the hold's log lines
    // Three quarters of the queue's limits (none past UINT64_MAX: no limit, or mqtt.publisher_hold_ms = 0).
    bool at_hold_mark(const session::session& s) const {
        return s.queue_len() >= hold_mark_messages_ || s.queued_bytes() >= hold_mark_bytes_;
    }
    // Below it, a message of `bytes` that takes the queue past the byte mark holds its publisher too (one of more
    // than a quarter of the limit, at two fifths say, would pass the limit, be dropped though answered, and so would
    // every one after it, the queue never reaching its mark), where it is then taken: one refused below the mark
    // would be read again at once and refused again, for ever.
    bool takes_past_mark(const session::session& s, uint64_t bytes) const {
        return s.queued_bytes() + bytes > hold_mark_bytes_ && s.takes_held(bytes);
    }
    // At the end of a turn: reads the held publishers of each queue below its mark again, oldest first, until it is
    // at the mark once more (read_again handles what each sent meanwhile at once).
    void ease_queue_holds();
    // Its session is gone, or (expired) nothing was taken from its queue for mqtt.publisher_hold_ms (offline, since
    // it left, at the latest) and it is stuck (see stuck_queues_): all its publishers are read again at the end of
    // the turn.
    void release_publishers(const session_slot& slot, bool expired);
    void hold_back_online(const session_slot& slot); // a persistent session back: not stuck, its hold's limit anew
    // A subscription to filter was added, here (by `by`) or on another shard (k_route_add, by nullptr): a queue of
    // another session whose clients were held on a topic it matches is that topic's sole subscriber no more, and the
    // new one may not wait for the slow one, so its publishers are read again (release_publishers).
    void release_for_new_route(std::string_view filter, const session_slot* by);
    void expire_queue_holds(int64_t now);
    void note_queue_taken(const session_slot& slot); // its subscriber took a message from the queue (pump)
    void read_again(connection& c);
    // A client whose socket ended while paused (left_how), read again: closed once nothing it kept is left (`now`:
    // what it kept handled at once, the shard stopping).
    void finish_left(connection& c, bool now = false);
    // The turn's routing work (route_lookup's matches, fan_out's deliveries), counted so that the clock is read only
    // every work_check_every units; turn_over_ once the turn has done node.turn_work_us of it (check_turn_work).
    void note_work(uint64_t units) {
        work_ += units;
        if (work_ >= work_check_at_) [[unlikely]]
            check_turn_work();
    }
    void check_turn_work();
    // Whether the client process() is on stops after this packet: the turn's work is spent and this client's packets
    // did a share of it in this call (a client sending a few packets, or ones that cost little, is not stopped for
    // what others did: that would cost a copy and a later turn for nothing), and it is not one whose turn a queue or
    // gate gave it (it would lose its turn), nor one leaving (what it kept is handled all at once).
    bool should_pause(const connection& c, uint64_t work_at) const {
        return turn_over_ && work_ - work_at >= pause_least_work && !leaving_ && c.st == connection::state::connected &&
               c.id != turn_reading_ && c.id != gate_reading_;
    }
    void new_work_window();
    void pause_reading(connection& c);
    void resume_paused();

    // connections
    connection& adopt(int fd, listener::peer_addr peer);
    // Reads a just accepted connection's address: through the ring where it can (peer_by_ring_), in the same
    // submission as its first receive, so it is there before the CONNECT is handled; by getpeername otherwise.
    void ask_peer_name(connection& c);
    // The completion of ask_peer_name's SO_PEERNAME. Counted among the connection's operations, so the descriptor it
    // reads is neither closed (maybe_destroy) nor moved into the file table (settle_socket) before it. Heap-allocated
    // per accepted connection, freed when it completes; lives on the accepting shard.
    struct peer_name_op;
    // The size SO_PEERNAME must be asked with (exactly the listener's family's address size: the kernel refuses a
    // larger buffer), 0 where peer names are read by getpeername; set at start, cleared by a refused read.
    socklen_t peer_by_ring_ = 0;
    void arm_recv(connection& c);
    void on_recv(connection& c, int res, uint32_t flags);
    void on_send(connection& c, int res, uint32_t flags);
    void process_input(connection& c, const uint8_t* p, size_t n);
    void check_unread(connection& c, uint32_t received);
    // Counts c's send queue in heavy_ when it is over out_mark_ or counted already (per dirty connection per turn and
    // per completed send, not per message). Only while connected: a close takes the count out (forget_heavy), and a
    // buried connection may still be listed to send until the turn's end.
    void weigh(connection& c) {
        if (c.st == connection::state::connected && (c.heavy || c.queued_bytes() > out_mark_)) [[unlikely]]
            weigh_heavy(c, 0);
    }
    // taken: what its socket has just taken.
    void weigh_heavy(connection& c, size_t taken);
    void forget_heavy(connection& c);
    void check_out_share();
    void close_stalled(int64_t now);
    // Closes c for a reason of the shard's own (an admin kick, a stalled send), what a held connection kept handled
    // first, as the client sent it before; false when that closed it (its own DISCONNECT: no will then
    // [MQTT-3.14.4-3]; or a protocol error, under its own reason).
    bool close_now(connection& c, const char* reason);
    bool protocol_error(connection& c, const char* what);
    // Closes c for something it sent (reason: the close's name), its will published, what it was answered before sent
    // first; false, for the packet handlers to return.
    bool close_answered(connection& c, const char* reason);
    void ack_publish(connection& c, uint8_t qos, uint16_t packet_id); // PUBACK or PUBREC (QoS 0: nothing)
    // Counts and logs (1st, 2nd, 4th...) a client's message to a $SYS/ topic, which is dropped.
    void drop_sys_publish(const connection& c, std::string_view topic);
    // An info line about one connection's refusal or close (each connection can cause one, so a client reconnecting
    // in a loop causes thousands a second): at most conn_log_'s budget a second, the next line let through saying how
    // many were held back, and tick() saying it once a flood has ended.
    template <typename... Args> void conn_info(fmt::format_string<Args...> f, Args&&... args) {
        if (log::current_level() > log::level::info) return;
        uint64_t held = 0;
        if (!conn_log_.allow(now_ms_, held)) return;
        // The count goes first: the line is cut at log::max_message_bytes, and what follows quotes the client.
        std::string line = held == 0 ? std::string()
                                     : fmt::format("(after {} lines like it held back: at most {} a second) ", held,
                                                   conn_log_.per_second());
        fmt::format_to(std::back_inserter(line), f, std::forward<Args>(args)...);
        log::write(log::level::info, line);
    }
    void submit_send(connection& c);
    void reap_graveyard();
    void take_handoff(handoff* h);
    bool valid_filter(std::string_view f) const;
    // True when the update went to every other shard (k_retain), which then also delivers it to its own subscribers:
    // the caller's fan-out must not forward it again.
    bool retain_from(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos);
    // What the store would do with a retained PUBLISH, weighed before it is routed and acted on after (on_publish): a
    // message a queue refuses (offer_to) is stored when it is handled again, not twice, nor if it never comes back.
    enum class retain_check : uint8_t { store, off, too_large, full };
    retain_check check_retain(std::string_view topic, std::span<const uint8_t> payload) const;
    // Logs and counts why a retained message was not stored (too_large, full). One too large to store replaces the
    // topic's retained message all the same (MQTT-3.3.1-5, 3.3.1-7: a later retained PUBLISH replaces an earlier
    // one): the topic is cleared on every shard, so no subscriber is sent a message its publisher has replaced.
    void not_retained(retain_check why, std::string_view topic, size_t payload_size, uint8_t qos);
    // A retained update, stamped in the node-wide order of updates (retained_store::store).
    session::message_ref retained_update(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos);
    // A retained update sent as the live copy for this shard's subscribers alone (on_publish: k_publish_holdable,
    // _credited, _held, or k_publish where its gate could not hold its client): stored as k_retain's is, and replaced
    // by a copy without the flag to deliver [MQTT-3.3.1-9].
    void store_live(session::message_ref& msg);
    // Stores m here and sends it to every other shard but `skip` (k_retain, or k_retain_clear: stored there, delivered
    // to no one); true when it went to another shard.
    bool share_retained(const session::message_ref& m, unsigned skip, msg_kind kind = k_retain);
    // Whether a client's message for one other shard's subscribers alone goes where a gate there may hold its client
    // (push_holdable, push_gated) rather than as a plain forward.
    bool holdable_forward(bool one_shard, uint8_t qos) const {
        return publisher_ && qos != 0 && one_shard && cfg_.limits.publisher_hold_ms != 0 && (!leaving_ || qos == 2);
    }
    void broadcast_route(uint32_t kind, const std::string& filter);
    static size_t route_weight(const std::string& filter); // a route update's (or k_gate_join's) weight
    // Completes the partial packet in c.rx from the front of p[0..n) and handles it; returns the bytes of p taken.
    size_t complete_partial(connection& c, const uint8_t* p, size_t n);
    // Handles the packets in c.rx; what is left unhandled stays in c.rx, an emptied buffer is recycled.
    void process_rx(connection& c);
    // A held client's acks (PUBACK, PUBREC, PUBREL, PUBCOMP) and PINGREQs in c.rx, handled ahead of the PUBLISH that
    // holds it and taken out; everything else stays in c.rx in its order. connection::held_scanned: how far it looked,
    // with held_qos2_ahead set once a QoS 2 PUBLISH is among what it kept, or held_scan_done past a packet that ends.
    void serve_held_acks(connection& c);
    // Queues c's PINGRESP (dispatch_other, serve_held_acks).
    void answer_pingreq(connection& c);
    static constexpr uint32_t held_qos2_ahead = uint32_t{1} << 31;
    static constexpr uint32_t held_scan_done = UINT32_MAX;
    // Starts c.rx (empty) with the unfinished packet p[0..n), in the shard's spare buffer when it has one.
    void start_partial(connection& c, const uint8_t* p, size_t n);
    // Takes a reassembly buffer that is done with as the spare, if it is small enough and the spare is not larger.
    void recycle_rx(std::vector<uint8_t>& buf);
    // Returns bytes consumed; stops early when the connection closes or is handed off.
    size_t process(connection& c, const uint8_t* p, size_t n);
    // PUBLISH and the acks, the per-message packets, go straight to their handlers; everything else (and anything
    // before CONNECT) through dispatch_other, kept out of line so that its error formatting does not weigh on them.
    inline bool dispatch(connection& c, const mqtt::fixed_header& h, std::span<const uint8_t> body,
                         std::span<const uint8_t> rest);
    [[gnu::noinline]] bool dispatch_other(connection& c, const mqtt::fixed_header& h, std::span<const uint8_t> body,
                                          std::span<const uint8_t> rest);
    // Puts c in this turn's send list. Inline for the usual case, c already there (three calls per QoS 1 delivery,
    // most of them for a connection marked earlier in the same turn).
    void mark_dirty(connection& c, bool reply = false) {
        if (c.dirty && !(reply && c.backlogged)) {
            if (reply) c.reply = true;
            return;
        }
        mark_dirty_slow(c, reply);
    }
    void mark_dirty_slow(connection& c, bool reply);
    // c's last packet put messages for other shards in the SMP backlog (outbox_.backlogged() was `before`): its ack
    // must not reach the client before they are in their queues, so nothing is sent to c until then.
    void send_after_backlog(connection& c, uint64_t before);
    void release_smp_waiters(); // lets those go whose messages left the backlog (after publish_smp)
    void start_send(connection& c);
    void close(connection& c, const char* reason, bool publish_will);
    void shutdown_socket(connection& c);
    // A close's last send (what is queued, when it answers the client: answer_on_close) and then its shutdown.
    void answer_and_shut(connection& c);
    // The shutdown of a closing connection waits for the send pending (or the messages its answers promise), at most
    // answer_wait_ms from the first call (smp_answer_wait_ms for the messages).
    void defer_shutdown(connection& c);
    // The completion of what a slot's connection closing with operations pending submitted: a cancel of its receive,
    // or io_uring's SHUTDOWN. Counted among the connection's operations, so the connection stays (and its slot is
    // closed and given out again) only after it, since SHUTDOWN runs from a worker and looks the slot up late.
    // Heap-allocated per close, freed when it completes; lives on the connection's shard.
    struct close_op_done final : io::completion {
        enum class kind : uint8_t { cancel_recv, shutdown };
        shard& sh;
        connection& c;
        kind k;
        close_op_done(shard& s, connection& conn, kind what) : sh(s), c(conn), k(what) {}
        void on_complete(int res, uint32_t flags) override;
    };
    void submit_shutdown(connection& c);
    bool batch_wait_ = false;           // node.wake_batch_us set and the kernel has io_uring's minimum wait
    uint32_t recv_limit_ = 0;           // bytes a multishot receive takes before it is re-armed (0: no limit)
    bool cancel_recv_on_close_ = false; // Linux 6.13 or newer with a DEFER_TASKRUN ring (shutdown_socket), set at start
    uint64_t recv_cancels_ = 0, shutdowns_ = 0; // how closing slots' pending operations were ended (logged at exit)
    uint64_t recv_cancel_fallbacks_ = 0;        // of the SHUTDOWNs, those after a cancel that did not end the receive
    // Moves a connection's socket from its descriptor into the ring's file table, once it has settled on this shard
    // for good (its CONNECT accepted here) and no operation uses the descriptor. Where the table is full or absent
    // the descriptor stays, which works the same.
    void settle_socket(connection& c);
    void maybe_destroy(connection& c);

    // MQTT packet handlers (return false when the connection was closed)
    bool on_connect(connection& c, std::span<const uint8_t> body, uint8_t flags, std::span<const uint8_t> rest);
    uint64_t generated_id_bits(); // random bits for a client id the broker assigns (an empty one's)
    void refuse_connect(connection& c, uint8_t code, const char* why);
    // False when the CONNECT was refused (no room for a new session under mqtt.max_sessions).
    bool attach_session(connection& c, bool clean);
    // frame: the whole packet as received, forwarded as it is where the outgoing frame would be identical
    bool on_publish(connection& c, uint8_t flags, std::span<const uint8_t> body, std::span<const uint8_t> frame);
    // The cached-route path for QoS 0 PUBLISHes from 3.x clients: forwards the complete PUBLISH at p (header h) and
    // any directly following ones to the same topic; returns the bytes consumed, 0 when the full path must run.
    size_t forward_run(const uint8_t* p, size_t n, const mqtt::fixed_header& h);
    // The cached-route path for a QoS 1 or 2 PUBLISH (no DUP, no retain) from a 3.x client, complete at p: routes it
    // and answers PUBACK / PUBREC without decoding it again; false (nothing done) when the full path must run. last:
    // the route entry the previous call for the same receive buffer used (nullptr at first), tried first, updated.
    struct route_entry;
    template <uint8_t qos>
    bool publish_qos12(connection& c, const uint8_t* p, const mqtt::fixed_header& h, route_entry*& last);
    bool on_ack(connection& c, mqtt::packet_type t, std::span<const uint8_t> body, uint8_t flags);
    // PUBACK, PUBREC, PUBREL or PUBCOMP with a valid id (decoded, or taken as it stands from a 3.x client).
    void on_ack_id(connection& c, mqtt::packet_type t, uint16_t pid);
    // Takes back the counts (and the QoS 2 id) of a PUBLISH refused as it was handled (refusable_).
    void unreceive(connection& c, uint8_t qos, uint16_t pid);
    void on_puback(connection& c, uint16_t pid);
    bool on_subscribe(connection& c, std::span<const uint8_t> body, uint8_t flags);
    bool on_unsubscribe(connection& c, std::span<const uint8_t> body, uint8_t flags);

    // sending
    void send_control(connection& c, const std::vector<uint8_t>& bytes);
    void send_publish(connection& c, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, bool retain,
                      bool dup, uint16_t pid);
    void send_ack(connection& c, mqtt::packet_type t, uint16_t pid);
    // Appends a PUBLISH frame to out; without its payload bytes when !with_payload (the caller queues them apart).
    static void encode_frame(byte_vec& out, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                             bool retain, bool dup, uint16_t pid, bool with_payload = true);
    // A message from a session's window or queue.
    void send_outgoing(connection& c, const session::outgoing& o, bool dup);
    // PUBLISHes on $SYS/ topics are not counted (EMQ X left them out of every sent counter).
    void count_publish_sent(std::string_view topic, uint8_t qos, uint64_t n = 1);
    void pump(session_slot& slot); // moves queued messages into the window while it has room

    // routing
    void route(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, session::message_ref& msg,
               bool local_origin, bool forward = true);
    route_entry& route_slot(std::string_view topic);   // the cache entry topic maps to, whatever it holds
    route_entry& route_lookup(std::string_view topic); // the cache entry for topic, refilled from the trie if stale
    // The cache entry of a topic that passed every PUBLISH check on this shard before (its matches may be stale), or
    // null: such a topic is not checked again.
    route_entry* checked_route(std::string_view topic);
    void deliver_run(const publish_run& r);      // a run from another shard, to this shard's subscribers
    bool all_direct(const route_entry& e) const; // every local match is connected with nothing queued
    // local_origin: published on this shard, so forwarded to the other shards that have a match (unless !forward:
    // a retained update, which every shard got already) and counted dropped where no shard has one.
    void fan_out(const route_entry& e, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                 session::message_ref& msg, bool local_origin, const raw_frames& raw = {}, bool forward = true);
    // last_use: msg is not needed after this call (the caller's reference moves into the session, which spares
    // an atomic increment and decrement); only when topic and payload do not point into msg itself.
    void deliver(session_slot& slot, std::string_view topic, std::span<const uint8_t> payload, uint8_t qos,
                 session::message_ref& msg, uint8_t msg_qos, bool retain, const raw_frames& raw = {},
                 bool last_use = false);
    // Hands msg to the slot's session at the effective qos: sent at once where its window allows, else queued (or
    // dropped past the queue's limits, counted and logged against topic).
    void offer_to(session_slot& slot, session::message_ref&& msg, uint8_t qos, std::string_view topic);
    // Queues the first `take` of the fanned-out bytes for c: shared with the other subscribers where that pays.
    void queue_fanned(connection& c, std::span<const uint8_t> bytes, size_t take);
    void publish_from(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, bool retain);
    // Every shard stores what retain_from admitted, its own update and the others' copies.
    void store_retained(const session::message_ref& m);
    // Sends the retained messages matching filter to a subscriber (a SUBSCRIBE's, or the admin API's): at once as far
    // as this turn's read budget and the subscriber's room go, the rest over later turns (serve_reads).
    void deliver_retained(session_slot& slot, std::string_view filter, uint8_t granted);
    enum class read_status { done, blocked, sliced };
    // One step of a read: sends matches after `after` while the subscriber has room, looking at no more than `budget`
    // topics (at most read_budget_; both are reduced by what was looked at). blocked: no room (no connection, send
    // queue past the pace, window full); sliced: the budget ran out.
    read_status read_retained(session_slot& slot, std::string_view filter, std::string& after, uint8_t granted,
                              size_t& budget, uint64_t upto);
    // Runs the reads left over from earlier turns, each in turn, within this turn's budget.
    void serve_reads();
    // The reads of a slot whose queue is held (it has some), in whichever list holds them.
    std::list<retained_reads>::iterator reader_of(session_slot& slot);
    // Removes r's entry; with `release`, the slot's queue is let go and what waited behind the reads is sent.
    void end_reads(std::list<retained_reads>::iterator r, bool release);
    // A session with reads is connected again: its reads go back in turn.
    void resume_reads(session_slot& slot);
    // False, and nothing changed, when the session has mqtt.max_subscriptions filters and this is a new one.
    bool add_subscription(session_slot& slot, const std::string& filter, uint8_t qos);
    void remove_subscription(session_slot& slot, const std::string& filter);
    void drop_session(session_slot* slot);
    void went_offline(session_slot& slot);
    // A kept session's connection closes (or is taken over): its QoS 0 messages that the socket never took, queued or
    // in a batch whose send failed, go back to the session; a pending send's are handled when it ends.
    void requeue_unsent(connection& c, session_slot& slot);
    // The send that was pending when such a connection closed has completed: what the socket did not take of its
    // batch goes back to the front of the session's queue (lost_flights_), and the queue goes on. (What was queued
    // behind the send went back at the close, and nothing is queued to a closing connection.)
    void requeue_lost_flight(connection& c);
    // The session's queue goes on (to its connection, if it has one) unless another closed connection's send still
    // holds it.
    void end_flight_wait(session_slot& slot);
    // A session's queue waits at most this long for the send its closed connection left pending: the close's shutdown
    // ends such a send within a turn or two, so this only bounds a send the kernel never ends.
    static constexpr int64_t flight_wait_ms = 2000;
    // Pending sends that have not ended in flight_wait_ms no longer hold their sessions' queues.
    void give_up_flights(int64_t now);
    // Turns the QoS 0 PUBLISHes the socket never took whole into messages at the front of the session's queue (the
    // oldest dropped past its limits): those of the batch in flight unless a send of it is pending, then those queued.
    void requeue_untaken(connection& c, session_slot& slot);
    // The session is dropped: a pending send's leftovers have nowhere to go.
    void forget_lost_flights(const session_slot* slot);
    void expire_sessions(int64_t now);
    void update_gauges();
    void note_subscriptions(size_t before);  // the node's subscription count after trie changes from `before`
    void handle_kept_as_left(connection& c); // a held connection closing, taken over or kicked: what it kept, first
    // The messages received, less those handle_kept_as_left handled for a connection that left: a takeover runs inside
    // the new connection's CONNECT, which published nothing (a cross-shard hold would stop its receive).
    // Route updates sent count too: a client that only subscribes and unsubscribes adds to what another shard has to
    // take as much as one that publishes.
    uint64_t own_received() const { return m_.messages_received - left_received_ + routes_broadcast_; }
    // Drops n QoS 0 messages for a subscriber that does not read (counted, and warned at 1, 2, 4... per session).
    void drop_qos0(session_slot& slot, uint64_t n, std::string_view topic);
    // topic: a message dropped, or (topic_dropped false) the one the drops made room for.
    void note_dropped(session_slot& slot, uint64_t before, const char* why, uint64_t limit, std::string_view topic,
                      bool topic_dropped = true);
    void fill_gauges(stats& s) const;

    node& node_;
    const config::config& cfg_;
    unsigned id_;
    unsigned n_;     // MQTT shards
    unsigned parts_; // SMP participants (MQTT shards + admin)
    int listen_fd_;
    io::waker waker_;
    io::ring ring_;
    io::buffer_ring bufs_;       // multishot recvs; consumed incrementally where the kernel allows it
    io::buffer_ring first_bufs_; // the one-shot recvs of connections awaiting CONNECT; whole buffers
    accept_op accept_op_{this};
    install_failed_op install_failed_op_{this};
    uint64_t install_failures_ = 0;
    bool accept_armed_ = false;
    bool accept_paused_ = false; // out of descriptors: the next tick arms the accept again
    bool file_table_full_logged_ = false;
    listener::accept_pacer accept_pacer_{"mqtt"};
    bool stopping_ = false;
    bool stopped_ = false;
    std::atomic<bool> stop_requested_{false};
    reactor::gate gate_;

    uint64_t next_conn_id_ = 1;
    size_t connected_ = 0; // connections in CONNECTED state
    using conn_table = std::unordered_map<uint64_t, std::unique_ptr<connection>>;
    conn_table conns_;
    // Bytes of filters per admin call of routes_after (then fewer than its 1000 rows): what a request holds per shard
    // while it reads past the routes before its page. With 64 KiB filters, 1000 rows would be 64 MB.
    static constexpr size_t k_route_chunk_bytes = 256 << 10;
    std::vector<connection*> dirty_; // with something new to send since the last flush
    // Ids of dirty connections left over from earlier turns' flush budget, oldest first, at most one per connection
    // (`in_backlog`). A connection is in dirty_ or here while its `dirty` bit is set; here, while its `backlogged` bit
    // is. An id whose connection lost that bit (a reply moved it to dirty_, see mark_dirty) is passed over when it
    // comes up.
    std::deque<uint64_t> send_backlog_;
    size_t backlog_peak_ = 0; // the most ids send_backlog_ held, logged at stop
    std::vector<connection*> rearm_;
    // Connections whose sends wait for the SMP backlog (send_after_backlog): (id, outbox_.backlogged() mark).
    std::vector<std::pair<uint64_t, uint64_t>> smp_waiters_;
    bool publishing_ = false;         // in publish_smp: a wake-up's SQE that forces a submission does not publish again
    uint64_t forced_before_stop_ = 0; // ring_.forced_submits() when the stop began
    // Admin calls answered once what they sent other shards has left the backlog, as an MQTT ack would be: (the
    // outbox_.backlogged() mark, the call, the admin participant to answer).
    struct admin_waiter {
        uint64_t mark;
        admin_call* call;
        unsigned to;
    };
    std::vector<admin_waiter> admin_waiters_;
    // While another shard falls behind on this one's messages (check_cross_shard), the receives of publishing clients
    // are not re-armed: those whose receive brought a PUBLISH (or a route update: own_received) meanwhile wait here by
    // id (they may close), each with needs_rearm set.
    bool holding_ = false;
    std::vector<uint64_t> held_;
    uint64_t holds_ = 0;         // hold episodes since the last warning
    int64_t hold_warned_ms_ = 0; // when the last warning was logged
    // The connection whose received bytes this shard is handling (on_recv, read_again), else null: the publisher a
    // full queue may hold. Messages from other shards, wills and the admin API have none and are never held back.
    connection* publisher_ = nullptr;
    bool sole_subscriber_ = false; // the message being offered goes to one session only (fan_out, publish_qos12)
    uint64_t hold_mark_messages_ = UINT64_MAX; // see at_hold_mark
    uint64_t hold_mark_bytes_ = UINT64_MAX;
    // Per connected session whose queue reached its hold mark: the publishing connections that wait for it, oldest
    // first, by id (they may close meanwhile) with when each was held, and when its subscriber last took a message
    // from the queue (pump). Entries go with their session (drop_session) or its connection (ease_queue_holds), or
    // when nothing is taken from the queue for mqtt.publisher_hold_ms (expire_queue_holds): its session is then stuck,
    // holds nobody and drops past its limit as without holds, until its queue drains to half or it goes offline
    // (checked each tick). A client held that long while the queue moves is read again (expire_queue_holds too).
    struct topic_hash {
        using is_transparent = void;
        size_t operator()(std::string_view t) const { return std::hash<std::string_view>{}(t); }
    };
    // A gate's topics: as many as reach the queue's mark while the gate lives (a wildcard subscriber's may be many).
    using topic_set = std::unordered_set<std::string, topic_hash, std::equal_to<>>;
    // A shard told to hold its publishers for a queue here (k_gate_close): the topics it was told of, and the credit
    // it was given that has not come back as messages yet (k_publish_credited).
    struct queue_hold_source {
        unsigned shard;
        uint64_t outstanding = 0;
        int64_t used_ms = 0; // when credit was last given or seen used (unused for publisher_hold_ms, it is forgotten)
        topic_set filters;   // the session's filters that shard was told to gate (k_gate_close; k_gate_unfilter)
        // The topics whose messages found the queue at its mark, up to hold_topics_max, as queue_hold::topics: a route
        // change to one of them ends the hold. (Not the filters: a wildcard subscriber's would end it at every
        // subscription anywhere that overlaps it.)
        topic_set topics;
    };
    // waiting also holds the turns of other shards' held clients: remote_token_bit | their shard.
    struct queue_hold {
        std::deque<std::pair<uint64_t, int64_t>> waiting;
        int64_t moved_ms = 0;
        int64_t full_turn_ms = 0; // when ease_queue_holds last gave a turn with room for several (least_turn)
        std::vector<queue_hold_source> remote;
        // Those this shard's clients were held on (the other shards' are in remote), up to hold_topics_max: a route
        // change to one of them ends the hold (release_for_new_route; remove_subscription, unless another of the
        // session's filters still takes each: still_fed). One past the bound (a wildcard subscriber's queue held on
        // ever new topics) is not kept, and its clients wait as before.
        topic_set topics;
        bool empty() const { return waiting.empty() && remote.empty(); }
    };
    static constexpr uint64_t remote_token_bit = uint64_t{1} << 63; // connection ids count up from 1
    static constexpr size_t hold_topics_max = 64;
    static constexpr size_t answered_max = 1024;
    // The session's filters still_fed looks through for one that covers the filter left (past that many, it releases
    // the queue's publishers as if none did).
    static constexpr size_t cover_scan_max = 1024;
    // And the filters looked through, for all the topics held, for one that takes each (still_fed).
    static constexpr size_t fed_scan_max = 4096;
    // Whether the queue's session, leaving `filter` (at `qos`), is still fed what its publishers were held for by that
    // filter: another of its filters, at that QoS or more, covers it (routing::filter_covers), or takes each topic the
    // hold recorded that the filter took. Past cover_scan_max filters or fed_scan_max looks, false. `takers` gets the
    // filters (QoS 1/2) it found: the covering one, or the first found for each topic (pointers into s's map).
    static bool still_fed(const queue_hold& h, const session::session& s, std::string_view filter, uint8_t qos,
                          std::vector<const std::string*>& takers);
    // Whether a client was held for h on a topic filter matches (here, or at a gate on another shard).
    static bool held_on(const queue_hold& h, std::string_view filter);
    std::unordered_map<const session_slot*, queue_hold> queue_holds_;
    // The shard a message being routed came from, plus one, when it came as k_publish_holdable, _credited or _held
    // (its publisher there may be held): 0 otherwise.
    unsigned remote_from_ = 0;
    uint32_t remote_kind_ = 0; // its kind, else 0
    bool remote_ok_ = false;   // a held or credited one was counted by the queue it reached (gated_arrived)
    // This shard's side of a queue on another shard at its hold mark (k_gate_close): this shard's clients publishing
    // to it alone on one of its topics send only what its credit allows (k_gate_credit, one message per unit); one
    // that finds it spent sends that message still and is held, oldest first in `waiting` (waiter), read
    // again in turn as credit comes (ease_gates), or after mqtt.publisher_hold_ms, or when the queue's shard opens the
    // gate (k_gate_open: the session is gone or stuck), or when a subscription takes its refused message's topic for
    // another subscriber (read_refused_again), or when the gate drops the filter that took it and no other of its
    // filters does (k_gate_unfilter, unfilter_gate). Keyed by (shard, queue); its topics point at it.
    struct remote_gate {
        unsigned shard = 0;
        uint64_t queue = 0;
        uint64_t credit = 0;
        int64_t used_ms = 0; // when credit last came or was used (unused for publisher_hold_ms, it is forgotten)
        uint64_t asked = 0;  // turns asked for there and not given yet (k_publish_held, k_gate_wait)
        // A client waiting for credit, since when, and the topic of the message it was refused (left unread; empty
        // where its message went, held for the next, or past refused_topics' bound): a subscription that takes that
        // topic for another subscriber reads it again (read_refused_again) rather than the slow queue's turn: at
        // once where its message goes to two shards now, after a round trip where it is asked about.
        struct waiter {
            uint64_t id;
            int64_t since;
            std::string topic = {};
        };
        std::deque<waiter> waiting;
        // The waiters' topics (at most hold_topics_max topics, each with how many wait on it): what read_refused_again
        // looks for before it walks `waiting` (a subscribe storm, one route each, would walk it at every route).
        std::unordered_map<std::string, uint32_t, topic_hash, std::equal_to<>> refused_topics;
        // Every change to `waiting` goes through these three, which keep refused_topics in step.
        void add_waiter(uint64_t id, int64_t since, std::string_view topic, bool refused) {
            std::string counted;
            if (refused) {
                if (const auto t = refused_topics.find(topic); t != refused_topics.end()) {
                    ++t->second;
                    counted = topic;
                } else if (refused_topics.size() < hold_topics_max) {
                    refused_topics.emplace(topic, 1);
                    counted = topic;
                }
            }
            waiting.push_back({id, since, std::move(counted)});
        }
        uint64_t pop_waiter() {
            const uint64_t id = waiting.front().id;
            uncount(waiting.front());
            waiting.pop_front();
            return id;
        }
        template <typename Pred> size_t drop_waiters(Pred&& pred) {
            return std::erase_if(waiting, [&](const waiter& w) {
                if (!pred(w)) return false;
                uncount(w);
                return true;
            });
        }
        void uncount(const waiter& w) {
            if (w.topic.empty()) return;
            if (const auto it = refused_topics.find(w.topic); it != refused_topics.end() && --it->second == 0)
                refused_topics.erase(it);
        }
        topic_set topics; // the queue's filters it was closed for (a filter with no wildcard is a topic)
        // Topics its wildcard filters match that other subscribers there get too (k_gate_drop, or k_gate_pin's answer
        // to k_gate_ask): not gated. A filter the gate is told of later takes back those it matches (close_gate).
        // This set and `pinned` keep at most hold_topics_max topics each: one more takes another's place, taken in
        // turn from the buckets (keep_topic; begin() would be the newest most often), which is asked about again at
        // its next message (until stop 75 a full set sent each new topic the old way, a turn of the slow queue: the
        // 65th new topic's publisher waited 12.8-15.4 s).
        topic_set exempt;
        size_t evict_at = 0; // the bucket keep_topic takes from next
        // Topics a filter there that no gate holds takes too (ungated_filter_takes), asked about (k_gate_ask) and not
        // answered yet (at most hold_topics_max), and the clients held meanwhile, with the topic each asked about:
        // each read again at its topic's answer (a round trip), or at the first answer where all questions were out.
        struct asker {
            uint64_t id;
            std::string topic;
        };
        static auto of_client(uint64_t id) {
            return [id](const asker& e) { return e.id == id; };
        }
        topic_set asking;
        std::vector<asker> askers;
        // Those read again with the answer that their topic reaches the queue alone: their message is gated without
        // asking again, once, until it goes (credit may come later), whatever other answers put in `pinned` meanwhile:
        // else answers to others' topics taking its place there could have a client ask again and again (a version
        // without this spun). Dropped with the pin by a route's start or k_gate_join there (forget_topics); at most
        // answered_max (the oldest forgotten: that client asks again).
        std::vector<asker> answered;
        // Topics the queue's shard said reach the queue alone however many filters there take them (k_gate_pin: the
        // session's own, at QoS 0 say): gated without asking, until a filter there that takes one gets a subscriber
        // (its first, k_route_add, or another, k_gate_join).
        topic_set pinned;
    };
    std::map<std::pair<unsigned, uint64_t>, remote_gate> gates_;
    // The gates' filters: those without a wildcard by name, the others (a wildcard subscriber's: one gate for all
    // its publishers' topics, however many) apart, matched one by one against a topic only when the name is not
    // found.
    using gate_map = std::unordered_map<std::string, remote_gate*, topic_hash, std::equal_to<>>;
    gate_map gate_topics_;
    gate_map gate_filters_;
    bool gates_closed() const { return !gate_topics_.empty() || !gate_filters_.empty(); }
    gate_map& gate_index(std::string_view filter);             // the one of the two a gate's filter goes in
    std::vector<std::pair<unsigned, uint64_t>> gates_to_ease_; // given credit this turn: ease_gates reads them again
    uint64_t gate_reading_ = 0; // the client ease_gates reads again (it spends credit while others wait)
    const remote_gate* gate_reading_gate_ = nullptr; // and the gate whose credit it is
    // The gate fan_out found for the message it routes to one other shard, where its publisher may be held.
    remote_gate* gate_for(std::string_view topic, unsigned to);
    // Whether a filter of shard `to` that no gate here holds takes the topic too: other subscribers there get its
    // messages, or the gated subscriber does by a filter its gate was not told of (at QoS 0, say): k_gate_ask.
    bool ungated_filter_takes(std::string_view topic, unsigned to) const;
    // Adds a topic to a gate's exempt or pinned set, where hold_topics_max are kept in the place of one taken in turn
    // from the set's buckets (evict_at, one cursor for both sets).
    static void keep_topic(topic_set& set, size_t& evict_at, std::string topic);
    // A route changed on shard `from`: the topics `filter` takes leave a set of that shard's gates (exempt at a
    // route's end; pinned through unpin).
    void forget_topics(unsigned from, std::string_view filter, topic_set remote_gate::*which);
    // A new route's start on shard `from`, or a new subscriber of a route there (k_gate_join): the topics `filter`
    // takes are pinned no more, nor gated by the answers handed over for them, and the clients refused a message on
    // one of them are read again (read_refused_again).
    void unpin(unsigned from, std::string_view filter);
    // A subscription to `filter` on shard `on` (a route's start, k_gate_join, or here): the clients refused a message
    // on a topic it takes are read again where that message goes ungated now: to more than one shard (a gate of
    // another shard than `on`), or asked about (a gate of `on`, where a filter no gate holds takes the topic: a
    // pinned one, unpinned first). refused_topics first, then `waiting`; the surplus turns are withdrawn.
    void read_refused_again(std::string_view filter, unsigned on);
    // k_gate_unfilter: the gate of u's queue holds u's filter no longer (its session left it, still fed by others:
    // still_fed); the clients refused on a topic none of its other filters takes are read again.
    void unfilter_gate(unsigned from, const gate_close& u);
    // The index entry of g's filter or topic goes, where it is g's (another queue's gate may have taken it since).
    void unindex_gate(const remote_gate& g, std::string_view topic);
    // Asks the queue's shard for a turn for each client waiting at g that has none asked yet (k_gate_wait).
    void ask_turns(remote_gate& g);
    // The other way: turns asked for clients no longer waiting at g (gone, or read_refused_again) are withdrawn
    // (k_gate_unwait), else the queue's shard would hold its own clients behind them.
    void unask_turns(remote_gate& g);
    // drop_gate_topic's, gate_answered's and unfilter_gate's end: the gate goes and the queue's shard is told it may
    // forget it told.
    void forget_gate(unsigned shard, uint64_t queue);
    // A subscription here to a filter that had a subscriber here already: k_gate_join to the shards a queue here has
    // told to gate.
    void tell_join(const std::string& filter, const session_slot* by);
    // A word to close (k_gate_close, or k_gate_pin's unasked one), counted for the bound on what is on its way from
    // `to` (node::gate_closes, transit_passed) and published before drain_smp's note_taken (close_staged_).
    void push_close(unsigned to, uint32_t kind, uint32_t arg, gate_close* g);
    // k_gate_ask here, k_gate_pin there.
    void answer_gate_ask(unsigned from, gate_close& q);
    void gate_answered(unsigned from, gate_close& a, bool alone);
    void push_gated(unsigned to, session::message_ref& msg, std::string_view topic);
    // A QoS 1/2 message for another shard's sole subscriber, routed before any gate closed for its topic (its queue's
    // shard can hold its publisher only a round trip later, by which time its PUBACK is out): what is on its way so is
    // bounded per destination (ungated_half_), so that the queue's burst room past its mark
    // (mqtt.publisher_hold_burst) takes it all, however late that shard runs. Past the bound the publisher is not read
    // until that shard has taken the older half (ease_transit).
    void push_holdable(unsigned to, session::message* msg);
    struct ungated_flow;
    void hold_in_transit(unsigned to, const ungated_flow& f);
    void ease_transit();
    void snapshot_transit();
    // Per destination, in two halves: the older one's end (the outbox's sent() after it) is compared with what that
    // shard had taken as the turn began once the newer one is full (one atomic load per destination and turn while
    // anything counted may be on its way, none per message).
    struct ungated_flow {
        uint64_t open_n = 0;
        uint64_t open_bytes = 0;
        uint64_t prev_n = 0;
        uint64_t prev_bytes = 0;
        uint64_t prev_end = 0;
    };
    std::vector<ungated_flow> ungated_;
    // Half the share, in messages (from mqtt.max_queued_messages) and in their topic and payload bytes; UINT64_MAX
    // is no bound.
    uint64_t ungated_half_ = UINT64_MAX;
    uint64_t ungated_bytes_half_ = UINT64_MAX;
    // Whether what was sent to `to` up to `at` was taken there as this turn began, and every word to close that shard
    // had sent by then has been read here.
    bool transit_passed(unsigned to, uint64_t at) const {
        return transit_taken_[to] >= at && closes_seen_[to] >= transit_closes_[to];
    }
    struct transit_wait {
        uint64_t id; // the client not read
        unsigned to; // until this shard
        uint64_t at; // has taken this much of what was sent to it (smp_outbox::sent)
    };
    std::vector<transit_wait> transit_held_;
    std::vector<uint64_t> transit_taken_;  // per destination, smp::taken as this turn began (snapshot_transit)
    std::vector<uint64_t> transit_closes_; // and node::gate_closes from it to here then
    std::vector<uint64_t> closes_seen_;    // per shard, the k_gate_close messages read from it
    bool close_staged_ = false;            // a k_gate_close pushed and not published yet (drain_smp)
    // publisher_ is a held client whose connection ended, its unread bytes handled as it leaves (on_recv): its QoS 2
    // messages are taken as a held client's, but it is not held. (Its QoS 1 ones, unanswered, it sends again if it
    // comes back: they may drop past the limit as without holds, and leave the burst room to what was answered.)
    bool leaving_ = false;
    // The PUBLISH being handled is a client's QoS 1/2 message without retain (publish_qos12, on_publish): where the
    // queue that holds its client would drop it, it is refused instead (refused_): not answered, its bytes left
    // unread, it is handled again when the client's turn comes. Its client was told nothing, so nothing is lost, and
    // what waits is the client's own bytes (within held_rx_max), however many clients bring one message each.
    bool refusable_ = false;
    bool refused_ = false;
    // process(): the PUBLISH just handled was refused (its packet is counted again when it is read again).
    bool take_refusal() {
        if (!refused_) return false;
        refused_ = false;
        --m_.packets_received;
        return true;
    }
    bool remote_shared_ = false; // a message from another shard reached more than one subscriber here (fan_out)
    uint64_t refusals_ = 0;      // logged at doublings
    uint64_t holds_waived_ = 0;  // held clients let go to read their acks (waive_hold), logged at doublings
    // offer_to's refused case (rare: kept out of the offer's path).
    [[gnu::cold, gnu::noinline]] void refuse_publisher(const session_slot& slot, std::string_view topic);
    uint64_t forgotten_ = 0; // likewise: QoS 2 messages of clients that left, refused (unreceive)
    void forgotten(std::string_view topic);
    std::vector<uint64_t> transit_marks_; // per destination, the least `at` waited for (arm_wakes), or no_mark
    uint64_t transit_holds_ = 0;          // logged at doublings
    uint64_t sys_publishes_dropped_ = 0;  // clients' messages to $SYS/ (drop_sys_publish), logged at doublings
    void close_gate(unsigned from, gate_close& g);
    void credit_gate(unsigned from, uint64_t queue, uint64_t n);
    void open_gate(unsigned from, uint64_t queue);
    void drop_gate_topic(unsigned from, const std::string& topic, bool counted);
    void let_gate_go(std::map<std::pair<unsigned, uint64_t>, remote_gate>::iterator it);
    void ease_gates();
    void expire_gates(int64_t now);
    // This shard's queue side: tells the shard the message came from to hold its publishers on topic (once per
    // topic), grants credit to the shards holding for a queue below its mark, and lets them go (k_gate_open).
    void close_remote(const session_slot& slot, std::string_view topic);
    static queue_hold_source* source_of(queue_hold& h, unsigned shard);
    // The source for shard `from` of the queue keyed `queue` (and, in *hold, its entry), if this shard has one.
    queue_hold_source* remote_source(const void* queue, unsigned from, queue_hold** hold = nullptr);
    // A queue's key in the gate messages: its slot's address on its shard, carried as a pointer or a number and never
    // followed on the other shard.
    static void* queue_key(const session_slot* slot) { return const_cast<session_slot*>(slot); }
    static void* queue_key(uint64_t queue) { return reinterpret_cast<void*>(static_cast<uintptr_t>(queue)); }
    void gated_arrived(const session_slot& slot, uint8_t qos); // a k_publish_credited or _held reached it
    void grant_credit(const session_slot& slot, queue_hold& h, unsigned to, uint64_t room);
    void queue_turn(unsigned from, const void* queue);                 // k_gate_wait
    void withdraw_turns(unsigned from, const void* queue, uint64_t n); // k_gate_unwait
    void credit_returned(unsigned from, const void* queue, uint64_t n);
    void forget_source(unsigned from, const void* queue);
    // Whether a publisher below the queue's mark is held all the same: others wait for its room, or the credit given
    // to other shards takes it to its mark (room_below_mark).
    bool queue_closed(const session_slot& slot) const;
    // The room below the mark that a held client's turn waits for: an eighth of the mark, at most hold_turn_least.
    uint64_t least_turn(const session::session& s) const;
    static constexpr uint64_t hold_turn_least = 32;
    uint64_t turn_reading_ = 0;                // the client ease_queue_holds reads again in its turn (see queue_closed)
    const session_slot* turn_queue_ = nullptr; // and the queue whose turn it is
    void open_remote(queue_hold& h, const session_slot& slot);
    // Messages the queue may take before its mark, counting credit given to other shards as queued.
    uint64_t room_below_mark(const session::session& s, const queue_hold& h) const;
    std::unordered_set<const session_slot*> stuck_queues_;
    std::vector<const session_slot*> ease_slots_; // ease_queue_holds' list, kept for its capacity
    std::vector<uint64_t> unheld_; // publishers let go all at once: read again at the end of the turn (read_again)
    // Clients closed while their ids were in waiting lists (hold_listed): taken out of them all before the next turns
    // are given, in one pass over the lists however many closed.
    std::vector<uint64_t> hold_gone_;
    void forget_gone_holds();
    uint64_t publishers_let_go_ = 0; // clients read again after publisher_hold_ms while their queue moved
    uint64_t gated_let_go_ = 0;      // clients read again after publisher_hold_ms held by another shard's gate
    // Holds so far, each kind counted and logged at its own doublings (one count had the kind of its few logged lines
    // follow the mix: a shard holding its own clients for a queue seldom logged its gates closed for another shard's).
    uint64_t publisher_holds_ = 0;  // for a queue of this shard
    uint64_t gate_closes_ = 0;      // gates closed on another shard for a queue of this one
    uint64_t gated_holds_ = 0;      // for a gate another shard closed
    uint64_t left_received_ = 0;    // messages (and route updates) handled for held connections taken over or kicked
    uint64_t routes_broadcast_ = 0; // route updates (and k_gate_join words) sent to the other shards (own_received)
    uint64_t publisher_hold_expiries_ = 0;
    // What clients of this shard sent that was refused without closing them, by reason: each reason is logged at its
    // 1st, 2nd, 4th... refusal (log::at_doubling), so a client repeating it cannot flood the log.
    uint64_t retained_too_large_ = 0; // retained PUBLISHes over mqtt.max_retained_payload, not stored
    uint64_t retained_full_ = 0;      // retained PUBLISHes on a new topic over mqtt.max_retained_messages, not stored
    uint64_t invalid_filters_ = 0;    // SUBSCRIBE entries answered 0x80 for an invalid filter
    uint64_t subscriptions_over_ = 0; // SUBSCRIBE entries answered 0x80 for one filter more than mqtt.max_subscriptions
    uint64_t tombstones_early_ = 0; // stores that dropped tombstones before their time (retained_store limits), logged
                                    // at doublings too
    log::line_budget conn_log_{20}; // conn_info
    std::vector<uint64_t> graveyard_;
    // Closed (or taken over) connections of kept sessions whose send was still pending: when it completes, what the
    // socket did not take goes back to the front of the session's queue (requeue_lost_flight), which waits for it
    // meanwhile (session::wait_flight), so that a connection attached since is sent nothing newer first; unless the
    // session is dropped (forget_lost_flights), or the send has not ended in flight_wait_ms (give_up_flights).
    flight_waits<session_slot> lost_flights_{flight_wait_ms};
    // Connect-timeout and keepalive deadlines: a tick looks only at the connections whose deadline came up.
    reactor::deadline_wheel deadlines_;
    reactor::smp_outbox outbox_;
    io::peer_waker peers_; // wakes the other participants that sleep, from this shard's ring
    // Handoffs wait one loop turn before they are handled, so bytes the client sent on its old connection before it
    // reconnected (a PUBACK, say) are reaped and handled before the takeover closes that connection.
    std::vector<std::pair<uint64_t, handoff*>> pending_handoffs_;
    uint64_t turn_ = 0;
    idle_poll_rules poll_rules_{cfg_.budgets};
    wake_batch_rule wake_rule_{cfg_.budgets.wake_batch_us};
    int64_t now_ms_ = 0;
    int64_t turn_start_ns_ = 0; // when the turn's routing work began to count (turn_over_)
    uint64_t work_ = 0;
    uint64_t work_check_at_ = 0;
    static constexpr uint64_t work_check_every = 512;  // units: about 50-250 us of work between clock reads
    static constexpr uint64_t pause_least_work = 2048; // units a client's packets did in a call before it may stop
    bool turn_over_ = false;
    // Clients paused (pause_reading) and the turn each was: read again in that order from the end of the next turn,
    // while the turn's work allows. An entry is stale once its client was read again otherwise (paused cleared).
    std::deque<std::pair<uint64_t, uint64_t>> paused_;
    uint64_t pauses_ = 0;
    bool smp_left_ = false;      // the last drain left deliveries in a queue for a later turn (drain_smp)
    uint64_t smp_cuts_ = 0;      // drains that left deliveries for later (logged at doubling)
    uint64_t taken_ahead_ = 0;   // route updates and handoffs handled ahead of deliveries left for later
    uint64_t routes_ahead_ = 0;  // the route updates among them, k_route_add and k_route_del (logged at each doubling)
    bool deadlines_due_ = false; // the tick found deadlines due: run_deadlines runs them after the turn's completions
    // The last turn that took long_turn_ms or more to handle its completions, from its start to its end: a packet
    // handled in it was stamped with its start (check_deadline).
    int64_t long_turn_from_ = 0;
    int64_t long_turn_to_ = 0;
    // The start of the last turn that left nothing in the ring or held back in the kernel: what clients sent before
    // it has been handled. Keepalives count silence up to it (check_deadline).
    int64_t caught_up_ms_ = 0;
    int64_t stop_started_ms_ = 0;
    bool stop_cancelled_ = false; // cancel_stuck() has run
    // Keyed by a view of the session's own client id (one copy of the id per session, not two).
    session_registry sessions_;
    // Persistent sessions that went offline, in the order they did (so by expiry time: the interval is fixed). An
    // entry is stale once its session came back or went offline again (offline_since_ms no longer matches);
    // stale entries are dropped as they come due, and all at once when they outnumber the sessions.
    struct expiry_entry {
        int64_t offline_since_ms;
        std::string client_id;
    };
    std::deque<expiry_entry> expiry_;
    size_t expiry_bytes_ = 0;      // the ids' bytes in expiry_
    size_t expiry_kept_bytes_ = 0; // expiry_bytes_ after the last sweep of stale entries
    routing::topic_trie trie_;
    retained_store retained_;
    // Sessions with retained messages still to send (see retained_reads), in turn order: a read that does not end in
    // the turn its SUBSCRIBE came in continues here. Those whose client is gone wait apart, so that the loop does not
    // visit them every turn until they reconnect. Lists: an entry moves between them and to the back without a copy.
    std::list<retained_reads> readers_;
    std::list<retained_reads> offline_readers_;
    size_t read_budget_ = 0;      // topics reads may still look at this turn
    bool reads_runnable_ = false; // a read stopped for the turn's budget with room left: the loop must not sleep
    uint64_t generated_ids_ = 0;  // ids generated without getrandom (generated_id_bits)

    // scratch for routing (no per-publish allocation once grown)
    struct match {
        session_slot* slot;
        uint8_t qos;
    };
    std::vector<match> matches_;
    // Route cache: direct-mapped by topic hash, valid while trie_gen_ (bumped on every trie change) is unchanged.
    // Entries hold session_slot pointers: a slot is only destroyed after its subscriptions left the trie, which
    // bumps the generation first.
    struct route_entry {
        std::string topic;
        uint64_t gen = 0;
        uint64_t mask = 0;
        std::vector<match> matches;
        bool checked = false; // the topic passed this shard's PUBLISH checks (UTF-8, no wildcard, level limit)
        size_t bytes() const; // what its topic and match list hold on the heap
    };
    // Sized for a few thousand hot topics (about 300 KiB per shard); a miss costs one trie walk.
    static constexpr size_t route_cache_size = 4096;
    static constexpr size_t route_cache_budget = size_t{16} << 20; // bytes of topics and matches, per shard
    std::vector<route_entry> route_cache_ = std::vector<route_entry>(route_cache_size);
    size_t route_cache_bytes_ = 0; // the slots' bytes()
    uint64_t route_cache_flushes_ = 0;
    uint64_t trie_gen_ = 1;
    std::vector<uint8_t> scratch_;
    byte_vec frame_q0_; // the QoS 0 frame of the message being routed, encoded once for all subscribers
    bool frame_q0_valid_ = false;
    // The bytes of the message being fanned out, copied once for the send queues that reference them (null until a
    // subscriber needs them); only while fan_out delivers to two or more local subscribers.
    shared_bytes* fan_shared_ = nullptr;
    bool fan_share_ok_ = false;
    static constexpr size_t share_min_bytes = 1024;
    // The node-wide bound on bytes waiting to be sent (mqtt.max_outgoing_bytes_total), out_share_ of it this shard's.
    // Only send queues over out_mark_ are counted (heavy_: what each held when last weighed), so that a queue's growth
    // is looked at once per turn and only for those; the others held at most out_mark_ when last weighed (one in the
    // send backlog or held for smp_wait is weighed as it goes in and comes out). While the counted bytes
    // are over the share (out_pressed_, until they are under out_under_), no queue is given more once it holds
    // out_mark_ (out_limit_, else mqtt.max_outgoing_bytes), and a connection whose socket took less than out_mark_ in
    // mqtt.send_stall_timeout is closed (close_stalled), the largest first: a client reading a segment now and then
    // would otherwise count as moving and keep the shard pressed.
    struct heavy_queue {
        size_t counted = 0;
        int64_t moved_ms = 0; // when it went in, or its socket last completed out_mark_ taken (in `taken`)
        size_t taken = 0;
    };
    std::unordered_map<connection*, heavy_queue> heavy_;
    uint64_t heavy_bytes_ = 0;
    uint64_t out_share_;
    uint64_t out_under_; // seven eighths of out_share_
    uint64_t out_mark_;
    uint64_t out_limit_;
    bool out_pressed_ = false;
    bool pressed_logged_ = false; // its start was logged (at doublings of pressed_times_): its end is too
    uint64_t pressed_times_ = 0;
    static constexpr uint64_t out_mark_max = 65536;
    // A reassembly buffer kept for the next packet that straddles two receives: a stream of packets that do not line
    // up with receives (1 KiB payloads nearly always) would otherwise allocate and free one per receive. Empty between
    // uses; at most rx_spare_max bytes, so one large packet's memory does not stay behind.
    std::vector<uint8_t> rx_spare_;
    static constexpr size_t rx_spare_max = 65536;
    // A spare larger than this goes only to a connection that already has a quarter of it to store.
    static constexpr size_t rx_spare_small = 4096;

    metrics m_;
    stats st_;
};

// After every shard has stopped: frees what is still in the SMP queues (messages, filters, handed-off sockets).
void release_leftovers(node& n);
// What release_leftovers does for one message.
void release_message(const reactor::smp_msg& m);

} // namespace ringmq::broker
