#pragma once
// Invariant checks: RINGMQ_ASSERT is always on (logs context and aborts); RINGMQ_DASSERT only in debug builds.
// Never use either on peer input: protocol errors are values.
#include <cstdlib>

namespace ringmq::detail {
[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const char* func);
}

#define RINGMQ_ASSERT(e) ((e) ? (void)0 : ::ringmq::detail::assert_fail(#e, __FILE__, __LINE__, __func__))
#ifdef NDEBUG
#define RINGMQ_DASSERT(e) ((void)0)
#else
#define RINGMQ_DASSERT(e) RINGMQ_ASSERT(e)
#endif
