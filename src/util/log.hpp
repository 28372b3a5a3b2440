#pragma once
// Process-wide leveled logging to stderr. Safe from any thread: each line is formatted into a local buffer and
// written whole under one lock, so lines from different shards never interleave (and, after start_writer, no thread
// waits long for a reader that does not read). Control characters in a message are
// written as \xNN (append_escaped): messages quote what clients sent (topics, filters, client ids, user names), which
// MQTT lets carry line breaks, and a client must not be able to forge log lines or drive a terminal.
#include <fmt/format.h>

#include <bit>
#include <cstdint>
#include <string_view>

namespace ringmq::log {

enum class level : int { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

void set_level(level l);
level current_level();
bool parse_level(std::string_view s, level& out);
void set_shard_tag(int shard); // per-thread tag printed in each line; -1 = main, -2 = admin
// From here on, unless stderr is a regular file or /dev/null (which never wait for a reader), a thread of the log's
// own writes the lines: a caller of a warning or an error waits for it to be written, a stderr that stops taking them
// (its reader stuck) holding it up 100 ms at most, after which lines wait in memory (up to 256 KiB besides what the
// writer is writing, 64 KiB more for error lines), past which they are dropped and counted, and a line says how many.
void start_writer();
// Waits up to timeout_ms for the lines waiting in memory to be written (before the process exits); false if some are
// still waiting.
bool flush(int timeout_ms);
void write(level l, std::string_view msg);
// A line whose message the caller has escaped whole (append_escaped) already, written as it is: such text escaped
// again would show each backslash as \x5c. For the configuration's messages, made escaped for stderr before the log
// is set up.
void write_escaped(level l, std::string_view msg);
// Appends msg to out with each byte below 0x20, 0x7f and the backslash as \xNN (lowercase hex), and so the UTF-8 of
// the C1 controls (U+0080..U+009F, NEL and CSI among them) and of U+2028/U+2029 (line and paragraph separators, line
// breaks to some readers); other bytes, UTF-8 included, as they are.
void append_escaped(fmt::memory_buffer& out, std::string_view msg);
std::string escaped(std::string_view text); // append_escaped into a new string
// What write() puts after a line's prefix: msg escaped, its first max_message_bytes only (cut at a UTF-8 boundary) and
// then " [... N more bytes]". A client id, topic or filter may be 64 KiB; one line per refused connection stays short.
inline constexpr size_t max_message_bytes = 4096;
void append_message(fmt::memory_buffer& out, std::string_view msg);
// Text escaped already (append_escaped), cut as append_message cuts (nor inside one of its \xNN): the configuration's
// errors, printed before the log is set up.
std::string cut_escaped(std::string_view text);

// Counts one more occurrence of something a client can repeat without bound (a refusal, a drop) and says whether to
// log this one: the 1st, 2nd, 4th, 8th... The log then shows that it happens and how often, and a flood of it is a
// handful of lines.
inline bool at_doubling(uint64_t& count) { return std::has_single_bit(++count); }

// Lets through at most `per_second` lines a second of a kind each connection can cause once (a refused CONNECT, a
// protocol error): a client reconnecting in a loop would otherwise write thousands of lines a second, one per
// connection, which at_doubling cannot count as the connections differ. Counts what it holds back, for the next line
// let through (or take_held) to say. One per shard, used on its thread.
class line_budget {
public:
    explicit line_budget(uint32_t per_second) : per_second_(per_second) {}
    // Whether a line may be written at now_ms; when it may, held = the lines held back before it (then reset).
    bool allow(int64_t now_ms, uint64_t& held) {
        if (now_ms - window_ms_ >= 1000 || now_ms < window_ms_) {
            window_ms_ = now_ms;
            used_ = 0;
        }
        if (used_ >= per_second_) {
            ++held_;
            return false;
        }
        ++used_;
        held = held_;
        held_ = 0;
        return true;
    }
    // The lines held back and not yet reported, once a second has passed since the window they fell in (for a
    // periodic summary after a flood ends); 0 otherwise.
    uint64_t take_held(int64_t now_ms) {
        if (held_ == 0 || now_ms - window_ms_ < 1000) return 0;
        const uint64_t n = held_;
        held_ = 0;
        return n;
    }
    uint32_t per_second() const { return per_second_; }

private:
    uint32_t per_second_;
    uint32_t used_ = 0;
    int64_t window_ms_ = INT64_MIN / 2;
    uint64_t held_ = 0;
};

template <typename... Args> void debug(fmt::format_string<Args...> f, Args&&... args) {
    if (current_level() <= level::debug) write(level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args> void info(fmt::format_string<Args...> f, Args&&... args) {
    if (current_level() <= level::info) write(level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args> void warn(fmt::format_string<Args...> f, Args&&... args) {
    if (current_level() <= level::warn) write(level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args> void error(fmt::format_string<Args...> f, Args&&... args) {
    if (current_level() <= level::error) write(level::error, fmt::format(f, std::forward<Args>(args)...));
}
// An error line written whatever log.level says: why the process cannot start or must stop. With log.level = "off"
// a broker that exits 1 would otherwise say nothing at all.
template <typename... Args> void fatal(fmt::format_string<Args...> f, Args&&... args) {
    write(level::error, fmt::format(f, std::forward<Args>(args)...));
}

} // namespace ringmq::log
