#pragma once
// Monotonic and wall clocks in one place so session logic can be tested on a fake clock.
#include <chrono>
#include <cstdint>

namespace ringmq {

using mono_clock = std::chrono::steady_clock;
using mono_time = mono_clock::time_point;

inline int64_t mono_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(mono_clock::now().time_since_epoch()).count();
}

} // namespace ringmq
