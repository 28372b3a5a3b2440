#pragma once
// Node facts for the nodes endpoints and $SYS topics, read from the process and the OS (/proc, rlimits, clocks),
// formatted the way EMQ X 2.x printed them. Stateless functions called on the admin shard.
#include <cstdint>
#include <string>

namespace ringmq::admin {

// "1 hours, 17 minutes, 1 seconds" and the other EMQ X uptime forms.
std::string format_uptime(int64_t seconds);
// Local time "YYYY-MM-DD HH:MM:SS".
std::string format_datetime(int64_t unix_seconds);
// EMQ X's kmg: "69.19M", "1.50G"; small values (<= 1 KiB) come back empty and the caller emits a number.
std::string format_kmg(uint64_t bytes);

struct process_memory {
    uint64_t rss = 0;  // VmRSS: memory the process holds
    uint64_t anon = 0; // RssAnon: of which heap/anonymous (in use by the broker's data)
};
process_memory read_memory();
// The three load averages as two-decimal strings ("0.00" when /proc/loadavg cannot be read).
void read_loadavg(std::string& l1, std::string& l5, std::string& l15);
uint64_t max_fds();

} // namespace ringmq::admin
