#pragma once
// Shard-local counters for every metric name of the EMQ X v2 API, and the stats gauges with their high-water marks.
// One `metrics` and one `stats` per MQTT shard, owned by its broker and written only on that shard's thread as
// plain integers; the admin shard gets copies by asking the shard over the SMP queues and sums them.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace ringmq::broker {

// X(member, "api/name") for the 39 metric names of the seed, in the seed's order.
#define RINGMQ_METRICS(X)                                                                                              \
    X(bytes_received, "bytes/received")                                                                                \
    X(bytes_sent, "bytes/sent")                                                                                        \
    X(messages_dropped, "messages/dropped")                                                                            \
    X(messages_forward, "messages/forward")                                                                            \
    X(messages_qos0_received, "messages/qos0/received")                                                                \
    X(messages_qos0_sent, "messages/qos0/sent")                                                                        \
    X(messages_qos1_received, "messages/qos1/received")                                                                \
    X(messages_qos1_sent, "messages/qos1/sent")                                                                        \
    X(messages_qos2_dropped, "messages/qos2/dropped")                                                                  \
    X(messages_qos2_received, "messages/qos2/received")                                                                \
    X(messages_qos2_sent, "messages/qos2/sent")                                                                        \
    X(messages_received, "messages/received")                                                                          \
    X(messages_retained, "messages/retained")                                                                          \
    X(messages_sent, "messages/sent")                                                                                  \
    X(packets_connack, "packets/connack")                                                                              \
    X(packets_connect, "packets/connect")                                                                              \
    X(packets_disconnect, "packets/disconnect")                                                                        \
    X(packets_pingreq, "packets/pingreq")                                                                              \
    X(packets_pingresp, "packets/pingresp")                                                                            \
    X(packets_puback_missed, "packets/puback/missed")                                                                  \
    X(packets_puback_received, "packets/puback/received")                                                              \
    X(packets_puback_sent, "packets/puback/sent")                                                                      \
    X(packets_pubcomp_missed, "packets/pubcomp/missed")                                                                \
    X(packets_pubcomp_received, "packets/pubcomp/received")                                                            \
    X(packets_pubcomp_sent, "packets/pubcomp/sent")                                                                    \
    X(packets_publish_received, "packets/publish/received")                                                            \
    X(packets_publish_sent, "packets/publish/sent")                                                                    \
    X(packets_pubrec_missed, "packets/pubrec/missed")                                                                  \
    X(packets_pubrec_received, "packets/pubrec/received")                                                              \
    X(packets_pubrec_sent, "packets/pubrec/sent")                                                                      \
    X(packets_pubrel_missed, "packets/pubrel/missed")                                                                  \
    X(packets_pubrel_received, "packets/pubrel/received")                                                              \
    X(packets_pubrel_sent, "packets/pubrel/sent")                                                                      \
    X(packets_received, "packets/received")                                                                            \
    X(packets_sent, "packets/sent")                                                                                    \
    X(packets_suback, "packets/suback")                                                                                \
    X(packets_subscribe, "packets/subscribe")                                                                          \
    X(packets_unsuback, "packets/unsuback")                                                                            \
    X(packets_unsubscribe, "packets/unsubscribe")

// Counters of one shard. messages_retained is a gauge (retained-table size when a message was last stored), kept
// here because the API lists it among the metrics.
struct metrics {
#define RINGMQ_METRIC_FIELD(m, n) uint64_t m = 0;
    RINGMQ_METRICS(RINGMQ_METRIC_FIELD)
#undef RINGMQ_METRIC_FIELD

    // Calls f(name, value) for each metric in the seed's order.
    template <class F> void for_each(F&& f) const {
#define RINGMQ_METRIC_VISIT(m, n) f(std::string_view(n), m);
        RINGMQ_METRICS(RINGMQ_METRIC_VISIT)
#undef RINGMQ_METRIC_VISIT
    }
    void add(const metrics& o) {
#define RINGMQ_METRIC_ADD(m, n) m += o.m;
        RINGMQ_METRICS(RINGMQ_METRIC_ADD)
#undef RINGMQ_METRIC_ADD
    }
};

// A gauge and its high-water mark since start.
struct gauge {
    uint64_t count = 0;
    uint64_t max = 0;
    void set(uint64_t v) {
        count = v;
        if (v > max) max = v;
    }
};

// The stats of one shard (summed by the admin shard; routes/topics/retained are per-node values every shard keeps a
// copy of, so the admin takes them from one shard rather than summing).
struct stats {
    gauge clients;       // connections in CONNECTED state on this shard
    gauge sessions;      // sessions homed on this shard
    gauge subscribers;   // (session, filter) entries in this shard's trie
    gauge subscriptions; // session -> filter entries (same population as subscribers: one table per shard)
    gauge routes;        // filters with a subscriber on this shard
    gauge topics;        // same as routes (EMQ X 2.3.1+)
    gauge retained;      // retained messages held
    // Connections closed, by the reason logged for them ("keepalive timeout", "packet too large", ...).
    std::map<std::string, uint64_t> closed_by_reason;
};

} // namespace ringmq::broker
