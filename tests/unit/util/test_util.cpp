#include "util/hash.hpp"
#include "util/log.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace ringmq::test {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// fnv1a64: part of the external contract (operators compute a client's home shard), so pin exact values.

// Usable at compile time.
static_assert(fnv1a64("") == 0xcbf29ce484222325ULL);
static_assert(fnv1a64("a") == 0xaf63dc4c8601ec8cULL);

TEST(fnv1a64, reference_vectors) {
    // Published FNV-1a 64-bit test vectors.
    EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ULL);
    EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cULL);
    EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ULL);
}

TEST(fnv1a64, more_pinned_values) {
    EXPECT_EQ(fnv1a64("client-1"), 0xb61de2d208d36e08ULL);
    EXPECT_EQ(fnv1a64("ringmq"), 0x5d24f0d89caec579ULL);
}

TEST(fnv1a64, bytes_are_unsigned_and_embedded_nul_counts) {
    // A high byte must be xor-ed in as 0..255, not sign-extended.
    const std::string high("\xff", 1);
    EXPECT_EQ(fnv1a64(high), (0xcbf29ce484222325ULL ^ 0xffULL) * 0x100000001b3ULL);
    const std::string with_nul("a\0b", 3);
    EXPECT_NE(fnv1a64(with_nul), fnv1a64("ab"));
    EXPECT_NE(fnv1a64(with_nul), fnv1a64("a"));
    EXPECT_EQ(fnv1a64(std::string_view("abc", 2)), fnv1a64("ab")) << "hashes exactly the view's bytes";
}

// ---------------------------------------------------------------------------------------------------------------
// home_shard

TEST(home_shard, zero_or_one_shard_is_always_shard_zero) {
    for (std::string_view key : {"", "a", "client-1", "ringmq", "zzzzzzzzzzzzzzzzzzzz"}) {
        EXPECT_EQ(home_shard(key, 1), 0u) << key;
        EXPECT_EQ(home_shard(key, 0), 0u) << key;
    }
}

TEST(home_shard, pinned_values) {
    EXPECT_EQ(home_shard("a", 2), 0u);
    EXPECT_EQ(home_shard("a", 3), 1u);
    EXPECT_EQ(home_shard("a", 8), 4u);
    EXPECT_EQ(home_shard("", 8), 5u);
    EXPECT_EQ(home_shard("ringmq", 8), 1u);
    EXPECT_EQ(home_shard("ringmq", 64), 57u);
    EXPECT_EQ(home_shard("client-1", 64), 8u);
}

TEST(home_shard, is_hash_modulo_shards_and_in_range) {
    for (unsigned shards = 2; shards <= 64; ++shards) {
        for (int i = 0; i < 200; ++i) {
            const std::string key = "client-" + std::to_string(i);
            const unsigned s = home_shard(key, shards);
            ASSERT_LT(s, shards) << key;
            ASSERT_EQ(s, fnv1a64(key) % shards) << key << " over " << shards;
        }
    }
}

