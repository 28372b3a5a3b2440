#include "util/assert.hpp"

#include "util/log.hpp"

namespace ringmq::detail {
void assert_fail(const char* expr, const char* file, int line, const char* func) {
    log::write(log::level::error, fmt::format("assertion failed: {} at {}:{} in {}", expr, file, line, func));
    log::flush(200);
    std::abort();
}
} // namespace ringmq::detail
