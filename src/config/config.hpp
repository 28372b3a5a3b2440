#pragma once
// Broker configuration: defaults, then the TOML file named by -c, then command-line flags, validated in one pass.
// The main thread builds one `config` at start-up, before anything listens; after that it is immutable and every
// shard reads it through a const reference, so nothing here is synchronised.
//
// Every problem is collected, not just the first, so an operator fixes a bad file in one round trip. Each error is
// one line "<origin>: <key>: <reason>", where origin is the file path with the line and column of the key
// ("ringmq.toml:12:1"), "--set KEY=VALUE", or the flag that supplied the value ("--listen", "--shards", ...). A TOML
// syntax error is "<file>:<line>:<column>: <parser message>", and stops the reading of that file (the parser cannot
// resynchronise), though flag errors are still reported with it.
//
// Kept free of toml++ and CLI11 includes so the modules that read a config do not pay their compile time.
#include "util/log.hpp"

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmq::config {

// A listen address. host is a numeric IPv4 or IPv6 address without brackets ("::1", not "[::1]"), ready for
// inet_pton; names are refused rather than resolved so start-up never depends on DNS. port 0 = ephemeral (tests).
struct endpoint {
    std::string host;
    uint16_t port;

    bool operator==(const endpoint&) const = default;
};

// Per-node MQTT resource limits, read by every shard's connection and session code.
struct mqtt_limits {
    uint32_t max_connections = 1000000; // per node
    uint32_t max_packet_size = 1048576; // bytes, whole packet incl. fixed header; 64..268435460
    uint32_t max_client_id_len = 65535; // >= 23: MQTT-3.1.3-5 makes servers accept ids of 1..23 bytes
    uint32_t max_topic_levels = 128;
    uint32_t max_inflight = 32;          // QoS1/2 messages in flight to one client, 1..65535
    uint32_t max_queued_messages = 1000; // per session, 0 = unlimited
    uint64_t max_queued_bytes = 0;       // topic and payload bytes queued per session, 0 = unlimited
    // How long at a time a client publishing QoS 1/2 on a session's shard may wait, unread, for that connected
    // session's queue to go below three quarters of its limits; 0 = never: past the limit the message is dropped.
    uint32_t publisher_hold_ms = 1000;
    // How many times its limits more than their quarter of slack a queue that holds its publishers takes of messages
    // routed by another shard before it could hold them (on their way already); 0 = none, dropped past the quarter.
    // A shard has at most a share of that room on its way to another for such queues (shard::push_holdable).
    uint32_t publisher_hold_burst = 4;
    uint32_t max_sessions = 0;              // sessions per node, connected or offline, 0 = unlimited
    uint32_t max_subscriptions = 0;         // filters per session, 0 = unlimited
    uint32_t max_awaiting_rel = 100;        // incoming QoS 2 awaiting PUBREL per session, 0 = unlimited (65535 ids)
    uint64_t max_outgoing_bytes = 16777216; // per connection bytes queued for send before QoS0 is dropped
    // Bytes waiting to be sent over all the node's connections (a share per shard): past a shard's share, none of its
    // send queues is given more once it holds 64 KiB, and those whose socket took less than that in
    // send_stall_timeout_ms are closed.
    uint64_t max_outgoing_bytes_total = 1073741824;
    uint32_t send_stall_timeout_ms = 10000;
    // Bytes of messages one shard may have on their way to another (queued, not yet taken) before it stops reading
    // its clients until half of them are taken: a shard that falls behind slows its publishers' TCP, not the node's
    // memory.
    uint64_t max_cross_shard_bytes = 16777216;
    double keepalive_multiplier = 1.5;    // >= 1.0
    uint32_t connect_timeout_ms = 10000;  // close a connection that sends no CONNECT
    uint32_t retry_interval_ms = 30000;   // (not used for resend while connected in 3.1.1; kept for v5 later)
    uint32_t session_expiry_ms = 7200000; // a persistent session offline this long is discarded; 0 = never
    uint32_t max_retained_messages = 0;   // 0 = unlimited
    uint32_t max_retained_payload = 1048576;
    bool allow_anonymous = true;
    bool retain_available = true;
};

// The HTTP admin listener's settings, read by the admin shard only.
struct admin_config {
    bool enabled = true;
    endpoint listen{"0.0.0.0", 8080};
    std::string users_file = "ringmq.users";
    std::string default_user = "admin";
    std::string default_password = "public";
    uint32_t max_body_bytes = 1048576;
    uint32_t idle_timeout_ms = 60000;
    uint32_t send_timeout_ms = 15000;    // a response not taken by the client in this time closes the connection
    uint32_t request_timeout_ms = 30000; // from a request's first byte to its last: slower gets 408 and a close
    uint32_t max_connections = 64;       // open admin connections; beyond, see reclaim_after, else 503 and a close
    // With every admin.max_connections slot taken, a new connection takes the slot of the one that has waited
    // longest for its client (idle between requests, or a request not received whole) if it waited this long.
    uint32_t reclaim_after_ms = 1000;
    uint32_t password_checks_per_second = 20; // PBKDF2 checks of passwords not seen before; beyond, 429
};

// $SYS topic publishing.
struct sys_config {
    uint32_t interval_ms = 60000;
    bool enabled = true;
};

// How a shard paces its loop: how much long work it does per turn before its other clients get their turn
// (ARCHITECTURE.md: long loops run in time-boxed steps; counts stand in for time, see shard.cpp for what each step
// costs), and how long it polls for more work before it sleeps.
struct turn_budgets {
    uint32_t sends_per_turn = 128;           // sends started per loop turn; the rest wait in the send backlog
    uint32_t retained_reads_per_turn = 1024; // retained topics looked at per loop turn, all SUBSCRIBEs together
    uint32_t retained_read_slice = 256;      // of those, per session in turn
    // Microseconds of routing work (a new topic's matches, deliveries) a loop turn does before each client whose
    // packets cost some stops, after the packet it is on, until the next turn (0: no bound): the packets of one client,
    // or of a few, that each match thousands of filters or subscribers held a shard for seconds meanwhile.
    uint32_t turn_work_us = 5000;
    // Bytes a client's multishot receive takes before it ends and is armed again (Linux 6.17; 0: no limit): what a
    // client paused for the above, or held for a full queue, may have taken unhandled (plus a buffer) rather than the
    // whole receive ring. 64 KiB cut a closed-loop publisher's reads into smaller turns (8% fewer deliveries per
    // CPU-second on 1->1 QoS 0); 256 KiB cost at most a few percent there.
    uint32_t receive_limit = 262144;
    // Microseconds an idle shard keeps polling its ring (and its queues) before it sleeps; 0 sleeps at once. A poll
    // that finds work saves the wake-up of a sleeping thread on the next packet; the three rules below keep it to the
    // traffic where that pays (see README, "Idle polling"). At most 10 ms: with the rules off, an idle shard wakes for
    // its 200 ms tick and polls after it too, so the cap keeps that under 5% of a core.
    uint32_t idle_poll_us = 50;
    // Poll only while the shard's wake-ups bring at least this many packets each (a running average): a closed loop
    // that sends in batches gains from polling, sparse traffic (one or two packets a wake-up) only spends the gap.
    // 0 polls after every wake-up.
    uint32_t idle_poll_min_batch = 16;
    // Poll only while at least this percentage of the recent polls found work before their time ran out (a running
    // average; while it holds polls back, one idle point in 16 polls anyway to measure again, the gap doubling up to
    // 256 while those probes find nothing). A poll that times out spent node.idle_poll_us for nothing, one that finds
    // work saved a wake-up: where the next packet comes later than the poll lasts as often as not (a fan-out whose
    // generator is the bound), polling only spends CPU. 0 ignores it.
    uint32_t idle_poll_min_found = 75;
    // Weigh polling against sleeping by the packets each handles per CPU-second of the shard's thread, in epochs of
    // 25 ms (one in 32 tries the mode that did less; wake_batch_by_cpu adds batched sleeps to the modes): a poll that
    // finds work after a long wait saves a wake-up but spends the wait, and where the wait is longer than a wake-up
    // costs, sleeping does more per CPU-second. Off, the shard polls whenever the two rules above let it (lower latency
    // at any CPU price).
    bool idle_poll_by_cpu = true;
    // Microseconds a shard, once asleep, lets completions gather before it wakes (Linux 6.12+, io_uring's minimum
    // wait): those that come within this time of its going to sleep wait until it has passed, unless wake_batch of them
    // come first; a later one wakes the shard at once. Under load each wake-up then handles a batch, and the clients
    // whose packets woke the shard one at a time no longer pay a wake-up each; it costs latency (up to this much for
    // each shard a message passes, cross-shard deliveries and wake-ups included) only where completions come closer
    // together than this, and the shard waits so only while its first completions mostly do (unless wake_batch_by_cpu
    // overrules it). 0 wakes at the first (see README, "Batched wake-ups").
    uint32_t wake_batch_us = 0;
    uint32_t wake_batch = 32;
    // Weigh batched sleeps against plain ones by the packets each handles per CPU-second of the shard's thread, in the
    // epochs of idle_poll_by_cpu (which then choose among polling, plain and batched sleeps; without idle polling
    // weighed, the epochs weigh the two kinds of sleep alone): the timer that ends a minimum wait costs CPU, and where
    // wake_batch_us is only about as long as the gap between packets the batches it buys are too small to pay for it.
    // Off by default: the weighing cannot see what batching saves the clients, whose sends no longer wake the shard one
    // at a time (a connect storm's gain is lost with it; README, "Batched wake-ups"). Off, the shard batches whenever
    // wake_batch_rule's first-completion rule holds.
    bool wake_batch_by_cpu = false;
    // Wake a sleeping shard by posting a completion into its ring from the waker's own ring (IORING_OP_MSG_RING,
    // carried by a submission the waker makes anyway) instead of a write to its eventfd: no syscall of the waker's
    // own and no eventfd read for the sleeper to complete and post again. Off, or where the kernel lacks it, eventfd.
    bool ring_wakeups = true;
    // Keep each settled connection's socket in its shard's io_uring file table instead of the process's descriptor
    // table: no descriptor lookup per operation, and room for a table as large as the open-file limit in every
    // shard rather than one limit for the whole process. Off, or where the kernel refuses the table, descriptors.
    bool fixed_files = true;
    // Use only the io_uring features of this Linux release and older ("6.1"), whatever the running kernel offers;
    // "auto" uses all it has. For working around a regression in a newer feature, and for running the paths an older
    // kernel takes (COOP_TASKRUN before 6.1, whole receive buffers and no minimum wait before 6.12, SHUTDOWN for a
    // closing connection's receive before 6.13) on a new one. It never adds a feature the kernel lacks.
    std::string io_uring_kernel = "auto";
    // Entries of each queue between two shards (and between a shard and the admin shard), a power of two. A message
    // that finds its queue full waits in its sender's backlog, and the sender sleeps until the queue is empty; a
    // queue costs 16 bytes an entry, (shards + 1) x shards queues in all.
    uint32_t smp_queue_size = 16384;
};

// The whole configuration: one immutable value owned by main, shared read-only with every shard.
struct config {
    std::string node_name = "ringmq@127.0.0.1";
    unsigned shards = 0; // 0 in the file/flags means "number of online cores"; resolved in load()
    log::level log_level = log::level::info;
    endpoint mqtt_listen{"0.0.0.0", 1883};
    bool mqtt_defer_accept = true;    // accept a connection with its first bytes (listener::bind_reuseport)
    int mqtt_notsent_lowat = 1048576; // TCP_NOTSENT_LOWAT of the MQTT sockets (listener::listen_options), 0 = off
    mqtt_limits limits;
    turn_budgets budgets;
    admin_config admin;
    sys_config sys;
    std::string config_path; // "" when no file
};

// Outcome of parsing argv: either a config, or "exit now" with a code (help/version printed, code 0) or errors.
// exit_code is 2 for a command-line usage error (unknown flag, missing argument) and 1 for invalid configuration;
// in both cases cfg is empty and errors holds every message, none printed yet.
struct load_result {
    std::optional<config> cfg;
    int exit_code = 0;
    std::vector<std::string> errors;
    // Problems with values a later setting replaced (a file's value under a flag): the broker starts, and logs them
    // so that the file is mended before the flag is dropped.
    std::vector<std::string> warnings;
};

// Parses flags, reads the -c file, applies flags over file values, validates, resolves shards = 0.
// Help and version text go to std::cout.
load_result load(int argc, const char* const* argv);
// Same, with help/version text written to `out` (tests capture it).
load_result load(int argc, const char* const* argv, std::ostream& out);
// For tests: the TOML text as if it were the file `origin`; no flags. shards = 0 is resolved here too.
load_result load_from_string(std::string_view toml_text, std::string_view origin);

// A node.io_uring_kernel value: "auto" (false, major = minor = 0) or "major.minor" with major >= 6 (true). Anything
// else: false with why set.
bool parse_kernel_release(std::string_view s, int& major, int& minor, std::string& why);

// One-line summary for the start-up log.
std::string describe(const config& c);

// "HOST:PORT", "[V6]:PORT" or ":PORT" (host 0.0.0.0). On failure returns false and sets `why` to a reason that
// names the problem; `out` is then unspecified.
bool parse_endpoint(std::string_view s, endpoint& out, std::string& why);
// The inverse: "1.2.3.4:1883", "[::1]:1883".
std::string to_string(const endpoint& e);

// The CPUs this process may run on (its affinity mask: taskset, a cpuset), in order; empty if it cannot be read.
std::vector<int> allowed_cpus();
// shards = 0 -> the count of allowed_cpus() (else the online cores) clamped to 1..max_shards; other values
// unchanged. 63: the MQTT shards and the admin shard are the participants of the SMP matrix, whose senders keep their
// destinations in 64-bit masks (reactor::smp_outbox).
inline constexpr unsigned max_shards = 63;
unsigned resolve_shards(unsigned configured);

} // namespace ringmq::config
