// libFuzzer target for the session state machine (tests/fuzz, as ARCHITECTURE.md plans; that page is outside this
// repository): the input is a program of offers, pumps, acks, admits, holds, waits for a flight, requeues, incoming
// QoS 2, reconnects and clears, run against a session and a model of what session.hpp promises
// (tests/unit/session/session_program.hpp, which the seeded unit test also runs). Any disagreement aborts with its
// description. Built only with clang (meson -Dfuzz=true, see README "Fuzzing").
#include "session_program.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    ringmq::session::test::session_program::run(data, size, [](const char* what) {
        std::fprintf(stderr, "session disagrees with its model: %s\n", what);
        std::abort();
    });
    return 0;
}
