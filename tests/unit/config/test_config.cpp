#include "config/config.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sched.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace ringmq::config::test {
namespace {

using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// The CPUs this test may run on (its affinity mask), as node.shards = 0 counts them.
unsigned expected_auto_shards() {
    cpu_set_t set;
    CPU_ZERO(&set);
    EXPECT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
    return std::clamp(static_cast<unsigned>(CPU_COUNT(&set)), 1u, 63u);
}

// Every key set to something other than its default, so a key that is parsed into the wrong field or not at all
// shows up as a mismatch.
constexpr const char* k_full_toml = R"(
[node]
name = "edge@10.0.0.7"
shards = 3
sends_per_turn = 17
retained_reads_per_turn = 99
retained_read_slice = 33
turn_work_us = 1234
receive_limit = 65536
idle_poll_us = 77
idle_poll_min_batch = 5
idle_poll_min_found = 60
idle_poll_by_cpu = false
wake_batch_us = 250
wake_batch = 9
wake_batch_by_cpu = true
ring_wakeups = false
fixed_files = true
io_uring_kernel = "6.11"
smp_queue_size = 256
[log]
level = "debug"
[mqtt]
listen = "127.0.0.1:2883"
defer_accept = false
tcp_notsent_lowat = 4096
max_connections = 5000
max_packet_size = 65536
max_client_id_len = 128
max_topic_levels = 16
max_inflight = 10
max_queued_messages = 0
max_queued_bytes = 5000
publisher_hold_ms = 250
publisher_hold_burst = 9
max_sessions = 7000
max_subscriptions = 50
max_awaiting_rel = 7
max_outgoing_bytes = 4096
max_outgoing_bytes_total = 1048576
send_stall_timeout = 86400000
max_cross_shard_bytes = 131072
keepalive_multiplier = 2.25
connect_timeout = 2500
retry_interval = 15000
session_expiry_interval = 0
max_retained_messages = 777
max_retained_payload = 2048
allow_anonymous = false
retain_available = false
[admin]
enabled = false
listen = "[::1]:9090"
users_file = "/etc/ringmq/users"
default_user = "root"
default_password = "s3cret"
max_body_bytes = 4096
idle_timeout = 5000
send_timeout = 2500
max_connections = 7
reclaim_after = 250
password_checks_per_second = 3
[sys]
enabled = false
interval = 2000
)";

void expect_full(const config& c) {
    EXPECT_EQ(c.node_name, "edge@10.0.0.7");
    EXPECT_EQ(c.shards, 3u);
    EXPECT_EQ(c.budgets.sends_per_turn, 17u);
    EXPECT_EQ(c.budgets.retained_reads_per_turn, 99u);
    EXPECT_EQ(c.budgets.retained_read_slice, 33u);
    EXPECT_EQ(c.budgets.turn_work_us, 1234u);
    EXPECT_EQ(c.budgets.receive_limit, 65536u);
    EXPECT_EQ(c.budgets.idle_poll_us, 77u);
    EXPECT_EQ(c.budgets.idle_poll_min_batch, 5u);
    EXPECT_EQ(c.budgets.idle_poll_min_found, 60u);
    EXPECT_FALSE(c.budgets.idle_poll_by_cpu);
    EXPECT_EQ(c.budgets.wake_batch_us, 250u);
    EXPECT_EQ(c.budgets.wake_batch, 9u);
    EXPECT_TRUE(c.budgets.wake_batch_by_cpu);
    EXPECT_FALSE(c.budgets.ring_wakeups);
    EXPECT_TRUE(c.budgets.fixed_files);
    EXPECT_EQ(c.budgets.io_uring_kernel, "6.11");
    EXPECT_EQ(c.budgets.smp_queue_size, 256u);
    EXPECT_EQ(c.log_level, log::level::debug);
    EXPECT_EQ(c.mqtt_listen, (endpoint{"127.0.0.1", 2883}));
    EXPECT_FALSE(c.mqtt_defer_accept);
    EXPECT_EQ(c.mqtt_notsent_lowat, 4096);
    const auto& m = c.limits;
    EXPECT_EQ(m.max_connections, 5000u);
    EXPECT_EQ(m.max_packet_size, 65536u);
    EXPECT_EQ(m.max_client_id_len, 128u);
    EXPECT_EQ(m.max_topic_levels, 16u);
    EXPECT_EQ(m.max_inflight, 10u);
    EXPECT_EQ(m.max_queued_messages, 0u);
    EXPECT_EQ(m.max_queued_bytes, 5000u);
    EXPECT_EQ(m.publisher_hold_ms, 250u);
    EXPECT_EQ(m.publisher_hold_burst, 9u);
    EXPECT_EQ(m.max_sessions, 7000u);
    EXPECT_EQ(m.max_subscriptions, 50u);
    EXPECT_EQ(m.max_awaiting_rel, 7u);
    EXPECT_EQ(m.max_outgoing_bytes, 4096u);
    EXPECT_EQ(m.max_outgoing_bytes_total, 1048576u); // its least
    EXPECT_EQ(m.send_stall_timeout_ms, 86400000u);   // its most
    EXPECT_EQ(m.max_cross_shard_bytes, 131072u);
    EXPECT_DOUBLE_EQ(m.keepalive_multiplier, 2.25);
    EXPECT_EQ(m.connect_timeout_ms, 2500u);
    EXPECT_EQ(m.retry_interval_ms, 15000u);
    EXPECT_EQ(m.session_expiry_ms, 0u);
    EXPECT_EQ(m.max_retained_messages, 777u);
    EXPECT_EQ(m.max_retained_payload, 2048u);
    EXPECT_FALSE(m.allow_anonymous);
    EXPECT_FALSE(m.retain_available);
    EXPECT_FALSE(c.admin.enabled);
    EXPECT_EQ(c.admin.listen, (endpoint{"::1", 9090}));
    EXPECT_EQ(c.admin.users_file, "/etc/ringmq/users");
    EXPECT_EQ(c.admin.default_user, "root");
    EXPECT_EQ(c.admin.default_password, "s3cret");
    EXPECT_EQ(c.admin.max_body_bytes, 4096u);
    EXPECT_EQ(c.admin.idle_timeout_ms, 5000u);
    EXPECT_EQ(c.admin.send_timeout_ms, 2500u);
    EXPECT_EQ(c.admin.max_connections, 7u);
    EXPECT_EQ(c.admin.reclaim_after_ms, 250u);
    EXPECT_EQ(c.admin.password_checks_per_second, 3u);
    EXPECT_FALSE(c.sys.enabled);
    EXPECT_EQ(c.sys.interval_ms, 2000u);
}

void expect_defaults(const config& c) {
    const config d{};
    EXPECT_EQ(c.node_name, "ringmq@127.0.0.1");
    EXPECT_EQ(c.shards, expected_auto_shards());
    EXPECT_EQ(c.budgets.sends_per_turn, 128u);
    EXPECT_EQ(c.budgets.retained_reads_per_turn, 1024u);
    EXPECT_EQ(c.budgets.retained_read_slice, 256u);
    EXPECT_EQ(c.budgets.turn_work_us, 5000u);
    EXPECT_EQ(c.budgets.receive_limit, 262144u);
    EXPECT_EQ(c.budgets.idle_poll_us, 50u);
    EXPECT_EQ(c.budgets.idle_poll_min_batch, 16u);
    EXPECT_EQ(c.budgets.idle_poll_min_found, 75u);
    EXPECT_TRUE(c.budgets.idle_poll_by_cpu);
    EXPECT_EQ(c.budgets.wake_batch_us, 0u);
    EXPECT_EQ(c.budgets.wake_batch, 32u);
    EXPECT_FALSE(c.budgets.wake_batch_by_cpu);
    EXPECT_TRUE(c.budgets.ring_wakeups);
    EXPECT_TRUE(c.budgets.fixed_files);
    EXPECT_EQ(c.budgets.io_uring_kernel, "auto");
    EXPECT_EQ(c.budgets.smp_queue_size, 16384u);
    EXPECT_EQ(c.log_level, log::level::info);
    EXPECT_EQ(c.mqtt_listen, (endpoint{"0.0.0.0", 1883}));
    EXPECT_TRUE(c.mqtt_defer_accept);
    EXPECT_EQ(c.mqtt_notsent_lowat, 1048576);
    EXPECT_EQ(c.limits.max_connections, 1000000u);
    EXPECT_EQ(c.limits.max_packet_size, 1048576u);
    EXPECT_EQ(c.limits.max_client_id_len, 65535u);
    EXPECT_EQ(c.limits.max_topic_levels, 128u);
    EXPECT_EQ(c.limits.max_inflight, 32u);
    EXPECT_EQ(c.limits.max_queued_messages, 1000u);
    EXPECT_EQ(c.limits.max_queued_bytes, 0u);
    EXPECT_EQ(c.limits.publisher_hold_ms, 1000u);
    EXPECT_EQ(c.limits.publisher_hold_burst, 4u);
    EXPECT_EQ(c.limits.max_sessions, 0u);
    EXPECT_EQ(c.limits.max_subscriptions, 0u);
    EXPECT_EQ(c.limits.max_awaiting_rel, 100u);
    EXPECT_EQ(c.limits.max_outgoing_bytes, 16777216u);
    EXPECT_EQ(c.limits.max_outgoing_bytes_total, 1073741824u);
    EXPECT_EQ(c.limits.send_stall_timeout_ms, 10000u);
    EXPECT_EQ(c.limits.max_cross_shard_bytes, 16777216u);
    EXPECT_DOUBLE_EQ(c.limits.keepalive_multiplier, 1.5);
    EXPECT_EQ(c.limits.connect_timeout_ms, 10000u);
    EXPECT_EQ(c.limits.retry_interval_ms, 30000u);
    EXPECT_EQ(c.limits.session_expiry_ms, 7200000u);
    EXPECT_EQ(c.limits.max_retained_messages, 0u);
    EXPECT_EQ(c.limits.max_retained_payload, 1048576u);
    EXPECT_TRUE(c.limits.allow_anonymous);
    EXPECT_TRUE(c.limits.retain_available);
    EXPECT_TRUE(c.admin.enabled);
    EXPECT_EQ(c.admin.listen, (endpoint{"0.0.0.0", 8080}));
    EXPECT_EQ(c.admin.users_file, "ringmq.users");
    EXPECT_EQ(c.admin.default_user, "admin");
    EXPECT_EQ(c.admin.default_password, "public");
    EXPECT_EQ(c.admin.max_body_bytes, 1048576u);
    EXPECT_EQ(c.admin.idle_timeout_ms, 60000u);
    EXPECT_EQ(c.admin.send_timeout_ms, 15000u);
    EXPECT_EQ(c.admin.request_timeout_ms, 30000u);
    EXPECT_EQ(c.admin.max_connections, 64u);
    EXPECT_EQ(c.admin.reclaim_after_ms, 1000u);
    EXPECT_EQ(c.admin.password_checks_per_second, 20u);
    EXPECT_TRUE(c.sys.enabled);
    EXPECT_EQ(c.sys.interval_ms, 60000u);
    EXPECT_EQ(c.admin.listen, d.admin.listen);
}

