// libFuzzer target for the MQTT decoders (tests/fuzz, as ARCHITECTURE.md plans; that page is outside this repository):
// the first input byte picks the protocol version (even: 3.1.1, odd: 5.0), the rest is framed as one packet and decoded
// with the decoder its type calls for. A decoder must answer any bytes with an error value or with views inside the
// body, and a v5 property block it accepted must parse again on its own. Built only with clang (meson -Dfuzz=true, see
// README "Fuzzing"); not part of tools/test, whose seeded mutation tests (tests/unit/mqtt/test_mutations.cpp) cover the
// same checks in every build.
#include "mqtt/codec.hpp"
#include "mqtt/properties.hpp"

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string_view>

namespace {

using namespace ringmq::mqtt;

struct bounds {
    const uint8_t* lo;
    const uint8_t* hi;
    void check(std::span<const uint8_t> s) const {
        if (!s.empty() && (s.data() < lo || s.data() + s.size() > hi)) std::abort();
    }
    void check(std::string_view s) const {
        check(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
    }
};

void reparses(std::span<const uint8_t> block, packet_type t, bool for_will = false) {
    properties p;
    if (!block.empty() && parse_properties(block, t, for_will, p) != error::none) std::abort();
}

void decode(packet_type t, uint8_t flags, protocol_version v, std::span<const uint8_t> body) {
    const bounds in{body.data(), body.data() + body.size()};
    switch (t) {
    case packet_type::connect: {
        connect_view c{};
        properties p, wp;
        if (decode_connect(body, flags, c, &p, &wp) != error::none) return;
        for (std::string_view s : {c.protocol_name, c.client_id, c.will_topic, c.username})
            in.check(s);
        for (std::span<const uint8_t> s : {c.will_payload, c.password, c.properties, c.will_properties})
            in.check(s);
        reparses(c.properties, t);
        reparses(c.will_properties, t, true);
        return;
    }
    case packet_type::publish: {
        publish_view p{};
        if (decode_publish(body, flags, v, p) != error::none) return;
        in.check(p.topic);
        in.check(p.payload);
        in.check(p.properties);
        reparses(p.properties, t);
        if (p.qos > 2 || (p.packet_id == 0) != (p.qos == 0)) std::abort();
        return;
    }
    case packet_type::puback:
    case packet_type::pubrec:
    case packet_type::pubrel:
    case packet_type::pubcomp: {
        ack_view a{};
        if (decode_ack(t, body, flags, v, a) != error::none) return;
        in.check(a.properties);
        reparses(a.properties, t);
        if (a.packet_id == 0) std::abort();
        return;
    }
    case packet_type::subscribe: {
        subscribe_view s{};
        if (decode_subscribe(body, flags, v, s) != error::none) return;
        if (s.entries.empty()) std::abort();
        for (const subscription& x : s.entries)
            in.check(x.filter);
        in.check(s.properties);
        reparses(s.properties, t);
        return;
    }
    case packet_type::unsubscribe: {
        unsubscribe_view u{};
        if (decode_unsubscribe(body, flags, v, u) != error::none) return;
        if (u.filters.empty()) std::abort();
        for (std::string_view f : u.filters)
            in.check(f);
        in.check(u.properties);
        reparses(u.properties, t);
        return;
    }
    case packet_type::connack: {
        connack_view c{};
        if (decode_connack(body, flags, v, c) != error::none) return;
        in.check(c.properties);
        reparses(c.properties, t);
        return;
    }
    case packet_type::suback:
    case packet_type::unsuback: {
        suback_view s{};
        const error e =
            t == packet_type::suback ? decode_suback(body, flags, v, s) : decode_unsuback(body, flags, v, s);
        if (e != error::none) return;
        in.check(s.properties);
        reparses(s.properties, t);
        return;
    }
    case packet_type::disconnect: {
        disconnect_view d{};
        if (v != protocol_version::v5) {
            decode_empty(t, body, flags);
        } else if (decode_disconnect(body, flags, v, d) == error::none) {
            in.check(d.properties);
            reparses(d.properties, t);
        }
        return;
    }
    case packet_type::auth: {
        auth_view a{};
        if (decode_auth(body, flags, v, a) != error::none) return;
        in.check(a.properties);
        reparses(a.properties, t);
        return;
    }
    default:
        decode_empty(t, body, flags);
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const protocol_version v = data[0] & 1 ? protocol_version::v5 : protocol_version::v311;
    // A copy of exactly the packet's size, so that a read past it is a sanitizer finding, not a read of the input's
    // other bytes.
    const size_t n = size - 1;
    std::unique_ptr<uint8_t[]> exact(new uint8_t[n ? n : 1]);
    std::copy(data + 1, data + size, exact.get());
    fixed_header h{};
    if (parse_fixed_header(exact.get(), n, h) != error::none) return 0;
    if (size_t{h.header_len} + h.remaining_length != n) return 0;
    decode(h.type, h.flags, v, std::span<const uint8_t>(exact.get() + h.header_len, h.remaining_length));
    return 0;
}