TEST(home_shard, spreads_keys_over_all_shards) {
    constexpr unsigned k_shards = 8;
    constexpr int k_keys = 8000;
    std::vector<int> hits(k_shards, 0);
    for (int i = 0; i < k_keys; ++i)
        ++hits.at(home_shard("c" + std::to_string(i), k_shards));
    for (unsigned s = 0; s < k_shards; ++s) {
        // Expected 1000 each; a usable hash stays well inside +-20%.
        EXPECT_GT(hits[s], 800) << "shard " << s;
        EXPECT_LT(hits[s], 1200) << "shard " << s;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// log::append_escaped: nothing a client sends can start a line of the log of its own.

std::string escaped(std::string_view msg) {
    fmt::memory_buffer b;
    log::append_escaped(b, msg);
    return fmt::to_string(b);
}

TEST(log_escape, control_characters_become_hex_and_nothing_else_changes) {
    EXPECT_EQ(escaped(""), "");
    EXPECT_EQ(escaped("plain topic/a+b#"), "plain topic/a+b#");
    // A filter that tries to start a forged line of its own.
    EXPECT_EQ(escaped("a/#/b\n2026-12-01T00:00:00.000 [error] shard0: forged"),
              "a/#/b\\x0a2026-12-01T00:00:00.000 [error] shard0: forged");
    EXPECT_EQ(escaped("\r\t\x1b[31m\x7f"), "\\x0d\\x09\\x1b[31m\\x7f");
    EXPECT_EQ(escaped(std::string_view("a\0b", 3)), "a\\x00b");
    EXPECT_EQ(escaped("\x01"), "\\x01");
    EXPECT_EQ(escaped("\x1f "), "\\x1f ");
    // A backslash is escaped too, so the text \x0a a client sent cannot pass for an escaped line break.
    EXPECT_EQ(escaped("a\\x0a"), "a\\x5cx0a");
    // UTF-8 stays as it is (bytes >= 0x80), except the C1 controls and the Unicode line and paragraph separators.
    EXPECT_EQ(escaped("caf\xc3\xa9 \xe2\x82\xac"), "caf\xc3\xa9 \xe2\x82\xac");
    EXPECT_EQ(escaped("a\xc2\x85"
                      "b\xc2\x9b"
                      "c\xc2\xa0"),
              "a\\xc2\\x85b\\xc2\\x9bc\xc2\xa0"); // NEL, CSI; NBSP kept
    EXPECT_EQ(escaped("x\xe2\x80\xa8y\xe2\x80\xa9z\xe2\x80\xa7"), "x\\xe2\\x80\\xa8y\\xe2\\x80\\xa9z\xe2\x80\xa7");
    // A sequence cut short at the end of the message is written as it is.
    EXPECT_EQ(escaped("end\xc2"), "end\xc2");
    EXPECT_EQ(escaped("end\xe2\x80"), "end\xe2\x80");
}

std::string message(std::string_view msg) {
    fmt::memory_buffer b;
    log::append_message(b, msg);
    return fmt::to_string(b);
}

TEST(log_message, a_long_message_is_cut_and_says_how_much_is_left_out) {
    const std::string at_limit(log::max_message_bytes, 'a');
    EXPECT_EQ(message(at_limit), at_limit);
    EXPECT_EQ(message(at_limit + "bc"), at_limit + " [... 2 more bytes]");
    EXPECT_EQ(message(std::string(65535, 'i')), std::string(log::max_message_bytes, 'i') + " [... 61439 more bytes]");
    // Not cut inside a UTF-8 sequence: the 2-byte e-acute straddling the limit goes whole into the rest.
    const std::string before(log::max_message_bytes - 1, 'a');
    EXPECT_EQ(message(before + "\xc3\xa9z"), before + " [... 3 more bytes]");
    // The part kept is escaped like any message.
    EXPECT_EQ(message(std::string(5000, '\n')).substr(0, 8), "\\x0a\\x0a");
    EXPECT_EQ(message(std::string(5000, '\n')).size(),
              4 * log::max_message_bytes + std::string(" [... 904 more bytes]").size());
}

// ---------------------------------------------------------------------------------------------------------------
// log::at_doubling: the 1st, 2nd, 4th, 8th... occurrence is logged.

TEST(log_at_doubling, says_yes_at_powers_of_two_only) {
    uint64_t n = 0;
    std::vector<uint64_t> logged;
    for (int i = 0; i < 100; ++i)
        if (log::at_doubling(n)) logged.push_back(n);
    EXPECT_EQ(n, 100u);
    EXPECT_EQ(logged, (std::vector<uint64_t>{1, 2, 4, 8, 16, 32, 64}));
}

// ---------------------------------------------------------------------------------------------------------------
// log::parse_level

TEST(log_line_budget, lets_through_per_second_and_counts_what_it_holds_back) {
    log::line_budget b(3);
    uint64_t held = 99;
    int allowed = 0;
    for (int i = 0; i < 10; ++i)
        if (b.allow(1000, held)) ++allowed;
    EXPECT_EQ(allowed, 3);
    EXPECT_EQ(held, 0u) << "nothing was held back before the first three";
    EXPECT_EQ(b.take_held(1999), 0u) << "the window is not over";
    ASSERT_TRUE(b.allow(2000, held)) << "a new second";
    EXPECT_EQ(held, 7u) << "the next line let through says how many were held back";
    for (int i = 0; i < 5; ++i)
        b.allow(2001, held);
    EXPECT_EQ(b.take_held(2500), 0u);
    EXPECT_EQ(b.take_held(3000), 3u) << "a flood that ended is summed up once";
    EXPECT_EQ(b.take_held(4000), 0u);
    ASSERT_TRUE(b.allow(5000, held));
    EXPECT_EQ(held, 0u) << "what take_held reported is not reported again";
}

TEST(log_parse_level, accepts_every_level_name) {
    const std::pair<std::string_view, log::level> cases[] = {
        {"debug", log::level::debug}, {"info", log::level::info}, {"warn", log::level::warn},
        {"error", log::level::error}, {"off", log::level::off},   {"warning", log::level::warn},
    };
    for (const auto& [name, expected] : cases) {
        // Start from a value different from the expected one so a parse that does not write is caught.
        log::level out = expected == log::level::off ? log::level::debug : log::level::off;
        EXPECT_TRUE(log::parse_level(name, out)) << name;
        EXPECT_EQ(out, expected) << name;
    }
}

TEST(log_parse_level, rejects_unknown_names_and_leaves_output_alone) {
    using namespace std::string_view_literals;
    const std::string_view bad_names[] = {"",      "DEBUG", "Info", "warn ",    " warn", "err",     "trace",
                                          "fatal", "none",  "0",    "warnings", "offf",  "info\0"sv};
    for (std::string_view bad : bad_names) {
        log::level out = log::level::error;
        EXPECT_FALSE(log::parse_level(bad, out)) << "'" << bad << "'";
        EXPECT_EQ(out, log::level::error) << "'" << bad << "'";
    }
}

TEST(log_level, set_and_current_round_trip) {
    const log::level saved = log::current_level();
    for (log::level l : {log::level::debug, log::level::info, log::level::warn, log::level::error, log::level::off}) {
        log::set_level(l);
        EXPECT_EQ(log::current_level(), l);
    }
    log::set_level(saved);
}

// log::start_writer: a stderr nobody reads holds up no caller for long. In a child process (the writer is the
// process's own): stderr is a 4 KiB pipe the parent does not read while the child logs 3000 numbered lines of about
// 200 bytes; every call must return (the child says so on a second pipe: info lines are not waited for), and once the
// parent reads, the lines come whole and in order, and those missing are counted, exactly, by the notices that stand
// where they would have been.
TEST(log_output, a_pipe_nobody_reads_holds_up_no_writer_and_the_dropped_lines_are_counted) {
    constexpr int lines = 3000;
    int out[2], done[2];
    ASSERT_EQ(::pipe(out), 0);
    ASSERT_EQ(::pipe(done), 0);
    ASSERT_GE(::fcntl(out[1], F_SETPIPE_SZ, 4096), 4096);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        ::dup2(out[1], 2);
        ::close(out[1]);
        ::close(done[0]);
        log::start_writer();
        // While the pipe takes them, a warning is written before log::write returns (read here at once, without
        // waiting; the writer is another thread).
        log::write(log::level::warn, "before the flood");
        // (Polled, not set O_NONBLOCK: the read end's description is the parent's too.)
        pollfd ready{out[0], POLLIN, 0};
        char first[256];
        const ssize_t got = ::poll(&ready, 1, 0) == 1 ? ::read(out[0], first, sizeof first) : 0;
        if (got <= 0 ||
            std::string_view(first, static_cast<size_t>(got)).find("before the flood\n") == std::string_view::npos)
            ::_exit(5);
        ::close(out[0]);
        for (int i = 0; i < lines; ++i)
            log::write(log::level::info, fmt::format("line {:04} {}", i, std::string(180, 'p')));
        if (::write(done[1], "d", 1) != 1) ::_exit(4);
        ::_exit(log::flush(10000) ? 0 : 3);
    }
    ::close(out[1]);
    ::close(done[1]);
    pollfd p{done[0], POLLIN, 0};
    const bool returned = ::poll(&p, 1, 10000) == 1;
    std::string text;
    char buf[65536];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;)
        text.append(buf, static_cast<size_t>(n));
    int status = 0;
    ::waitpid(pid, &status, 0);
    ::close(out[0]);
    ::close(done[0]);
    ASSERT_TRUE(returned) << "a log call waited for the pipe's reader";
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    const std::regex line_re(R"(^\d{4}-\d\d-\d\dT[\d:.]{12} \[info\] main: line (\d{4}) p{180}$)");
    const std::regex note_re(
        R"(^\d{4}-\d\d-\d\dT[\d:.]{12} \[warn\] main: (\d+) log lines dropped: stderr did not take them .*$)");
    // Each notice stands where the lines it counts would have been: the next line is the one after them.
    int next = 0;
    int dropped = 0;
    int notices = 0;
    size_t start = 0;
    for (size_t end; (end = text.find('\n', start)) != std::string::npos; start = end + 1) {
        const std::string line = text.substr(start, end - start);
        std::smatch m;
        if (std::regex_match(line, m, line_re)) {
            EXPECT_EQ(std::stoi(m[1].str()), next) << "a line missing, counted by no notice, or out of order";
            next = std::stoi(m[1].str()) + 1;
        } else if (std::regex_match(line, m, note_re)) {
            ++notices;
            dropped += std::stoi(m[1].str());
            next += std::stoi(m[1].str());
        } else {
            ADD_FAILURE() << "not a whole line: " << line.substr(0, 120);
        }
    }
    EXPECT_EQ(start, text.size()) << "the output ends inside a line";
    EXPECT_EQ(next, lines);          // every line written or counted in a notice
    EXPECT_GE(notices, 1);           // the memory's 256 KiB did not take the rest
    EXPECT_LT(dropped, lines - 100); // what the pipe and the memory took was written
}

} // namespace
} // namespace ringmq::test