// Owns a mkdtemp directory for config files; removed with everything in it after each test.
class config_test : public ::testing::Test {
protected:
    void SetUp() override {
        std::string tmpl = (std::filesystem::temp_directory_path() / "ringmq_config_XXXXXX").string();
        ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    std::string write(const std::string& name, std::string_view text) {
        std::string path = (dir_ / name).string();
        std::ofstream f(path, std::ios::binary);
        f << text;
        return path;
    }

    static load_result run(std::vector<std::string> args, std::ostream& out) {
        args.insert(args.begin(), "ringmq");
        std::vector<const char*> argv;
        for (auto& a : args)
            argv.push_back(a.c_str());
        argv.push_back(nullptr);
        return load(static_cast<int>(args.size()), argv.data(), out);
    }
    static load_result run(std::vector<std::string> args) {
        std::ostringstream out;
        return run(std::move(args), out);
    }

    std::filesystem::path dir_;
};

// ---- defaults and reading every key

TEST_F(config_test, defaults_with_no_args) {
    auto r = run({});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.errors, IsEmpty());
    expect_defaults(*r.cfg);
    EXPECT_EQ(r.cfg->config_path, "");
}

TEST_F(config_test, argc_zero_is_treated_as_no_args) {
    const char* argv[] = {nullptr};
    std::ostringstream out;
    auto r = load(0, argv, out);
    ASSERT_TRUE(r.cfg.has_value());
    expect_defaults(*r.cfg);
}

TEST_F(config_test, empty_string_gives_defaults) {
    auto r = load_from_string("", "empty.toml");
    ASSERT_TRUE(r.cfg.has_value());
    expect_defaults(*r.cfg);
}

TEST_F(config_test, documented_layout_with_default_values_gives_defaults) {
    auto r = load_from_string(R"(
[node]
name = "ringmq@127.0.0.1"
shards = 0
sends_per_turn = 128
retained_reads_per_turn = 1024
retained_read_slice = 256
turn_work_us = 5000
receive_limit = 262144
idle_poll_us = 50
idle_poll_min_batch = 16
idle_poll_min_found = 75
idle_poll_by_cpu = true
wake_batch_us = 0
wake_batch = 32
wake_batch_by_cpu = false
ring_wakeups = true
fixed_files = true
io_uring_kernel = "auto"
smp_queue_size = 16384
[log]
level = "info"
[mqtt]
listen = "0.0.0.0:1883"
defer_accept = true
max_connections = 1000000
max_packet_size = 1048576
max_client_id_len = 65535
max_topic_levels = 128
max_inflight = 32
max_queued_messages = 1000
max_queued_bytes = 0
publisher_hold_ms = 1000
max_sessions = 0
max_subscriptions = 0
max_awaiting_rel = 100
max_outgoing_bytes = 16777216
max_cross_shard_bytes = 16777216
keepalive_multiplier = 1.5
connect_timeout = 10000      # ms
retry_interval = 30000       # ms
max_retained_messages = 0
max_retained_payload = 1048576
allow_anonymous = true
retain_available = true
[admin]
enabled = true
listen = "0.0.0.0:8080"
users_file = "ringmq.users"
default_user = "admin"
default_password = "public"
max_body_bytes = 1048576
idle_timeout = 60000         # ms
[sys]
enabled = true
interval = 60000             # ms
)",
                              "ringmq.toml");
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    expect_defaults(*r.cfg);
}

TEST_F(config_test, every_key_read_from_string) {
    auto r = load_from_string(k_full_toml, "full.toml");
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    expect_full(*r.cfg);
    EXPECT_EQ(r.cfg->config_path, "");
}

TEST_F(config_test, every_key_read_from_file) {
    std::string path = write("full.toml", k_full_toml);
    auto r = run({"-c", path});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    expect_full(*r.cfg);
    EXPECT_EQ(r.cfg->config_path, path);

    auto r2 = run({"--config=" + path});
    ASSERT_TRUE(r2.cfg.has_value());
    EXPECT_EQ(r2.cfg->limits.max_inflight, 10u);
}

TEST_F(config_test, partial_file_keeps_other_defaults) {
    auto r = load_from_string("[mqtt]\nmax_inflight = 7\n", "p.toml");
    ASSERT_TRUE(r.cfg.has_value());
    EXPECT_EQ(r.cfg->limits.max_inflight, 7u);
    EXPECT_EQ(r.cfg->limits.max_queued_messages, 1000u);
    EXPECT_EQ(r.cfg->mqtt_listen, (endpoint{"0.0.0.0", 1883}));
}

TEST_F(config_test, dotted_keys_and_inline_tables_are_plain_toml) {
    auto r = load_from_string("mqtt.max_inflight = 9\nsys = { interval = 5000 }\n", "d.toml");
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.cfg->limits.max_inflight, 9u);
    EXPECT_EQ(r.cfg->sys.interval_ms, 5000u);
}

TEST_F(config_test, keepalive_multiplier_accepts_an_integer) {
    auto r = load_from_string("[mqtt]\nkeepalive_multiplier = 2\n", "k.toml");
    ASSERT_TRUE(r.cfg.has_value());
    EXPECT_DOUBLE_EQ(r.cfg->limits.keepalive_multiplier, 2.0);
}

TEST_F(config_test, range_bounds_are_inclusive) {
    auto r = load_from_string(R"(
[node]
shards = 63
[mqtt]
max_packet_size = 64
max_inflight = 65535
keepalive_multiplier = 10.0
connect_timeout = 100
[sys]
interval = 86400000
)",
                              "b.toml");
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.cfg->shards, 63u);
    EXPECT_EQ(r.cfg->limits.max_packet_size, 64u);
    EXPECT_EQ(r.cfg->limits.max_inflight, 65535u);
    EXPECT_EQ(r.cfg->sys.interval_ms, 86400000u);

    auto hi = load_from_string("[mqtt]\nmax_packet_size = 268435460\n", "b.toml");
    ASSERT_TRUE(hi.cfg.has_value());
    EXPECT_EQ(hi.cfg->limits.max_packet_size, 268435460u);
}

TEST_F(config_test, shards_zero_resolves_to_online_cores) {
    auto r = load_from_string("[node]\nshards = 0\n", "s.toml");
    ASSERT_TRUE(r.cfg.has_value());
    EXPECT_EQ(r.cfg->shards, expected_auto_shards());
    EXPECT_GE(r.cfg->shards, 1u);
    EXPECT_LE(r.cfg->shards, 63u);
    EXPECT_EQ(resolve_shards(0), expected_auto_shards());
    EXPECT_EQ(resolve_shards(5), 5u);
}

TEST_F(config_test, log_level_accepts_every_name) {
    const std::pair<const char*, log::level> cases[] = {{"debug", log::level::debug}, {"info", log::level::info},
                                                        {"warn", log::level::warn},   {"warning", log::level::warn},
                                                        {"error", log::level::error}, {"off", log::level::off}};
    for (auto [name, lvl] : cases) {
        auto r = run({"--log-level", name});
        ASSERT_TRUE(r.cfg.has_value()) << name;
        EXPECT_EQ(r.cfg->log_level, lvl) << name;
    }
}

