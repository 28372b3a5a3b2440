#include "util/log.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <ctime>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
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

void append_prefix(fmt::memory_buffer& buf, level l) {
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
    fmt::format_to(std::back_inserter(buf), "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03} [{}] {}: ", t.tm_year + 1900,
                   t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, tv.tv_usec / 1000,
                   k_names[static_cast<int>(l)], tag);
}

// Where the lines go, shared by every thread (one process-wide instance: g_out). Until use_nonblocking_output, and
// for a regular file, each line is one blocking write(2) to fd 2, as a file never waits for a reader. A pipe, FIFO,
// terminal or socket can: a reader that stops reading (a supervisor stuck, a `| less` left paused) once filled the
// pipe, and every thread that logged next waited in write(2) for ever, a shard and its clients with it, and the main
// thread's "received SIGTERM" line too, so that not even a second signal ended the process. Those are written without
// waiting instead; what the output does not take waits in `pending`, up to max_pending bytes, past which whole lines
// are dropped and counted, and a line says how many once the output takes again.
struct output {
    std::mutex mu;
    int fd = 2;
    bool nonblocking = false; // fd is a description of our own with O_NONBLOCK, or a socket sent to with MSG_DONTWAIT
    bool socket = false;
    std::string pending;  // bytes written by no call yet: whole lines, but for the first, which may be a line's tail
    uint64_t dropped = 0; // lines dropped since the last line that said so
    static constexpr size_t max_pending = 256 * 1024;

    // Bytes the output took now, without waiting: -1 when it takes none (full, or gone).
    ssize_t put(const char* p, size_t n) {
        const ssize_t w = socket ? ::send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) : ::write(fd, p, n);
        return w < 0 ? -1 : w;
    }
    // Writes from pending what the output takes; true once it is empty.
    bool drain() {
        while (!pending.empty()) {
            const ssize_t w = put(pending.data(), pending.size());
            if (w <= 0) {
                if (w < 0 && errno == EINTR) continue;
                if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) pending.clear(); // gone: EPIPE, say
                return pending.empty();
            }
            pending.erase(0, static_cast<size_t>(w));
        }
        if (dropped != 0) {
            fmt::memory_buffer note;
            append_prefix(note, level::warn);
            fmt::format_to(std::back_inserter(note),
                           "{} log line{} dropped: stderr did not take them (its reader is not reading)\n", dropped,
                           dropped == 1 ? "" : "s");
            dropped = 0;
            pending.assign(note.data(), note.size());
            return drain();
        }
        return true;
    }
    void emit(const char* p, size_t n) {
        std::lock_guard lock(mu);
        if (!nonblocking) {
            while (n > 0) {
                const ssize_t w = ::write(fd, p, n);
                if (w <= 0) break;
                p += w;
                n -= static_cast<size_t>(w);
            }
            return;
        }
        if (drain()) {
            while (n > 0) {
                const ssize_t w = put(p, n);
                if (w < 0 && errno == EINTR) continue;
                if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return; // gone: nothing will read it
                if (w <= 0) break;
                p += w;
                n -= static_cast<size_t>(w);
            }
            if (n == 0) return;
            pending.append(p, n); // the rest of a line begun: kept whatever the limit, or the output would be cut
            return;
        }
        if (pending.size() + n > max_pending) {
            ++dropped;
            return;
        }
        pending.append(p, n);
    }
};

output& g_out = *new output; // never destroyed: a detached thread may still log while the process exits

void write_line(level l, std::string_view msg, bool escape) {
    fmt::memory_buffer buf;
    append_prefix(buf, l);
    append_cut(buf, msg, escape);
    buf.push_back('\n');
    g_out.emit(buf.data(), buf.size());
}

} // namespace

void append_message(fmt::memory_buffer& out, std::string_view msg) { append_cut(out, msg, true); }

bool use_nonblocking_output() {
    std::lock_guard lock(g_out.mu);
    if (g_out.nonblocking) return true;
    struct stat st {};
    if (::fstat(2, &st) != 0) return false;
    if (S_ISSOCK(st.st_mode)) {
        g_out.socket = true;
        g_out.nonblocking = true;
        return true;
    }
    if (!S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) return false; // a file: it never waits for a reader
    // A description of our own: O_NONBLOCK set on fd 2's would be shared with whoever else holds it (the shell's
    // terminal, which would then see its reads fail once we exit). Reopening through /proc makes a new one for a pipe
    // or a terminal. Where that fails (no /proc; a FIFO whose reader has gone), fd 2 is written as before.
    const int fd = ::open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return false;
    g_out.fd = fd;
    g_out.nonblocking = true;
    return true;
}

bool flush(int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        int fd = 2;
        {
            std::lock_guard lock(g_out.mu);
            if (!g_out.nonblocking || g_out.drain()) return true;
            fd = g_out.fd;
        }
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) return false;
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 100)));
    }
}

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
