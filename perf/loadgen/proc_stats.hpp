// Readers for another process's CPU time and memory from /proc, used to charge the broker for what it spent.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unistd.h>

namespace loadgen {

// User and system CPU time of the whole process (all threads) in clock ticks: /proc/PID/stat fields 14 and 15.
struct cpu_ticks {
    std::uint64_t user = 0, system = 0;
    std::uint64_t total() const { return user + system; }
};

inline std::optional<cpu_ticks> read_cpu_split(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(in, line)) return std::nullopt;
    // The command name (field 2) may contain spaces and parentheses: fields are counted after the last ')'.
    const auto close = line.rfind(')');
    if (close == std::string::npos) return std::nullopt;
    std::istringstream rest(line.substr(close + 1));
    std::string field;
    cpu_ticks t;
    for (int i = 3; i <= 15 && (rest >> field); ++i) {
        if (i == 14) t.user = std::strtoull(field.c_str(), nullptr, 10);
        if (i == 15) t.system = std::strtoull(field.c_str(), nullptr, 10);
    }
    if (!rest) return std::nullopt;
    return t;
}

inline double ticks_to_seconds(std::uint64_t ticks) {
    static const long hz = sysconf(_SC_CLK_TCK);
    return static_cast<double>(ticks) / static_cast<double>(hz > 0 ? hz : 100);
}

// The number after "Key:" when `line` is that key's line of a /proc status file ("VmRSS:   123 kB",
// "voluntary_ctxt_switches:  42").
inline std::optional<std::uint64_t> status_value(const std::string& line, std::string_view key) {
    if (line.size() > key.size() && line.compare(0, key.size(), key) == 0 && line[key.size()] == ':')
        return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10);
    return std::nullopt;
}

inline std::optional<std::uint64_t> read_status_field(const std::string& path, std::string_view key) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
        if (const auto v = status_value(line, key)) return v;
    return std::nullopt;
}

// A "Key:   123 kB" line of /proc/PID/status in bytes (VmRSS, VmHWM).
inline std::optional<std::uint64_t> read_status_bytes(int pid, std::string_view key) {
    const auto kb = read_status_field("/proc/" + std::to_string(pid) + "/status", key);
    if (!kb) return std::nullopt;
    return *kb * 1024;
}

// VmRSS and RssAnon of /proc/PID/status in bytes, from one read of the file so that both are of the same moment;
// 0 for a line the kernel does not give (RssAnon before Linux 4.5).
struct rss_reading {
    std::uint64_t rss = 0, anon = 0;
};

inline rss_reading read_rss(int pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    rss_reading r;
    const auto take = [&line](std::string_view key, std::uint64_t& to) {
        if (const auto kb = status_value(line, key)) to = *kb * 1024;
    };
    while (std::getline(in, line)) {
        take("VmRSS", r.rss);
        take("RssAnon", r.anon);
    }
    return r;
}

// How many times the process's threads went to sleep (voluntary_ctxt_switches of every /proc/PID/task/TID/status,
// since /proc/PID/status counts the main thread only). On loopback each sleep costs the broker a context switch and
// its peer the wake-up that ends it: what lets an idle-prone broker spend more CPU per message than a saturated one.
inline std::optional<std::uint64_t> read_sleeps(int pid) {
    const std::string dir = "/proc/" + std::to_string(pid) + "/task";
    DIR* d = opendir(dir.c_str());
    if (!d) return std::nullopt;
    std::optional<std::uint64_t> total;
    while (const dirent* e = readdir(d)) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        if (const auto n = read_status_field(dir + "/" + e->d_name + "/status", "voluntary_ctxt_switches"))
            total = total.value_or(0) + *n;
    }
    closedir(d);
    return total;
}

} // namespace loadgen