// ---- flags

TEST_F(config_test, flags_override_file) {
    std::string path = write("f.toml", R"(
[node]
name = "file@host"
shards = 2
[log]
level = "error"
[mqtt]
listen = "127.0.0.1:1000"
max_inflight = 5
[admin]
enabled = true
listen = "127.0.0.1:2000"
)");
    auto r = run({"-c", path, "--listen", "127.0.0.1:0", "--shards", "7", "--node-name", "flag@host", "--log-level",
                  "warn", "--admin-listen", "[::]:0"});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    const config& c = *r.cfg;
    EXPECT_EQ(c.mqtt_listen, (endpoint{"127.0.0.1", 0}));
    EXPECT_EQ(c.shards, 7u);
    EXPECT_EQ(c.node_name, "flag@host");
    EXPECT_EQ(c.log_level, log::level::warn);
    EXPECT_EQ(c.admin.listen, (endpoint{"::", 0}));
    EXPECT_TRUE(c.admin.enabled);
    EXPECT_EQ(c.limits.max_inflight, 5u); // not overridden: still from the file

    auto r2 = run({"-c", path, "--no-admin"});
    ASSERT_TRUE(r2.cfg.has_value());
    EXPECT_FALSE(r2.cfg->admin.enabled);
    EXPECT_EQ(r2.cfg->mqtt_listen, (endpoint{"127.0.0.1", 1000}));
    EXPECT_EQ(r2.cfg->shards, 2u);
}

TEST_F(config_test, flags_work_without_a_file) {
    auto r = run({"--listen=:1884", "--shards=1", "--no-admin"});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.cfg->mqtt_listen, (endpoint{"0.0.0.0", 1884}));
    EXPECT_EQ(r.cfg->shards, 1u);
    EXPECT_FALSE(r.cfg->admin.enabled);
    EXPECT_EQ(r.cfg->config_path, "");
}

TEST_F(config_test, flag_overrides_a_bad_file_value) {
    // The operator fixes a broken file value from the command line: the shadowed value is not an error, but it is
    // reported, so that the file is mended before the flag is dropped. A value replaced twice is checked as well.
    std::string path = write("bad.toml", "[mqtt]\nmax_inflight = 0\nlisten = \"nonsense\"\n");
    auto r = run(
        {"-c", path, "--set", "mqtt.max_inflight=4", "--set", "mqtt.listen=1.2.3.4:99999", "--listen", "127.0.0.1:1"});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.cfg->limits.max_inflight, 4u);
    EXPECT_EQ(r.cfg->mqtt_listen.port, 1u);
    const std::string later = " (not in force: a later setting replaces it)";
    EXPECT_THAT(r.warnings,
                ::testing::UnorderedElementsAre(
                    path + ":2:1: mqtt.max_inflight: must be between 1 and 65535, got 0" + later,
                    path + ":3:1: mqtt.listen: bad endpoint 'nonsense': expected HOST:PORT" + later,
                    AllOf(::testing::StartsWith("--set mqtt.listen=1.2.3.4:99999: mqtt.listen: bad endpoint "),
                          ::testing::EndsWith(later))));

    auto good = run({"-c", write("good.toml", "[mqtt]\nmax_inflight = 7\n"), "--set", "mqtt.max_inflight=4"});
    ASSERT_TRUE(good.cfg.has_value());
    EXPECT_THAT(good.warnings, ::testing::IsEmpty());
}

TEST_F(config_test, set_applies_typed_values) {
    auto r = run({"--set", "mqtt.max_inflight=10", "--set", "mqtt.allow_anonymous=false", "--set",
                  "mqtt.keepalive_multiplier=3.5", "--set", "node.name=\"q@h\"", "--set", "admin.listen=127.0.0.1:81",
                  "--set", "log.level=debug", "--set", "sys.interval = 1500", "--set=mqtt.max_outgoing_bytes=2048"});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    const config& c = *r.cfg;
    EXPECT_EQ(c.limits.max_inflight, 10u);
    EXPECT_FALSE(c.limits.allow_anonymous);
    EXPECT_DOUBLE_EQ(c.limits.keepalive_multiplier, 3.5);
    EXPECT_EQ(c.node_name, "q@h");
    EXPECT_EQ(c.admin.listen, (endpoint{"127.0.0.1", 81}));
    EXPECT_EQ(c.log_level, log::level::debug);
    EXPECT_EQ(c.sys.interval_ms, 1500u);
    EXPECT_EQ(c.limits.max_outgoing_bytes, 2048u);
}

TEST_F(config_test, set_overrides_file_and_last_set_wins) {
    std::string path = write("s.toml", "[mqtt]\nmax_inflight = 5\nmax_topic_levels = 8\n");
    auto r = run({"-c", path, "--set", "mqtt.max_inflight=6", "--set", "mqtt.max_inflight=7"});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.cfg->limits.max_inflight, 7u);
    EXPECT_EQ(r.cfg->limits.max_topic_levels, 8u);
}

TEST_F(config_test, dedicated_flag_wins_over_set) {
    auto r = run({"--listen", "127.0.0.1:5", "--set", "mqtt.listen=127.0.0.1:6"});
    ASSERT_TRUE(r.cfg.has_value()) << ::testing::PrintToString(r.errors);
    EXPECT_EQ(r.cfg->mqtt_listen.port, 5u);
}

TEST_F(config_test, set_takes_one_value_per_flag) {
    auto r = run({"--set", "mqtt.max_inflight=3", "mqtt.max_topic_levels=4"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 2);
}

// ---- help, version, usage errors

TEST_F(config_test, help_prints_usage_and_exits_zero) {
    std::ostringstream out;
    auto r = run({"--help"}, out);
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.errors, IsEmpty());
    EXPECT_THAT(out.str(), AllOf(HasSubstr("--config"), HasSubstr("--listen"), HasSubstr("--set")));

    std::ostringstream out2;
    auto r2 = run({"-h"}, out2);
    EXPECT_FALSE(r2.cfg.has_value());
    EXPECT_EQ(r2.exit_code, 0);
}

TEST_F(config_test, version_prints_and_exits_zero) {
    std::ostringstream out;
    auto r = run({"--version"}, out);
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.errors, IsEmpty());
    EXPECT_THAT(out.str(), ::testing::StartsWith("ringmq "));
}

TEST_F(config_test, help_does_not_read_the_config_file) {
    auto r = run({"-c", (dir_ / "missing.toml").string(), "--help"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_THAT(r.errors, IsEmpty());
}

TEST_F(config_test, unknown_flag_is_a_usage_error) {
    auto r = run({"--lisen", "1.2.3.4:5"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 2);
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], AllOf(HasSubstr("command line"), HasSubstr("--lisen")));
}

TEST_F(config_test, flag_without_value_is_a_usage_error) {
    auto r = run({"--shards"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_THAT(r.errors, SizeIs(1));
}

// ---- error kinds

TEST_F(config_test, unknown_key_is_named) {
    auto r = load_from_string("[mqtt]\nmax_inflite = 3\n", "ringmq.toml");
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.errors, ElementsAre("ringmq.toml:2:1: mqtt.max_inflite: unknown key"));
}

TEST_F(config_test, unknown_top_level_key_and_section) {
    auto r = load_from_string("verbose = true\n[mqqt]\nlisten = \":1\"\n[mqtt.tls]\ncert = \"x\"\n", "r.toml");
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_THAT(r.errors,
                ::testing::UnorderedElementsAre("r.toml:1:1: verbose: unknown key", "r.toml:2:2: mqqt: unknown section",
                                                "r.toml:5:1: mqtt.tls.cert: unknown key"));
}

TEST_F(config_test, section_that_is_not_a_table) {
    auto r = load_from_string("mqtt = 5\n", "t.toml");
    EXPECT_THAT(r.errors, ElementsAre("t.toml:1:1: mqtt: expected a table, got an integer"));
}

TEST_F(config_test, wrong_type_names_the_expected_type) {
    auto r = load_from_string(R"(
[node]
name = 42
[mqtt]
max_inflight = "32"
keepalive_multiplier = "fast"
allow_anonymous = 1
max_packet_size = 1.5
listen = 1883
[log]
level = ["info"]
)",
                              "w.toml");
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_THAT(r.errors, ::testing::UnorderedElementsAre(
                              "w.toml:3:1: node.name: expected a string, got an integer",
                              "w.toml:5:1: mqtt.max_inflight: expected an integer, got a string",
                              "w.toml:6:1: mqtt.keepalive_multiplier: expected a number, got a string",
                              "w.toml:7:1: mqtt.allow_anonymous: expected a boolean, got an integer",
                              "w.toml:8:1: mqtt.max_packet_size: expected an integer, got a floating-point number",
                              "w.toml:9:1: mqtt.listen: expected a string, got an integer",
                              "w.toml:11:1: log.level: expected a string, got an array"));
}

TEST_F(config_test, out_of_range_gives_bounds_and_value) {
    auto r = load_from_string("[mqtt]\nmax_inflight = 0\n", "ringmq.toml");
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.errors, ElementsAre("ringmq.toml:2:1: mqtt.max_inflight: must be between 1 and 65535, got 0"));
}

