#pragma once
// The narrow facade through which the admin shard questions and drives the MQTT shards. The admin shard never
// touches shard state: it sends an `admin_call` over the SMP queue, the target shard runs it on its own thread
// against its `shard_control` view, and sends the call back. Rows are plain values copied out on the MQTT shard.
#include "broker/metrics.hpp"

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ringmq::broker {

// A connected client (seed: client object).
struct client_row {
    std::string client_id;
    std::string username; // "undefined" when CONNECT had none (EMQ X text)
    std::string ipaddress;
    uint16_t port = 0;
    bool clean_sess = true;
    int proto_ver = 4;
    uint16_t keepalive = 0;
    int64_t connected_at = 0; // unix seconds
};

// A session, with real numbers where EMQ X printed "undefined".
struct session_row {
    std::string client_id;
    bool clean_sess = true;
    uint32_t max_inflight = 0;
    uint64_t inflight_queue = 0;  // messages in the outgoing window
    uint64_t message_queue = 0;   // messages waiting behind the window or for the client
    uint64_t message_dropped = 0; // dropped because the queue was full
    uint64_t awaiting_rel = 0;    // incoming QoS 2 awaiting PUBREL
    uint64_t awaiting_ack = 0;    // outgoing QoS 1/2 awaiting PUBACK/PUBREC
    uint64_t awaiting_comp = 0;   // outgoing QoS 2 awaiting PUBCOMP
    int64_t created_at = 0;       // unix seconds
};

struct subscription_row {
    std::string client_id;
    std::string topic;
    uint8_t qos = 0;
};

// Counters of one shard, copied for the admin shard.
struct shard_snapshot {
    metrics m;
    stats s;
    uint64_t connections = 0;  // sockets open on this shard (any state)
    uint64_t first_routes = 0; // filters subscribed here and on no lower-numbered shard (sum: the node's routes)
};

// Where one admin request's walk of one shard's clients, sessions or subscriptions is: the next bucket of the table
// (a call stops only between buckets), not an iterator, so it stays valid as entries come and go; only a rehash (the
// table growing past its buckets, a handful of times in its life) makes the walk start again. Owned by the request,
// used on the shard's thread.
struct list_cursor {
    size_t buckets = 0; // the table's bucket count when saved; 0 = not started
    size_t bucket = 0;  // the next bucket
    size_t index = 0;   // rows in the buckets before it
};

// How a list call left its walk.
struct list_chunk {
    bool ended = false;     // it reached the end of the table
    bool restarted = false; // the table was rehashed since the last call: the walk began again, in the new order
};

// Rows after which a list call stops at the next bucket (it goes on past them to the bucket's end).
inline constexpr size_t list_chunk_rows = 1000;

// What an MQTT shard offers the admin API. Implemented by broker::shard; every method runs on that shard's thread.
class shard_control {
public:
    virtual unsigned shard_id() const = 0;
    virtual size_t client_count() const = 0;
    // The lists: rows offset.. of this shard's table, at most `want` of them, going on from `cur`. A call stops after a
    // bounded amount of work (about list_chunk_rows rows, or entries passed), so it may return fewer rows than wanted,
    // none far into a large table, before the table's end.
    virtual list_chunk clients(list_cursor& cur, size_t offset, size_t want, std::vector<client_row>& out) const = 0;
    virtual bool client(std::string_view id, client_row& out) const = 0;
    virtual size_t session_count() const = 0;
    virtual list_chunk sessions(list_cursor& cur, size_t offset, size_t want, std::vector<session_row>& out) const = 0;
    virtual bool session(std::string_view id, session_row& out) const = 0;
    virtual size_t subscription_count() const = 0;
    virtual list_chunk subscriptions(list_cursor& cur, size_t offset, size_t want,
                                     std::vector<subscription_row>& out) const = 0;
    virtual void client_subscriptions(std::string_view id, std::vector<subscription_row>& out) const = 0;
    // This shard's routes (filters with a subscriber here) that sort after `after` ("" for the first), in order, up
    // to max_rows of them and about 256 KiB; true when none is left after them. Shards may share a route: the
    // admin API merges their lists.
    virtual bool routes_after(std::string_view after, size_t max_rows, std::vector<std::string>& out) const = 0;
    // The node's number of routes is the sum of the shards' route_count(): the routes no lower-numbered shard has.
    virtual size_t route_count() const = 0;
    virtual bool has_route(std::string_view filter) const = 0; // a local subscriber on exactly this filter
    // Disconnects the client if it is connected here (its will is published). False when not connected here.
    virtual bool kick(std::string_view id) = 0;
    // What subscribe did; too_many: the session has mqtt.max_subscriptions filters and this is not one of them.
    enum class subscribe_result { done, no_session, too_many };
    // On the client's session (connected or persistent offline) here. unsubscribe: false when there is none.
    virtual subscribe_result subscribe(std::string_view id, std::string_view filter, uint8_t qos) = 0;
    virtual bool unsubscribe(std::string_view id, std::string_view filter) = 0;
    // Publishes as if received from a client on this shard (no "received" counters).
    virtual void publish(std::string_view topic, std::span<const uint8_t> payload, uint8_t qos, bool retain) = 0;
    virtual void snapshot(shard_snapshot& out) const = 0;

protected:
    ~shard_control() = default;
};

// One request from the admin shard to one MQTT shard. Allocated and owned by the admin shard; the MQTT shard only
// runs `fn` and sends the pointer back (kind k_admin_done), so results written by fn are visible to the admin shard
// through the queue's release/acquire.
struct admin_call {
    std::function<void(shard_control&)> fn;
    void* waiter = nullptr; // admin-side bookkeeping, untouched by the MQTT shard
};

} // namespace ringmq::broker
