#pragma once
// The checks both the seeded mutation test (test_mutations.cpp) and the libFuzzer target
// (tests/fuzz/fuzz_mqtt_decode.cpp) make on a decoded packet: a decoder answers any bytes with an error value, or
// with views that lie inside the body and, for v5, property blocks that parse again on their own. fail(what) is
// called for each breach. Test code only.
#include "mqtt/codec.hpp"
#include "mqtt/properties.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

namespace ringmq::mqtt::test {

// Views handed out by a decoder must lie within the body it was given.
template <class Fail> class bounds {
public:
    bounds(std::span<const uint8_t> body, Fail& fail) : lo_(body.data()), hi_(body.data() + body.size()), fail_(fail) {}
    void check(std::span<const uint8_t> s) const {
        if (!s.empty() && (s.data() < lo_ || s.data() + s.size() > hi_)) fail_("a decoded view lies outside the body");
    }
    void check(std::string_view s) const {
        check(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
    }

private:
    const uint8_t* lo_;
    const uint8_t* hi_;
    Fail& fail_;
};

// A v5 property block a decoder accepted must parse again as the same packet's block.
template <class Fail> void reparses(std::span<const uint8_t> block, packet_type t, Fail& fail, bool for_will = false) {
    properties p;
    if (!block.empty() && parse_properties(block, t, for_will, p) != error::none)
        fail("an accepted property block does not parse again");
}

// Decodes one framed body with the decoder its type calls for and checks what an accepted packet gives; returns the
// decoder's answer.
template <class Fail>
error decode_checked(packet_type t, uint8_t flags, protocol_version v, std::span<const uint8_t> body, Fail& fail) {
    const bounds<Fail> in(body, fail);
    // A v5 property block of an accepted packet: inside the body, and parses again on its own.
    const auto props = [&](std::span<const uint8_t> block, bool for_will = false) {
        in.check(block);
        reparses(block, t, fail, for_will);
    };
    switch (t) {
    case packet_type::connect: {
        connect_view c{};
        properties p, wp;
        const error e = decode_connect(body, flags, c, &p, &wp);
        if (e == error::none) {
            for (std::string_view s : {c.protocol_name, c.client_id, c.will_topic, c.username})
                in.check(s);
            for (std::span<const uint8_t> s : {c.will_payload, c.password})
                in.check(s);
            props(c.properties);
            props(c.will_properties, true);
        }
        return e;
    }
    case packet_type::publish: {
        publish_view p{};
        const error e = decode_publish(body, flags, v, p);
        if (e == error::none) {
            in.check(p.topic);
            in.check(p.payload);
            props(p.properties);
            if (p.qos > 2 || (p.packet_id == 0) != (p.qos == 0)) fail("a PUBLISH decoded with a bad QoS or packet id");
        }
        return e;
    }
    case packet_type::puback:
    case packet_type::pubrec:
    case packet_type::pubrel:
    case packet_type::pubcomp: {
        ack_view a{};
        const error e = decode_ack(t, body, flags, v, a);
        if (e == error::none) {
            props(a.properties);
            if (a.packet_id == 0) fail("an ack decoded with packet id 0");
        }
        return e;
    }
    case packet_type::subscribe: {
        subscribe_view s{};
        const error e = decode_subscribe(body, flags, v, s);
        if (e == error::none) {
            if (s.entries.empty()) fail("a SUBSCRIBE decoded without entries");
            for (const subscription& x : s.entries)
                in.check(x.filter);
            props(s.properties);
        }
        return e;
    }
    case packet_type::unsubscribe: {
        unsubscribe_view u{};
        const error e = decode_unsubscribe(body, flags, v, u);
        if (e == error::none) {
            if (u.filters.empty()) fail("an UNSUBSCRIBE decoded without filters");
            for (std::string_view f : u.filters)
                in.check(f);
            props(u.properties);
        }
        return e;
    }
    case packet_type::connack: {
        connack_view c{};
        const error e = decode_connack(body, flags, v, c);
        if (e == error::none) props(c.properties);
        return e;
    }
    case packet_type::suback:
    case packet_type::unsuback: {
        suback_view s{};
        const error e =
            t == packet_type::suback ? decode_suback(body, flags, v, s) : decode_unsuback(body, flags, v, s);
        if (e == error::none) props(s.properties);
        return e;
    }
    case packet_type::disconnect: {
        if (v != protocol_version::v5) return decode_empty(t, body, flags);
        disconnect_view d{};
        const error e = decode_disconnect(body, flags, v, d);
        if (e == error::none) props(d.properties);
        return e;
    }
    case packet_type::auth: {
        auth_view a{};
        const error e = decode_auth(body, flags, v, a);
        if (e == error::none) props(a.properties);
        return e;
    }
    default:
        return decode_empty(t, body, flags);
    }
}

// Frames a whole packet in a buffer of its exact size and, when the bytes frame into exactly one packet, decodes it
// (*reached = true) and returns the decoder's answer; else returns the framing error (malformed for a length that
// does not match the bytes).
template <class Fail>
error frame_and_decode(std::span<const uint8_t> wire, protocol_version v, Fail& fail, bool* reached = nullptr) {
    if (reached) *reached = false;
    const std::unique_ptr<uint8_t[]> exact(new uint8_t[wire.size() ? wire.size() : 1]);
    std::copy(wire.begin(), wire.end(), exact.get());
    fixed_header h{};
    const error fe = parse_fixed_header(exact.get(), wire.size(), h);
    if (fe != error::none) return fe;
    if (size_t{h.header_len} + h.remaining_length != wire.size()) return error::malformed;
    if (reached) *reached = true;
    return decode_checked(h.type, h.flags, v, std::span<const uint8_t>(exact.get() + h.header_len, h.remaining_length),
                          fail);
}

} // namespace ringmq::mqtt::test
