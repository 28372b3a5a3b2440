#pragma once
// Monotonic and wall clocks in one place so session logic can be tested on a fake clock.
#include <chrono>
#include <cstdint>
#include <ctime>

namespace ringmq {

using mono_clock = std::chrono::steady_clock;
using mono_time = mono_clock::time_point;

inline int64_t mono_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(mono_clock::now().time_since_epoch()).count();
}

inline int64_t mono_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(mono_clock::now().time_since_epoch()).count();
}

// CPU time the calling thread has used (a system call, not the vDSO: for once-in-a-while measurements).
inline uint64_t thread_cpu_ns() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

} // namespace ringmq
