#include "reactor/gate.hpp"

#include "util/log.hpp"

#include <exception>

namespace ringmq::reactor {

namespace detail {
detached run_detached(gate& g, task<void> t) {
    try {
        co_await t;
    } catch (const std::exception& e) {
        log::error("detached task failed: {}", e.what());
    }
    g.leave();
}
} // namespace detail

bool spawn(gate& g, task<void> t) {
    if (g.closed()) return false;
    g.enter();
    detail::run_detached(g, std::move(t));
    return true;
}

} // namespace ringmq::reactor