TEST_F(config_test, every_range_is_checked) {
    const char* cases[][2] = {
        {"[node]\nshards = 65", "node.shards"},
        {"[node]\nshards = -1", "node.shards"},
        {"[node]\nsends_per_turn = 0", "node.sends_per_turn"},
        {"[node]\nsends_per_turn = 1048577", "node.sends_per_turn"},
        {"[node]\nretained_reads_per_turn = 0", "node.retained_reads_per_turn"},
        {"[node]\nretained_reads_per_turn = 16777217", "node.retained_reads_per_turn"},
        {"[node]\nretained_read_slice = 0", "node.retained_read_slice"},
        {"[node]\nretained_read_slice = 16777217", "node.retained_read_slice"},
        {"[node]\nturn_work_us = -1", "node.turn_work_us"},
        {"[node]\nturn_work_us = 10000001", "node.turn_work_us"},
        {"[node]\nreceive_limit = -1", "node.receive_limit"},
        {"[node]\nreceive_limit = 1073741825", "node.receive_limit"},
        {"[node]\nidle_poll_us = -1", "node.idle_poll_us"},
        {"[node]\nidle_poll_us = 10001", "node.idle_poll_us"},
        {"[node]\nidle_poll_min_batch = -1", "node.idle_poll_min_batch"},
        {"[node]\nidle_poll_min_batch = 65537", "node.idle_poll_min_batch"},
        {"[node]\nidle_poll_min_found = -1", "node.idle_poll_min_found"},
        {"[node]\nidle_poll_min_found = 101", "node.idle_poll_min_found"},
        {"[node]\nwake_batch_us = -1", "node.wake_batch_us"},
        {"[node]\nwake_batch_us = 100001", "node.wake_batch_us"},
        {"[node]\nwake_batch = 1", "node.wake_batch"},
        {"[node]\nwake_batch = 4097", "node.wake_batch"},
        {"[mqtt]\nmax_connections = 0", "mqtt.max_connections"},
        {"[mqtt]\nmax_connections = 4294967296", "mqtt.max_connections"},
        {"[mqtt]\nmax_packet_size = 63", "mqtt.max_packet_size"},
        {"[mqtt]\nmax_packet_size = 268435461", "mqtt.max_packet_size"},
        {"[mqtt]\nmax_client_id_len = 22", "mqtt.max_client_id_len"},
        {"[mqtt]\nmax_topic_levels = 0", "mqtt.max_topic_levels"},
        {"[mqtt]\nmax_topic_levels = 65536", "mqtt.max_topic_levels"},
        {"[mqtt]\nmax_inflight = 65536", "mqtt.max_inflight"},
        {"[mqtt]\nmax_queued_messages = -1", "mqtt.max_queued_messages"},
        {"[mqtt]\nmax_queued_bytes = -1", "mqtt.max_queued_bytes"},
        {"[mqtt]\nmax_sessions = -1", "mqtt.max_sessions"},
        {"[mqtt]\nmax_sessions = 4294967296", "mqtt.max_sessions"},
        {"[mqtt]\nmax_subscriptions = -1", "mqtt.max_subscriptions"},
        {"[mqtt]\nmax_subscriptions = 4294967296", "mqtt.max_subscriptions"},
        {"[mqtt]\nmax_queued_bytes = 1099511627777", "mqtt.max_queued_bytes"},
        {"[mqtt]\npublisher_hold_ms = -1", "mqtt.publisher_hold_ms"},
        {"[mqtt]\npublisher_hold_ms = 3600001", "mqtt.publisher_hold_ms"},
        {"[mqtt]\npublisher_hold_burst = -1", "mqtt.publisher_hold_burst"},
        {"[mqtt]\npublisher_hold_burst = 1001", "mqtt.publisher_hold_burst"},
        {"[mqtt]\nmax_awaiting_rel = 65536", "mqtt.max_awaiting_rel"},
        {"[mqtt]\nmax_outgoing_bytes = 0", "mqtt.max_outgoing_bytes"},
        {"[mqtt]\nmax_outgoing_bytes_total = 1048575", "mqtt.max_outgoing_bytes_total"},
        {"[mqtt]\nmax_outgoing_bytes_total = 17592186044417", "mqtt.max_outgoing_bytes_total"},
        {"[mqtt]\nsend_stall_timeout = 999", "mqtt.send_stall_timeout"},
        {"[mqtt]\nsend_stall_timeout = 86400001", "mqtt.send_stall_timeout"},
        {"[mqtt]\nmax_cross_shard_bytes = 65535", "mqtt.max_cross_shard_bytes"},
        {"[mqtt]\nmax_cross_shard_bytes = 1099511627777", "mqtt.max_cross_shard_bytes"},
        {"[mqtt]\nkeepalive_multiplier = 0.99", "mqtt.keepalive_multiplier"},
        {"[mqtt]\nkeepalive_multiplier = 10.5", "mqtt.keepalive_multiplier"},
        {"[mqtt]\nkeepalive_multiplier = nan", "mqtt.keepalive_multiplier"},
        {"[mqtt]\nkeepalive_multiplier = inf", "mqtt.keepalive_multiplier"},
        {"[mqtt]\nconnect_timeout = 99", "mqtt.connect_timeout"},
        {"[mqtt]\nconnect_timeout = 3600001", "mqtt.connect_timeout"},
        {"[mqtt]\nretry_interval = 0", "mqtt.retry_interval"},
        {"[mqtt]\nmax_retained_messages = -5", "mqtt.max_retained_messages"},
        {"[mqtt]\nmax_retained_payload = 0", "mqtt.max_retained_payload"},
        {"[admin]\nmax_body_bytes = 10", "admin.max_body_bytes"},
        {"[admin]\nidle_timeout = 5", "admin.idle_timeout"},
        {"[admin]\nsend_timeout = 999", "admin.send_timeout"},
        {"[admin]\nrequest_timeout = 999", "admin.request_timeout"},
        {"[admin]\nmax_connections = 0", "admin.max_connections"},
        {"[admin]\nmax_connections = 65537", "admin.max_connections"},
        {"[admin]\nreclaim_after = 99", "admin.reclaim_after"},
        {"[admin]\nreclaim_after = 86400001", "admin.reclaim_after"},
        {"[admin]\npassword_checks_per_second = 0", "admin.password_checks_per_second"},
        {"[mqtt]\nsession_expiry_interval = -1", "mqtt.session_expiry_interval"},
        {"[mqtt]\nsession_expiry_interval = 4294967296", "mqtt.session_expiry_interval"},
        {"[sys]\ninterval = 999", "sys.interval"},
        {"[sys]\ninterval = 86400001", "sys.interval"},
    };
    for (auto& [text, key] : cases) {
        auto r = load_from_string(text, "x.toml");
        EXPECT_FALSE(r.cfg.has_value()) << text;
        ASSERT_THAT(r.errors, SizeIs(1)) << text;
        EXPECT_THAT(r.errors[0], AllOf(::testing::StartsWith(std::string("x.toml:2:1: ") + key + ": "),
                                       HasSubstr("must be between")))
            << text;
    }
}

TEST_F(config_test, queue_size_must_be_a_power_of_two_in_range) {
    for (const char* v : {"1000", "32", "2097152", "0", "-64"}) {
        auto r = load_from_string(std::string("[node]\nsmp_queue_size = ") + v + "\n", "q.toml");
        EXPECT_FALSE(r.cfg.has_value()) << v;
        EXPECT_THAT(r.errors,
                    ElementsAre(std::string("q.toml:2:1: node.smp_queue_size: must be a power of two from 64 to "
                                            "1048576, got ") +
                                v));
    }
    for (uint32_t v : {64u, 1024u, 1048576u}) {
        auto r = load_from_string("[node]\nsmp_queue_size = " + std::to_string(v) + "\n", "q.toml");
        ASSERT_TRUE(r.cfg.has_value()) << v;
        EXPECT_EQ(r.cfg->budgets.smp_queue_size, v);
    }
}

TEST_F(config_test, keepalive_error_shows_float_bounds) {
    auto r = load_from_string("[mqtt]\nkeepalive_multiplier = 0.5\n", "k.toml");
    EXPECT_THAT(r.errors, ElementsAre("k.toml:2:1: mqtt.keepalive_multiplier: must be between 1.0 and 10.0, got 0.5"));
}

