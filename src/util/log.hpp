#pragma once
// Process-wide leveled logging to stderr. Safe from any thread: each line is formatted into a local buffer and
// written with one write(2), so lines from different shards never interleave. Control characters in a message are
// written as \xNN: messages quote what clients sent (topics, filters, client ids, user names), which MQTT lets
// carry line breaks, and a client must not be able to forge log lines.
#include <fmt/format.h>

#include <string_view>

namespace ringmq::log {

enum class level : int { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

void set_level(level l);
level current_level();
bool parse_level(std::string_view s, level& out);
void set_shard_tag(int shard); // per-thread tag printed in each line; -1 = main, -2 = admin
void write(level l, std::string_view msg);
// Appends msg to out with each byte below 0x20 and 0x7f as \xNN (lowercase hex); other bytes, UTF-8 included, as
// they are.
void append_escaped(fmt::memory_buffer& out, std::string_view msg);

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

} // namespace ringmq::log
