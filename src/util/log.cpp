#include "util/log.hpp"

#include "util/clock.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <poll.h>
#include <string>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <thread>
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

// Where the lines go, shared by every thread (one process-wide instance: g_out). Until start_writer, each line is one
// write(2) to fd 2 by the thread that logs it. After, a thread of its own writes them: a stderr can wait for its
// reader (a pipe, a terminal, a socket; a supervisor stuck, a `| less` left paused), and while every write waited, a
// full pipe held the shard that logged next, its clients with it, and main's "received SIGTERM" line too, so that not
// even a second signal ended the process. A caller hands its line over, and of a warning or an error waits for it to
// be written, so that such a line is out before what follows it (an exit, a crash), but at most handoff_wait_ms: past
// that the output counts as stuck, and callers only append to `pending` (up to max_pending,
// error lines up to error_reserve more, past which lines are dropped and counted) until the writer has written the
// line that found it stuck and takes lines quickly again; a line where the dropped ones would have been says how many.
// The writer needs no O_NONBLOCK of its own on stderr (a reopen through /proc cannot give one where the pipe is
// another user's) and writes any kind of file whole lines at a time. A regular file or /dev/null gets no writer
// (start_writer): the caller's write(2) never waits for a reader there.
struct output {
    std::mutex mu;
    std::condition_variable work; // the writer waits for lines
    std::condition_variable done; // callers (and flush) wait for the writer
    bool started = false;
    bool writing = false;    // the writer holds lines taken from pending (not written yet)
    bool stuck = false;      // a caller's line waited handoff_wait_ms: callers no longer wait (see run)
    uint64_t stuck_mark = 0; // the line that found it stuck
    std::string pending;     // lines not taken by the writer yet
    size_t gap_at = 0;       // where in pending the lines dropped since it was taken would have been
    uint64_t queued = 0;     // lines appended to pending so far
    uint64_t written = 0;    // of those, written (or given up: the output failed)
    uint64_t dropped = 0;    // lines dropped since pending was taken
    static constexpr size_t max_pending = 256 * 1024;
    static constexpr size_t error_reserve = 64 * 1024;
    static constexpr int handoff_wait_ms = 100;

    static void write_all(const char* p, size_t n) {
        while (n > 0) {
            const ssize_t w = ::write(2, p, n);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                // A stderr whose description another process set O_NONBLOCK: waited for here as a blocking one is
                // (by the writer; before it starts, by main alone), not cut mid-line.
                pollfd pf{2, POLLOUT, 0};
                ::poll(&pf, 1, -1);
                continue;
            }
            if (w <= 0) return; // gone (EPIPE with SIGPIPE ignored, say): nothing will read it
            p += w;
            n -= static_cast<size_t>(w);
        }
    }
    void emit(level l, const char* p, size_t n) {
        std::unique_lock lock(mu);
        if (!started) {
            write_all(p, n);
            return;
        }
        // Once one is dropped, the others but error lines are until the writer takes pending, so that the notice
        // stands where all it counts would have been (a shorter line would fit, after the gap).
        if ((dropped != 0 && l < level::error) ||
            pending.size() + n > max_pending + (l >= level::error ? error_reserve : 0)) {
            if (dropped++ == 0) gap_at = pending.size();
            return;
        }
        pending.append(p, n);
        const uint64_t mine = ++queued;
        // Notified with mu released (as are the callers below): glibc's broadcast can wait for woken waiters, and
        // one of them stopped (a debugger, a SIGSTOP) would hold every logging thread on mu.
        lock.unlock();
        work.notify_one();
        lock.lock();
        // Only warnings and errors are waited for: the lines that tell of trouble, and the last ones before an exit
        // or a crash; the others (a connection's debug lines, per connect and close) cost their thread no wait.
        if (stuck || l < level::warn) return;
        if (!done.wait_for(lock, std::chrono::milliseconds(handoff_wait_ms), [&] { return written >= mine; })) {
            stuck = true;
            stuck_mark = mine;
        }
    }
    [[noreturn]] void run() {
        std::string batch;
        std::unique_lock lock(mu);
        for (;;) {
            work.wait(lock, [&] { return !pending.empty(); });
            batch.swap(pending); // (pending takes batch's buffer, emptied: no copy of the bytes either way)
            pending.clear();
            // Lines were dropped while these waited: the notice goes where the first of them would have been.
            if (dropped != 0) {
                fmt::memory_buffer note;
                append_prefix(note, level::warn);
                fmt::format_to(std::back_inserter(note),
                               "{} log line{} dropped: stderr did not take them (its reader is not reading)\n", dropped,
                               dropped == 1 ? "" : "s");
                batch.insert(std::min(gap_at, batch.size()), note.data(), note.size());
                dropped = 0;
            }
            const uint64_t upto = queued;
            writing = true;
            lock.unlock();
            const int64_t began = mono_ms();
            write_all(batch.data(), batch.size());
            const bool quick = mono_ms() - began < handoff_wait_ms / 4;
            lock.lock();
            writing = false;
            written = upto;
            // Callers wait again once the line that found the output stuck is written and the output takes lines
            // quickly again (not merely once pending is empty: callers that do not wait keep it filling).
            if (stuck && written >= stuck_mark && quick) stuck = false;
            lock.unlock();
            done.notify_all();
            lock.lock();
        }
    }
};

output& g_out = *new output; // never destroyed: a detached thread may still log while the process exits

void write_line(level l, std::string_view msg, bool escape) {
    fmt::memory_buffer buf;
    append_prefix(buf, l);
    append_cut(buf, msg, escape);
    buf.push_back('\n');
    g_out.emit(l, buf.data(), buf.size());
}

} // namespace

void append_message(fmt::memory_buffer& out, std::string_view msg) { append_cut(out, msg, true); }

void start_writer() {
    // A regular file (the suite's logs, perf/compare's) or /dev/null never waits for a reader: its lines stay one
    // write(2) by the caller, written when log::write returns however loaded the host (a writer thread off its CPU
    // for long would have made such a log late, and dropped lines from it).
    struct stat st {};
    if (::fstat(2, &st) == 0 &&
        (S_ISREG(st.st_mode) || (S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3)))) // (1, 3): /dev/null
        return;
    std::lock_guard lock(g_out.mu);
    if (g_out.started) return;
    std::thread([] { g_out.run(); }).detach();
    g_out.started = true;
}

bool flush(int timeout_ms) {
    std::unique_lock lock(g_out.mu);
    if (!g_out.started) return true;
    return g_out.done.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                               [] { return g_out.pending.empty() && !g_out.writing; });
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