TEST_F(config_test, string_values_are_validated) {
    auto r = load_from_string(R"(
[node]
name = "no-at-sign"
[log]
level = "loud"
[admin]
users_file = ""
default_user = ""
default_password = ""
)",
                              "v.toml");
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_THAT(r.errors,
                ::testing::UnorderedElementsAre(
                    AllOf(HasSubstr("v.toml:3:1: node.name: "), HasSubstr("'@'"), HasSubstr("no-at-sign")),
                    "v.toml:5:1: log.level: must be one of debug, info, warn (or warning), error, off, got 'loud'",
                    "v.toml:7:1: admin.users_file: must not be empty",
                    "v.toml:8:1: admin.default_user: must not be empty",
                    "v.toml:9:1: admin.default_password: must not be empty"));
}

TEST_F(config_test, node_name_must_be_utf8) {
    // A level of every $SYS topic: bytes that are not UTF-8 there make PUBLISHes a client must close on [MQTT-1.5.3-1].
    for (const char* bad : {"a\xff\xfe@b", "n@\xc0\xaf", "x\xed\xa0\x80@h"}) {
        auto r = run({"--node-name", bad});
        EXPECT_FALSE(r.cfg.has_value());
        EXPECT_THAT(r.errors, ElementsAre("--node-name: node.name: must be UTF-8 (it is a level of the $SYS topics)"));
    }
    // C1 controls and the line separators: MQTT's topics should not hold them.
    for (const char* bad : {"a\xc2\x85@b", "a@\xe2\x80\xa8", "\xe2\x80\xa9x@b", "a\xc2\x9f@b"}) {
        auto r = run({"--node-name", bad});
        EXPECT_THAT(r.errors, ElementsAre("--node-name: node.name: must not contain control characters or line "
                                          "separators (it is a level of the $SYS topics)"))
            << bad;
    }
    EXPECT_TRUE(run({"--node-name", "a\xc2\xa0\xe2\x80\xa7@b"}).cfg.has_value()); // U+00A0, U+2027: no controls
    auto ok = run({"--node-name", "caf\xc3\xa9@h\xc3\xb4te"});
    ASSERT_TRUE(ok.cfg.has_value());
    EXPECT_EQ(ok.cfg->node_name, "caf\xc3\xa9@h\xc3\xb4te");
}

TEST_F(config_test, a_line_break_in_a_key_or_value_stays_in_one_error_line) {
    auto r = run({"--node-name", "x@y\n2026-12-05T12:00:00.000 [info] main: ringmq ready"});
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], AllOf(HasSubstr("x@y\\x0a2026"), ::testing::Not(HasSubstr("\n"))));
    auto f = load_from_string("\"max\\ninflight\" = 1\n", "nl.toml");
    EXPECT_THAT(f.errors, ElementsAre("nl.toml:1:1: max\\x0ainflight: unknown key"));
}

TEST_F(config_test, an_unknown_argument_is_quoted_escaped) {
    auto r = run({"--bogus\x1b[31m\nX"});
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], AllOf(HasSubstr("--bogus\\x1b[31m\\x0aX"), ::testing::Not(HasSubstr("\n"))));
}

TEST_F(config_test, a_line_break_in_the_config_files_name_stays_in_one_error_line) {
    auto r = run({"-c", "/nonexistent/a\nb.toml"});
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], ::testing::StartsWith("/nonexistent/a\\x0ab.toml: cannot read config file: "));
}

TEST_F(config_test, a_key_with_thousands_of_dotted_parts_is_refused_not_a_crash) {
    // toml++ recursed once per part: 40,000 overflowed the stack (SIGSEGV, no message).
    std::string deep = "[mqtt]\n";
    for (int i = 0; i < 40000; ++i)
        deep += "a.";
    auto r = load_from_string(deep + "b = 1\n", "deep.toml");
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_THAT(r.errors, ElementsAre("deep.toml:2: a key or table header with more than 64 dotted parts (ringmq's "
                                      "have two)"));
    std::string header = "[";
    for (int i = 0; i < 40000; ++i)
        header += "a.";
    auto h = load_from_string(header + "b]\n", "h.toml");
    EXPECT_THAT(h.errors, ElementsAre("h.toml:1: a key or table header with more than 64 dotted parts (ringmq's "
                                      "have two)"));
    // Inside an inline table, or past a quoted part holding '=': counted all the same.
    std::string parts;
    for (int i = 0; i < 100; ++i)
        parts += "a.";
    for (const std::string& text : {"[mqtt]\nx = { " + parts + "b = 1 }\n", "[mqtt]\n\"=\"." + parts + "b = 1\n"}) {
        auto r2 = load_from_string(text, "in.toml");
        EXPECT_THAT(r2.errors, ElementsAre(HasSubstr("in.toml:2: a key or table header with more than 64"))) << text;
    }
    // Dots in strings, comments and values are no key's: a string value, a ruler comment, a multi-line string, floats.
    const std::string dots(100, '.');
    auto v = load_from_string("# " + dots + "\n[node]\nname = \"a" + dots + "@b\" # " + dots +
                                  "\n[admin]\ndefault_password = \"\"\"x\n" + dots +
                                  "\ny\"\"\"\n[mqtt]\n"
                                  "keepalive_multiplier = 1.5\n",
                              "v.toml");
    EXPECT_TRUE(v.cfg.has_value()) << ::testing::PrintToString(v.errors);
    // 64 parts (63 dots) are let through to the checks that name the key.
    std::string most;
    for (int i = 0; i < 63; ++i)
        most += "a.";
    auto m = load_from_string("[mqtt]\n" + most + "b = 1\n", "m.toml");
    EXPECT_THAT(m.errors, ElementsAre(HasSubstr("unknown key")));
}

TEST_F(config_test, digits_past_64_bits_are_not_called_a_string) {
    // TOML cannot take them as an integer, so --set keeps them as a plain string: the error said "got a string".
    auto r = run(
        {"--set", "mqtt.max_inflight=18446744073709551616", "--set", "mqtt.max_queued_messages=-99999999999999999999"});
    EXPECT_THAT(r.errors,
                ::testing::UnorderedElementsAre(
                    "--set mqtt.max_inflight=18446744073709551616: mqtt.max_inflight: expected an integer, got "
                    "18446744073709551616 (past 64 bits)",
                    "--set mqtt.max_queued_messages=-99999999999999999999: mqtt.max_queued_messages: expected an "
                    "integer, got -99999999999999999999 (past 64 bits)"));
    // Digits with a leading zero are no TOML integer, and within 64 bits: a string, as before.
    auto z = run({"--set", "mqtt.max_inflight=010"});
    EXPECT_THAT(z.errors, ElementsAre(HasSubstr("mqtt.max_inflight: expected an integer, got a string")));
    // A TOML string of digits is a string.
    auto q = run({"--set", "mqtt.max_inflight=\"32\""});
    EXPECT_THAT(q.errors, ElementsAre(HasSubstr("mqtt.max_inflight: expected an integer, got a string")));
}

TEST_F(config_test, admin_listen_with_no_admin_is_a_usage_error) {
    // Both at once: the listen address would be ignored without a word.
    auto r = run({"--no-admin", "--admin-listen", "127.0.0.1:0"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 2);
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], AllOf(HasSubstr("--admin-listen"), HasSubstr("--no-admin")));
    // The same pair with the admin listener turned off by --set or a file: the flag was ignored without a word.
    auto s = run({"--set", "admin.enabled=false", "--admin-listen", "127.0.0.1:0"});
    EXPECT_THAT(s.errors, ElementsAre("--admin-listen: admin.listen: an admin listener is asked for, but "
                                      "admin.enabled = false (--set admin.enabled=false): drop one of them"));
    EXPECT_EQ(s.exit_code, 1);
    // Off in a file with a listen address there too is fine: nothing asks for it on the command line.
    EXPECT_TRUE(load_from_string("[admin]\nenabled = false\nlisten = \"127.0.0.1:1\"\n", "a.toml").cfg.has_value());
}

TEST_F(config_test, node_name_shapes) {
    for (const char* bad : {"@host", "name@", "na me@host", "plain", "a@b@", "a@@b"}) {
        auto r = run({"--node-name", bad});
        EXPECT_FALSE(r.cfg.has_value()) << bad;
        ASSERT_THAT(r.errors, SizeIs(1)) << bad;
        EXPECT_THAT(r.errors[0], ::testing::StartsWith("--node-name: node.name: ")) << bad;
    }
    // A level of the $SYS topics: a wildcard or a separator in it would make PUBLISH topics no client may send.
    for (const char* bad : {"a#1@h", "a+@h", "a@h/x", "a/b@h"}) {
        auto r = run({"--node-name", bad});
        EXPECT_FALSE(r.cfg.has_value()) << bad;
        ASSERT_THAT(r.errors, SizeIs(1)) << bad;
        EXPECT_THAT(
            r.errors[0],
            AllOf(::testing::StartsWith("--node-name: node.name: must not contain '/', '+' or '#'"), HasSubstr(bad)));
    }
    auto ok = run({"--node-name", "a@b"});
    ASSERT_TRUE(ok.cfg.has_value());
    EXPECT_EQ(ok.cfg->node_name, "a@b");
    auto dotted = run({"--node-name", "ringmq-2@10.0.0.7"});
    ASSERT_TRUE(dotted.cfg.has_value());
    // At most 255 bytes, an Erlang node name's limit: a 64 KiB name made $SYS topics whose length field wrapped.
    const std::string longest = std::string(253, 'n') + "@h", longer = std::string(254, 'n') + "@h";
    EXPECT_TRUE(run({"--node-name", longest}).cfg.has_value());
    auto r = run({"--node-name", longer});
    ASSERT_THAT(r.errors, ElementsAre("--node-name: node.name: must be at most 255 bytes (it is a level of every $SYS "
                                      "topic), got 256"));
}

