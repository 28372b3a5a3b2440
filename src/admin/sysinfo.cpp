#include "admin/sysinfo.hpp"

#include <sys/resource.h>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <fmt/format.h>

namespace ringmq::admin {

std::string format_uptime(int64_t s) {
    if (s < 0) s = 0;
    const int64_t d = s / 86400, h = (s / 3600) % 24, m = (s / 60) % 60, sec = s % 60;
    if (s < 60) return fmt::format("{} seconds", sec);
    if (s < 3600) return fmt::format("{} minutes, {} seconds", m, sec);
    if (s < 86400) return fmt::format("{} hours, {} minutes, {} seconds", h, m, sec);
    return fmt::format("{} days,{} hours, {} minutes, {} seconds", d, h, m, sec); // sic: EMQ X had no space
}

std::string format_datetime(int64_t t) {
    const time_t tt = static_cast<time_t>(t);
    tm lt{};
    localtime_r(&tt, &lt);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &lt);
    return buf;
}

std::string format_kmg(uint64_t b) {
    constexpr double kib = 1024.0, mib = kib * 1024, gib = mib * 1024;
    if (b > gib) return fmt::format("{:.2f}G", b / gib);
    if (b > mib) return fmt::format("{:.2f}M", b / mib);
    if (b > kib) return fmt::format("{:.2f}K", b / kib);
    return {};
}

process_memory read_memory() {
    process_memory m;
    FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return m;
    char line[256];
    while (std::fgets(line, sizeof line, f)) {
        unsigned long long kb = 0;
        if (std::sscanf(line, "VmRSS: %llu kB", &kb) == 1) m.rss = kb * 1024;
        if (std::sscanf(line, "RssAnon: %llu kB", &kb) == 1) m.anon = kb * 1024;
    }
    std::fclose(f);
    return m;
}

void read_loadavg(std::string& l1, std::string& l5, std::string& l15) {
    double a = 0, b = 0, c = 0;
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf %lf %lf", &a, &b, &c) != 3) a = b = c = 0;
        std::fclose(f);
    }
    l1 = fmt::format("{:.2f}", a);
    l5 = fmt::format("{:.2f}", b);
    l15 = fmt::format("{:.2f}", c);
}

uint64_t max_fds() {
    rlimit r{};
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
    return r.rlim_cur == RLIM_INFINITY ? UINT64_MAX : r.rlim_cur;
}

} // namespace ringmq::admin
