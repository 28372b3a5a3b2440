// libFuzzer target for the MQTT decoders (tests/fuzz, as ARCHITECTURE.md plans; that page is outside this repository):
// the first input byte picks the protocol version (even: 3.1.1, odd: 5.0), the rest is framed as one packet and decoded
// with the decoder its type calls for, with the checks of tests/unit/mqtt/decode_checks.hpp (which the seeded mutation
// test makes in every build): an error value, or views inside the body and v5 property blocks that parse again. Built
// only with clang (meson -Dfuzz=true, see README "Fuzzing").
#include "decode_checks.hpp"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const auto v = data[0] & 1 ? ringmq::mqtt::protocol_version::v5 : ringmq::mqtt::protocol_version::v311;
    const auto fail = [](const char* what) {
        std::fprintf(stderr, "decoder check failed: %s\n", what);
        std::abort();
    };
    // framed in a copy of exactly the packet's size, so that a read past it is a sanitizer finding
    ringmq::mqtt::test::frame_and_decode(std::span<const uint8_t>(data + 1, size - 1), v, fail);
    return 0;
}
