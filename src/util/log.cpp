#include "util/log.hpp"

#include <atomic>
#include <ctime>
#include <sys/time.h>
#include <unistd.h>

namespace ringmq::log {
namespace {
std::atomic<int> g_level{static_cast<int>(level::info)};
thread_local int t_shard = -1;
constexpr const char* k_names[] = {"debug", "info", "warn", "error", "off"};
} // namespace

void set_level(level l) { g_level.store(static_cast<int>(l), std::memory_order_relaxed); }
level current_level() { return static_cast<level>(g_level.load(std::memory_order_relaxed)); }
void set_shard_tag(int shard) { t_shard = shard; }

bool parse_level(std::string_view s, level& out) {
    for (int i = 0; i <= 4; ++i) {
        if (s == k_names[i]) {
            out = static_cast<level>(i);
            return true;
        }
    }
    if (s == "warning") {
        out = level::warn;
        return true;
    }
    return false;
}

namespace {
// How many bytes from msg[i] on are written escaped (0: msg[i] is written as it is).
size_t escaped_length(std::string_view msg, size_t i) {
    const auto b = static_cast<unsigned char>(msg[i]);
    if (b < 0x20 || b == 0x7f || b == '\\') return 1;
    const auto next = [&](size_t k) { return i + k < msg.size() ? static_cast<unsigned char>(msg[i + k]) : 0; };
    if (b == 0xc2 && next(1) >= 0x80 && next(1) <= 0x9f) return 2;                      // U+0080..U+009F
    if (b == 0xe2 && next(1) == 0x80 && (next(2) == 0xa8 || next(2) == 0xa9)) return 3; // U+2028, U+2029
    return 0;
}
} // namespace

void append_escaped(fmt::memory_buffer& out, std::string_view msg) {
    static constexpr char hex[] = "0123456789abcdef";
    size_t clean = 0; // start of the run of bytes not yet copied
    for (size_t i = 0; i < msg.size();) {
        const size_t n = escaped_length(msg, i);
        if (n == 0) {
            ++i;
            continue;
        }
        out.append(msg.data() + clean, msg.data() + i);
        for (size_t k = i; k < i + n; ++k) {
            const auto b = static_cast<unsigned char>(msg[k]);
            const char esc[4] = {'\\', 'x', hex[b >> 4], hex[b & 15]};
            out.append(esc, esc + 4);
        }
        i += n;
        clean = i;
    }
    out.append(msg.data() + clean, msg.data() + msg.size());
}

namespace {

void append_cut(fmt::memory_buffer& out, std::string_view msg, bool escape) {
    size_t cut = msg.size();
    if (cut > max_message_bytes) {
        cut = max_message_bytes;
        while (cut > 0 && (static_cast<unsigned char>(msg[cut]) & 0xc0) == 0x80)
            --cut;   // not inside a UTF-8 sequence
        if (!escape) // nor inside one of its \xNN (every backslash of escaped text starts one)
            for (size_t back = 1; back <= 3 && back <= cut; ++back)
                if (msg[cut - back] == '\\') {
                    cut -= back;
                    break;
                }
    }
    if (escape)
        append_escaped(out, msg.substr(0, cut));
    else
        out.append(msg.substr(0, cut));
    if (cut < msg.size()) fmt::format_to(std::back_inserter(out), " [... {} more bytes]", msg.size() - cut);
}

void write_line(level l, std::string_view msg, bool escape) {
    timeval tv{};
    gettimeofday(&tv, nullptr);
    tm t{};
    localtime_r(&tv.tv_sec, &t);
    char tag[16];
    if (t_shard >= 0)
        fmt::format_to_n(tag, sizeof tag - 1, "shard{}", t_shard).out[0] = 0;
    else if (t_shard == -2)
        fmt::format_to_n(tag, sizeof tag - 1, "admin").out[0] = 0;
    else
        fmt::format_to_n(tag, sizeof tag - 1, "main").out[0] = 0;
    fmt::memory_buffer buf;
    fmt::format_to(std::back_inserter(buf), "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03} [{}] {}: ", t.tm_year + 1900,
                   t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, tv.tv_usec / 1000,
                   k_names[static_cast<int>(l)], tag);
    append_cut(buf, msg, escape);
    buf.push_back('\n');
    const char* p = buf.data();
    size_t left = buf.size();
    while (left > 0) {
        ssize_t n = ::write(2, p, left);
        if (n <= 0) break;
        p += n;
        left -= static_cast<size_t>(n);
    }
}

} // namespace

void append_message(fmt::memory_buffer& out, std::string_view msg) { append_cut(out, msg, true); }

void write(level l, std::string_view msg) { write_line(l, msg, true); }

void write_escaped(level l, std::string_view msg) {
    if (current_level() <= l) write_line(l, msg, false);
}

std::string cut_escaped(std::string_view text) {
    fmt::memory_buffer out;
    append_cut(out, text, false);
    return fmt::to_string(out);
}

std::string escaped(std::string_view text) {
    fmt::memory_buffer out;
    append_escaped(out, text);
    return fmt::to_string(out);
}

} // namespace ringmq::log