TEST_F(config_test, io_uring_kernel_is_auto_or_a_release_from_6_0) {
    for (const char* good : {"auto", "6.0", "6.11", "6.13", "7.2"}) {
        auto r = run({"--set", "node.io_uring_kernel=\"" + std::string(good) + "\""});
        ASSERT_TRUE(r.cfg.has_value()) << good << ": " << (r.errors.empty() ? "" : r.errors[0]);
        EXPECT_EQ(r.cfg->budgets.io_uring_kernel, good);
    }
    for (const char* bad : {"5.19", "6", "6.", ".1", "6.1.2", "six", "", "AUTO", "6.1x", "1000.1", "6.010", "06.1",
                            " 6.1", "+6.1", "6.-1", "6.1 "}) {
        auto r = run({"--set", "node.io_uring_kernel=\"" + std::string(bad) + "\""});
        EXPECT_FALSE(r.cfg.has_value()) << bad;
        ASSERT_THAT(r.errors, SizeIs(1)) << bad;
        EXPECT_THAT(r.errors[0], HasSubstr("node.io_uring_kernel: must be ")) << bad;
        EXPECT_THAT(r.errors[0], HasSubstr(std::string_view(bad) == "5.19" ? "6.0 or newer" : "major.minor")) << bad;
    }
    // Typed bare on the command line it is still the text (a TOML number would make 6.10 the same as 6.1); in a file
    // it must be a string.
    auto bare = run({"--set", "node.io_uring_kernel=6.10"});
    ASSERT_TRUE(bare.cfg.has_value()) << ::testing::PrintToString(bare.errors);
    EXPECT_EQ(bare.cfg->budgets.io_uring_kernel, "6.10");
    auto in_file = load_from_string("[node]\nio_uring_kernel = 6.1\n", "k.toml");
    EXPECT_THAT(in_file.errors, ElementsAre("k.toml:2:1: node.io_uring_kernel: expected a string, got a floating-point "
                                            "number"));
    // Other string keys keep their types: a number is not a node name.
    EXPECT_THAT(run({"--set", "node.name=6.1"}).errors,
                ElementsAre("--set node.name=6.1: node.name: expected a string, got a floating-point number"));
    int major = -1, minor = -1;
    std::string why;
    EXPECT_TRUE(parse_kernel_release("6.12", major, minor, why));
    EXPECT_EQ(major, 6);
    EXPECT_EQ(minor, 12);
    EXPECT_FALSE(parse_kernel_release("auto", major, minor, why));
    EXPECT_EQ(major, 0);
    EXPECT_TRUE(why.empty());
}

TEST_F(config_test, tables_inside_a_section_are_named_whole) {
    auto r = load_from_string("[mqtt]\na.b = 1\n[mqtt.sub]\nx = 2\ny.z = 3\n[mqtt.empty]\n", "t.toml");
    EXPECT_THAT(r.errors, ::testing::UnorderedElementsAre(
                              "t.toml:2:3: mqtt.a.b: unknown key", "t.toml:4:1: mqtt.sub.x: unknown key",
                              "t.toml:5:3: mqtt.sub.y.z: unknown key", "t.toml:6:7: mqtt.empty: unknown section"));
}

TEST_F(config_test, a_table_given_for_a_known_key_is_its_wrong_type) {
    auto r = load_from_string("[mqtt.max_inflight]\nx = 2\n[log]\nlevel.a = 1\n", "t.toml");
    EXPECT_THAT(r.errors,
                ::testing::UnorderedElementsAre("t.toml:1:7: mqtt.max_inflight: expected an integer, got a table",
                                                "t.toml:4:1: log.level: expected a string, got a table"));
}

TEST_F(config_test, default_user_and_password_the_users_file_cannot_hold) {
    // Refused here, before anything listens, and whether or not the users file exists yet.
    for (const char* bad : {"a:b", "a\nb", "tab\there", "del\x7f"}) {
        auto r = run({"--set", std::string("admin.default_user=\"") + bad + "\""});
        ASSERT_THAT(r.errors, SizeIs(1)) << bad;
        EXPECT_THAT(r.errors[0], HasSubstr("admin.default_user: must not contain ':' or control characters")) << bad;
    }
    auto nul = load_from_string("[admin]\ndefault_password = \"pw\\u0000x\"\n", "p.toml");
    EXPECT_THAT(nul.errors, ElementsAre("p.toml:2:1: admin.default_password: must not contain a NUL byte"));
    auto empty = load_from_string("[admin]\ndefault_user = \"\"\n", "u.toml");
    EXPECT_THAT(empty.errors, ElementsAre("u.toml:2:1: admin.default_user: must not be empty"));
    auto ok = run({"--set", "admin.default_user=\"op-1 (ops)\"", "--set", "admin.default_password=\"p:w x\""});
    ASSERT_TRUE(ok.cfg.has_value()) << ::testing::PrintToString(ok.errors);
    EXPECT_EQ(ok.cfg->admin.default_user, "op-1 (ops)");
}

TEST_F(config_test, config_file_must_be_a_regular_file_of_bounded_size) {
    // A FIFO would block start-up for good (nothing writes to it), /dev/zero would grow without end.
    const std::string fifo = (dir_ / "fifo.toml").string();
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    auto r = run({"-c", fifo});
    EXPECT_THAT(r.errors, ElementsAre(fifo + ": cannot read config file: not a regular file"));
    auto z = run({"-c", "/dev/zero"});
    EXPECT_THAT(z.errors, ElementsAre("/dev/zero: cannot read config file: not a regular file"));
    const std::string big = write("big.toml", "# " + std::string((1u << 20) - 2, 'x') + "\n");
    auto b = run({"-c", big});
    EXPECT_THAT(b.errors, ElementsAre(big + ": cannot read config file: larger than 1048576 bytes"));
    const std::string fits = write("fits.toml", "# " + std::string((1u << 20) - 3, 'x') + "\n");
    EXPECT_TRUE(run({"-c", fits}).cfg.has_value());
    // An empty name is named as one.
    auto e = run({"-c", ""});
    ASSERT_THAT(e.errors, SizeIs(1));
    EXPECT_THAT(e.errors[0], ::testing::StartsWith("'': cannot read config file: "));
}

TEST_F(config_test, errors_are_bounded_in_number_and_length) {
    // A file of many wrong keys printed a line for each (1.5 M lines), a long value a line as long.
    std::string many = "[mqtt]\n";
    for (int i = 0; i < 200; ++i)
        many += "unknown_" + std::to_string(i) + " = 1\n";
    auto r = load_from_string(many, "many.toml");
    ASSERT_THAT(r.errors, SizeIs(51));
    EXPECT_EQ(r.errors.back(), "... and 150 more errors");
    // The 50 shown are the file's first 50, in its order (they were the first 50 in the keys' order: unknown_0,
    // unknown_1, unknown_10, unknown_100...).
    for (int i = 0; i < 50; ++i)
        EXPECT_THAT(r.errors[static_cast<size_t>(i)],
                    ::testing::StartsWith(fmt::format("many.toml:{}:1: mqtt.unknown_{}: unknown key", i + 2, i)));
    // Whatever the file is called: the order came from positions parsed back from the text, which a name with ": "
    // in it, or one starting with "--", hid (the keys' order again, until stop 76).
    for (const std::string name : {"dir: x/many.toml", "--many.toml"}) {
        auto named = load_from_string(many, name);
        ASSERT_THAT(named.errors, SizeIs(51));
        for (int i = 0; i < 50; ++i)
            EXPECT_THAT(named.errors[static_cast<size_t>(i)],
                        ::testing::StartsWith(fmt::format("{}:{}:1: mqtt.unknown_{}: unknown", name, i + 2, i)));
    }
    // The command line's come after the file's, whatever their text ends with (a value like a:1:2 is no line 1).
    std::string few = "[mqtt]\n";
    for (int i = 0; i < 49; ++i)
        few += "unknown_" + std::to_string(i) + " = 1\n";
    auto c = run({"-c", write("few.toml", few), "--set", "node.name=a:1:2", "--set", "mqtt.max_inflight=0"});
    ASSERT_THAT(c.errors, SizeIs(51));
    EXPECT_THAT(c.errors[0], ::testing::HasSubstr("few.toml:2:1: mqtt.unknown_0: unknown key"));
    EXPECT_THAT(c.errors[48], ::testing::HasSubstr("few.toml:50:1: mqtt.unknown_48: unknown key"));
    EXPECT_THAT(c.errors[49], ::testing::StartsWith("--set "));
    EXPECT_EQ(c.errors[50], "... and 1 more errors");
    // Each line cut as a log line is (4096 bytes), at a character's boundary, whatever part is long: the value, or
    // a --set argument named in the origin.
    auto l = run({"--listen", "x" + std::string(3000, '1') + std::string(1000, '\xc3') + "\xa9:1883"});
    ASSERT_THAT(l.errors, SizeIs(1));
    EXPECT_LT(l.errors[0].size(), 4200u);
    EXPECT_THAT(l.errors[0], AllOf(::testing::StartsWith("--listen: mqtt.listen: bad endpoint 'x111"),
                                   ::testing::ContainsRegex(" \\[\\.\\.\\. [0-9]+ more bytes\\]$")));
    auto u = run({"--listen", "x" + std::string(300, '1') + [] {
                      std::string e;
                      for (int i = 0; i < 3000; ++i)
                          e += "\xc3\xa9";
                      return e;
                  }() + ":1883"});
    ASSERT_THAT(u.errors, SizeIs(1));
    const std::string& cut = u.errors[0];
    const size_t marker = cut.rfind(" [... ");
    ASSERT_NE(marker, std::string::npos);
    EXPECT_EQ(cut.compare(marker - 2, 2, "\xc3\xa9"), 0) << "cut inside a character";
    auto s = run({"--set", "mqtt.max_inflight=" + std::string(100000, '1')});
    ASSERT_THAT(s.errors, SizeIs(1));
    EXPECT_LT(s.errors[0].size(), 4200u);
}

TEST_F(config_test, a_parse_error_names_the_key_of_its_line) {
    // The parser's own errors name a line and column; the checks' errors name the key, and now these too.
    // The one error a text makes ("" and a failure where it makes another number of them).
    const auto only_error = [&](const std::string& text, const std::string& file) {
        auto r = load_from_string(text, file);
        EXPECT_THAT(r.errors, SizeIs(1)) << text;
        return r.errors.size() == 1 ? r.errors[0] : std::string();
    };
    // That error is at `at` ("file:line:") and names `key`.
    const auto names = [&](const std::string& text, const std::string& at, const std::string& key) {
        EXPECT_THAT(only_error(text, at.substr(0, at.find(':'))),
                    AllOf(::testing::StartsWith(at), HasSubstr(": " + key + ": ")))
            << text;
    };
    names("[mqtt]\nmax_inflight = 18446744073709551616\n", "p.toml:2:", "mqtt.max_inflight");
    names("# x\n[mqtt]\n\n  keepalive_multiplier = 1e400\n", "f.toml:4:", "mqtt.keepalive_multiplier");
    // A line that sets no plain key is left as the parser says it.
    const std::string odd = only_error("[mqtt]\n= 1\n", "o.toml");
    EXPECT_THAT(odd, ::testing::StartsWith("o.toml:2:"));
    EXPECT_THAT(odd, ::testing::Not(HasSubstr("mqtt.")));
    // The parser says which key a line sets: a header inside a multi-line string is none, a quoted one is one, a line
    // inside a multi-line string or array sets none.
    names("[node]\nname = \"\"\"\n[mqtt]\n\"\"\"\nx = 99999999999999999999\n", "s.toml:5:", "node.x");
    names("[\"mqtt\"]\nmax_inflight = 99999999999999999999\n", "q.toml:2:", "mqtt.max_inflight");
    for (const char* text :
         {"[node]\nname = \"\"\"\na = \\q\n\"\"\"\n", "[mqtt]\nlisten = [\n 1,\n max_inflight = 3\n]\n"})
        EXPECT_THAT(only_error(text, "n.toml"), ::testing::Not(::testing::ContainsRegex(": (node|mqtt)\\.[a-z_]+: ")))
            << text;
    // A key set twice: the parser refuses the second, whose line still sets it (the copy with its value replaced was
    // refused as well, and the error named no key). Under the first header and under a later one alike.
    names("[mqtt]\nmax_inflight = 5\nmax_inflight = 6\n", "d.toml:3:", "mqtt.max_inflight");
    names("x = 1\n[log]\nlevel = \"info\"\n[node]\nname = \"a@b\"\nname = \"c@d\"\n", "t.toml:6:", "node.name");
    // A quoted or dotted key set twice is left as the parser says it (its name under the table is not the line's).
    const std::string dotted = only_error("mqtt.max_inflight = 5\nmqtt.max_inflight = 6\n", "m.toml");
    EXPECT_THAT(dotted, ::testing::StartsWith("m.toml:2:"));
    EXPECT_THAT(dotted, ::testing::Not(HasSubstr("probe")));
    // --set names its key in its origin; a number past a double's range is said to be one, not "a string".
    auto s = run({"--set", "mqtt.keepalive_multiplier=1e400"});
    EXPECT_THAT(s.errors, ElementsAre("--set mqtt.keepalive_multiplier=1e400: mqtt.keepalive_multiplier: expected a "
                                      "number, got 1e400 (out of range)"));
}

TEST_F(config_test, bad_endpoint_in_file) {
    auto r = load_from_string("[mqtt]\nlisten = \"localhost:1883\"\n[admin]\nlisten = \"0.0.0.0:70000\"\n", "e.toml");
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_THAT(r.errors, SizeIs(2));
    EXPECT_THAT(r.errors,
                Contains(AllOf(::testing::StartsWith("e.toml:2:1: mqtt.listen: bad endpoint 'localhost:1883': "),
                               HasSubstr("IPv4"))));
    EXPECT_THAT(r.errors,
                Contains(AllOf(::testing::StartsWith("e.toml:4:1: admin.listen: bad endpoint '0.0.0.0:70000'"),
                               HasSubstr("between 0 and 65535"))));
}

TEST_F(config_test, parse_endpoint_accepts) {
    struct {
        const char* text;
        endpoint want;
    } cases[] = {
        {"0.0.0.0:1883", {"0.0.0.0", 1883}}, {"127.0.0.1:0", {"127.0.0.1", 0}}, {"[::1]:1883", {"::1", 1883}},
        {":1883", {"0.0.0.0", 1883}},        {"[::]:65535", {"::", 65535}},     {"10.1.2.3:00080", {"10.1.2.3", 80}},
    };
    for (auto& c : cases) {
        endpoint ep{"junk", 9};
        std::string why;
        EXPECT_TRUE(parse_endpoint(c.text, ep, why)) << c.text << ": " << why;
        EXPECT_EQ(ep, c.want) << c.text;
    }
}

TEST_F(config_test, parse_endpoint_rejects) {
    const char* cases[] = {
        "",           "1883",           "0.0.0.0",    "0.0.0.0:",    "0.0.0.0:65536", "0.0.0.0:-1",
        "0.0.0.0:+1", "0.0.0.0:1x",     "0.0.0.0:1 ", "::1:1883",    "[::1]1883",     "[::1:1883",
        "[]:1883",    "[1.2.3.4]:1883", "1.2.3:1883", "256.0.0.1:1", "host:1883",     "0.0.0.0:99999999999999999999"};
    for (const char* text : cases) {
        endpoint ep;
        std::string why;
        EXPECT_FALSE(parse_endpoint(text, ep, why)) << "'" << text << "'";
        EXPECT_FALSE(why.empty()) << text;
    }
}

TEST_F(config_test, endpoint_to_string_round_trips) {
    for (const char* text : {"0.0.0.0:1883", "[::1]:8080", "127.0.0.1:0"}) {
        endpoint ep;
        std::string why;
        ASSERT_TRUE(parse_endpoint(text, ep, why));
        EXPECT_EQ(to_string(ep), text);
    }
}

TEST_F(config_test, syntax_error_reports_line_and_column) {
    std::string path = write("syntax.toml", "[mqtt]\nmax_inflight = 3\nlisten = \"0.0.0.0:1883\n");
    auto r = run({"-c", path});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 1);
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], ::testing::MatchesRegex(path + ":3:[0-9]+: .+"));

    auto s = load_from_string("[mqtt]\n\nmax_inflight = = 3\n", "str.toml");
    ASSERT_THAT(s.errors, SizeIs(1));
    EXPECT_THAT(s.errors[0], ::testing::MatchesRegex("str\\.toml:3:[0-9]+: .+"));
}

TEST_F(config_test, duplicate_key_is_a_syntax_error) {
    auto r = load_from_string("[mqtt]\nmax_inflight = 3\nmax_inflight = 4\n", "dup.toml");
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], ::testing::StartsWith("dup.toml:3:"));
}

TEST_F(config_test, missing_file_is_an_error) {
    std::string path = (dir_ / "nope.toml").string();
    auto r = run({"-c", path});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 1);
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], AllOf(::testing::StartsWith(path + ": "), HasSubstr("No such file")));
}

TEST_F(config_test, directory_as_file_is_an_error) {
    auto r = run({"-c", dir_.string()});
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], ::testing::StartsWith(dir_.string() + ": "));
}

TEST_F(config_test, several_errors_reported_together) {
    std::string path = write("many.toml", R"(
[node]
shards = 100
[mqtt]
max_inflite = 3
max_inflight = 0
listen = "1.2.3.4"
allow_anonymous = "yes"
[sys]
interval = 5
)");
    auto r = run({"-c", path, "--set", "mqtt.max_topic_levels=0", "--set", "admin.bogus=1", "--log-level", "chatty",
                  "--admin-listen", "[::1]:99999", "--shards", "many"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.errors,
                ::testing::UnorderedElementsAre(
                    // node.shards from the file is replaced by --shards, which is itself bad
                    "--shards: node.shards: expected an integer, got 'many'",
                    path + ":5:1: mqtt.max_inflite: unknown key",
                    path + ":6:1: mqtt.max_inflight: must be between 1 and 65535, got 0",
                    AllOf(::testing::StartsWith(path + ":7:1: mqtt.listen: bad endpoint '1.2.3.4': ")),
                    path + ":8:1: mqtt.allow_anonymous: expected a boolean, got a string",
                    path + ":10:1: sys.interval: must be between 1000 and 86400000, got 5",
                    "--set mqtt.max_topic_levels=0: mqtt.max_topic_levels: must be between 1 and 65535, got 0",
                    "--set admin.bogus=1: admin.bogus: unknown key",
                    "--log-level: log.level: must be one of debug, info, warn (or warning), error, off, got 'chatty'",
                    AllOf(::testing::StartsWith("--admin-listen: admin.listen: bad endpoint '[::1]:99999': "))));
    EXPECT_THAT(r.warnings, ElementsAre(path + ":3:1: node.shards: must be between 0 and 63, got 100 (not in force: a "
                                               "later setting replaces it)"));
}

TEST_F(config_test, flag_errors_are_reported_with_a_syntax_error) {
    std::string path = write("broken.toml", "[mqtt\n");
    auto r = run({"-c", path, "--shards", "64"});
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_THAT(r.errors, SizeIs(2));
    EXPECT_THAT(r.errors[0], ::testing::StartsWith(path + ":1:"));
    EXPECT_EQ(r.errors[1], "--shards: node.shards: must be between 0 and 63, got 64");
}

TEST_F(config_test, set_errors) {
    auto r = run({"--set", "noequals", "--set", "=5", "--set", "mqtt.max_inflight=abc", "--set", "mqtt=1"});
    EXPECT_FALSE(r.cfg.has_value());
    EXPECT_THAT(r.errors, ::testing::UnorderedElementsAre(
                              AllOf(::testing::StartsWith("--set: expected KEY=VALUE"), HasSubstr("noequals")),
                              AllOf(::testing::StartsWith("--set: expected KEY=VALUE"), HasSubstr("=5")),
                              "--set mqtt.max_inflight=abc: mqtt.max_inflight: expected an integer, got a string",
                              "--set mqtt=1: mqtt: unknown key"));
}

TEST_F(config_test, set_hides_the_default_password_and_escapes_a_keyless_argument) {
    // A numeric password parses as a TOML integer: the error names the key, never the value.
    auto r = run({"--set", "admin.default_password=123456", "--set", "=x\ny"});
    EXPECT_THAT(r.errors,
                ::testing::UnorderedElementsAre(
                    "--set admin.default_password=(not shown): admin.default_password: expected a string, got "
                    "an integer",
                    "--set: expected KEY=VALUE (like mqtt.max_inflight=10), got '=x\\x0ay'"));
    auto shadowed = run({"--set", "admin.default_password=654321", "--set", "admin.default_password=\"ok\""});
    ASSERT_TRUE(shadowed.cfg.has_value());
    ASSERT_THAT(shadowed.warnings, SizeIs(1));
    EXPECT_THAT(shadowed.warnings[0], ::testing::Not(HasSubstr("654321")));
}

TEST_F(config_test, set_value_cannot_smuggle_extra_keys) {
    auto r = run({"--set", "mqtt.max_inflight=3\nmax_topic_levels = 0"});
    EXPECT_FALSE(r.cfg.has_value());
    // The argument is shown escaped: its newline does not break the message in two.
    EXPECT_THAT(r.errors, ElementsAre("--set mqtt.max_inflight=3\\x0amax_topic_levels = 0: mqtt.max_inflight: "
                                      "expected an integer, got a string"));
}

TEST_F(config_test, admin_and_mqtt_on_the_same_port) {
    auto r = run({"--listen", "0.0.0.0:8080"});
    EXPECT_FALSE(r.cfg.has_value());
    ASSERT_THAT(r.errors, SizeIs(1));
    EXPECT_THAT(r.errors[0], ::testing::StartsWith("--listen: mqtt.listen: "));

    auto r2 = run({"--listen", "127.0.0.1:7000", "--admin-listen", "127.0.0.1:7000"});
    ASSERT_THAT(r2.errors, SizeIs(1));
    EXPECT_THAT(r2.errors[0], ::testing::StartsWith("--admin-listen: admin.listen: "));

    // With admin.listen at its default, the message says so: the operator did not write 0.0.0.0:8080.
    auto d = run({"--listen", "127.0.0.1:8080"});
    EXPECT_THAT(d.errors, ElementsAre("--listen: mqtt.listen: mqtt.listen 127.0.0.1:8080 overlaps admin.listen "
                                      "0.0.0.0:8080 (its default) (admin and MQTT listeners need different ports; "
                                      "move one, or --no-admin)"));
    // From a file, the blamed key is named at its line, and the other key's setting too.
    auto f = load_from_string("[admin]\nlisten = \"127.0.0.1:7000\"\n[mqtt]\nlisten = \"127.0.0.1:7000\"\n", "l.toml");
    EXPECT_THAT(f.errors, ElementsAre("l.toml:2:1: admin.listen: admin.listen 127.0.0.1:7000 overlaps mqtt.listen "
                                      "127.0.0.1:7000 (admin and MQTT listeners need different ports; move one, or "
                                      "--no-admin)"));
    // IPv6's :: takes the IPv4 addresses too; ::1 and an IPv4 wildcard do not collide.
    EXPECT_FALSE(run({"--listen", "[::]:7000", "--admin-listen", "127.0.0.1:7000"}).cfg.has_value());
    EXPECT_FALSE(run({"--listen", "[::1]:7000", "--admin-listen", "[::1]:7000"}).cfg.has_value());
    EXPECT_TRUE(run({"--listen", "[::1]:7000", "--admin-listen", "0.0.0.0:7000"}).cfg.has_value());
    // Compared as addresses, whatever way they are written: "[::0]" passed against 127.0.0.1, and the MQTT listener
    // was bound on every address before the admin one failed.
    EXPECT_FALSE(run({"--listen", "[::0]:7000", "--admin-listen", "127.0.0.1:7000"}).cfg.has_value());
    EXPECT_FALSE(run({"--listen", "[0:0:0:0:0:0:0:1]:7000", "--admin-listen", "[::1]:7000"}).cfg.has_value());
    EXPECT_FALSE(run({"--listen", "[::ffff:127.0.0.1]:7000", "--admin-listen", "0.0.0.0:7000"}).cfg.has_value());
    EXPECT_TRUE(run({"--listen", "[::2]:7000", "--admin-listen", "[::1]:7000"}).cfg.has_value());
    // Disabled admin, distinct hosts, or port 0 (ephemeral, as the integration tests use) are all fine.
    EXPECT_TRUE(run({"--listen", "0.0.0.0:8080", "--no-admin"}).cfg.has_value());
    EXPECT_TRUE(run({"--listen", "127.0.0.1:7000", "--admin-listen", "127.0.0.2:7000"}).cfg.has_value());
    EXPECT_TRUE(run({"--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}).cfg.has_value());
}

TEST_F(config_test, shards_flag_range) {
    EXPECT_EQ(run({"--shards", "63"}).cfg->shards, 63u);
    EXPECT_EQ(run({"--shards", "0"}).cfg->shards, expected_auto_shards());
    auto r = run({"--shards", "64"});
    EXPECT_THAT(r.errors, ElementsAre("--shards: node.shards: must be between 0 and 63, got 64"));
}

// ---- describe

TEST_F(config_test, describe_is_one_line_with_the_essentials) {
    auto r = load_from_string(k_full_toml, "full.toml");
    ASSERT_TRUE(r.cfg.has_value());
    std::string d = describe(*r.cfg);
    EXPECT_EQ(d.find('\n'), std::string::npos);
    EXPECT_THAT(d, AllOf(HasSubstr("node=edge@10.0.0.7"), HasSubstr("shards=3"), HasSubstr("log=debug"),
                         HasSubstr("mqtt=127.0.0.1:2883"), HasSubstr("admin=off"), HasSubstr("sys=off"),
                         HasSubstr("max_inflight=10")));

    auto def = run({});
    ASSERT_TRUE(def.cfg.has_value());
    EXPECT_THAT(describe(*def.cfg),
                AllOf(HasSubstr("admin=0.0.0.0:8080"), HasSubstr("sys=60000ms"), HasSubstr("config=(none)")));
}

} // namespace
} // namespace ringmq::config::test
