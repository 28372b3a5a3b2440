#include "mqtt/properties.hpp"

#include "mqtt/codec.hpp"
#include "mqtt/reader.hpp"
#include "mqtt/validate.hpp"

#include <array>

namespace ringmq::mqtt {

namespace {

enum class value_kind : uint8_t { none, byte, u16, u32, varint, utf8, binary, pair };

constexpr uint32_t bit(packet_type t) { return 1u << static_cast<unsigned>(t); }
constexpr uint32_t will_bit = 1u << 16;

struct property_rule {
    value_kind kind = value_kind::none;
    uint32_t allowed = 0; // packet_type bits, plus will_bit for CONNECT will properties
};

constexpr uint32_t all_acks =
    bit(packet_type::puback) | bit(packet_type::pubrec) | bit(packet_type::pubrel) | bit(packet_type::pubcomp);

// MQTT 5.0 table 2-4, indexed by identifier.
constexpr std::array<property_rule, 0x2B> make_rules() {
    using pt = packet_type;
    std::array<property_rule, 0x2B> r{};
    const uint32_t pub_will = bit(pt::publish) | will_bit;
    r[0x01] = {value_kind::byte, pub_will};
    r[0x02] = {value_kind::u32, pub_will};
    r[0x03] = {value_kind::utf8, pub_will};
    r[0x08] = {value_kind::utf8, pub_will};
    r[0x09] = {value_kind::binary, pub_will};
    r[0x0B] = {value_kind::varint, bit(pt::publish) | bit(pt::subscribe)};
    r[0x11] = {value_kind::u32, bit(pt::connect) | bit(pt::connack) | bit(pt::disconnect)};
    r[0x12] = {value_kind::utf8, bit(pt::connack)};
    r[0x13] = {value_kind::u16, bit(pt::connack)};
    r[0x15] = {value_kind::utf8, bit(pt::connect) | bit(pt::connack) | bit(pt::auth)};
    r[0x16] = {value_kind::binary, bit(pt::connect) | bit(pt::connack) | bit(pt::auth)};
    r[0x17] = {value_kind::byte, bit(pt::connect)};
    r[0x18] = {value_kind::u32, will_bit};
    r[0x19] = {value_kind::byte, bit(pt::connect)};
    r[0x1A] = {value_kind::utf8, bit(pt::connack)};
    r[0x1C] = {value_kind::utf8, bit(pt::connack) | bit(pt::disconnect)};
    r[0x1F] = {value_kind::utf8,
               bit(pt::connack) | all_acks | bit(pt::suback) | bit(pt::unsuback) | bit(pt::disconnect) | bit(pt::auth)};
    r[0x21] = {value_kind::u16, bit(pt::connect) | bit(pt::connack)};
    r[0x22] = {value_kind::u16, bit(pt::connect) | bit(pt::connack)};
    r[0x23] = {value_kind::u16, bit(pt::publish)};
    r[0x24] = {value_kind::byte, bit(pt::connack)};
    r[0x25] = {value_kind::byte, bit(pt::connack)};
    r[0x26] = {value_kind::pair, bit(pt::connect) | bit(pt::connack) | pub_will | all_acks | bit(pt::subscribe) |
                                     bit(pt::suback) | bit(pt::unsubscribe) | bit(pt::unsuback) | bit(pt::disconnect) |
                                     bit(pt::auth)};
    r[0x27] = {value_kind::u32, bit(pt::connect) | bit(pt::connack)};
    r[0x28] = {value_kind::byte, bit(pt::connack)};
    r[0x29] = {value_kind::byte, bit(pt::connack)};
    r[0x2A] = {value_kind::byte, bit(pt::connack)};
    return r;
}

constexpr auto rules = make_rules();

// One decoded property value; only the member matching the rule's kind is set.
struct raw_value {
    uint32_t num = 0;
    std::string_view str, str2;
    std::span<const uint8_t> bin;
};

error read_value(detail::reader& r, value_kind kind, raw_value& v) {
    switch (kind) {
    case value_kind::byte: {
        uint8_t b;
        if (!r.u8(b)) return error::malformed;
        v.num = b;
        return error::none;
    }
    case value_kind::u16: {
        uint16_t x;
        if (!r.u16(x)) return error::malformed;
        v.num = x;
        return error::none;
    }
    case value_kind::u32:
        return r.u32(v.num) ? error::none : error::malformed;
    case value_kind::varint:
        return r.varint(v.num) ? error::none : error::malformed;
    case value_kind::utf8:
        if (!r.string(v.str)) return error::malformed;
        return valid_utf8(v.str) ? error::none : error::bad_utf8;
    case value_kind::binary:
        return r.binary(v.bin) ? error::none : error::malformed;
    case value_kind::pair:
        if (!r.string(v.str) || !r.string(v.str2)) return error::malformed;
        return valid_utf8(v.str) && valid_utf8(v.str2) ? error::none : error::bad_utf8;
    case value_kind::none:
        break;
    }
    return error::bad_property;
}

// Values the spec calls a Protocol Error even though they fit the wire type.
bool value_allowed(property_id id, uint32_t v) {
    switch (id) {
    case property_id::payload_format_indicator:
    case property_id::request_problem_information:
    case property_id::request_response_information:
    case property_id::maximum_qos:
    case property_id::retain_available:
    case property_id::wildcard_subscription_available:
    case property_id::subscription_identifier_available:
    case property_id::shared_subscription_available:
        return v <= 1;
    case property_id::receive_maximum:
    case property_id::maximum_packet_size:
    case property_id::topic_alias:
    case property_id::subscription_identifier:
        return v != 0;
    default:
        return true;
    }
}

void store(property_id id, const raw_value& v, properties& out) {
    auto u8 = static_cast<uint8_t>(v.num);
    auto u16 = static_cast<uint16_t>(v.num);
    switch (id) {
    case property_id::payload_format_indicator:
        out.payload_format_indicator = u8;
        break;
    case property_id::message_expiry_interval:
        out.message_expiry_interval = v.num;
        break;
    case property_id::content_type:
        out.content_type = v.str;
        break;
    case property_id::response_topic:
        out.response_topic = v.str;
        break;
    case property_id::correlation_data:
        out.correlation_data = v.bin;
        break;
    case property_id::subscription_identifier:
        out.subscription_identifiers.push_back(v.num);
        break;
    case property_id::session_expiry_interval:
        out.session_expiry_interval = v.num;
        break;
    case property_id::assigned_client_identifier:
        out.assigned_client_identifier = v.str;
        break;
    case property_id::server_keep_alive:
        out.server_keep_alive = u16;
        break;
    case property_id::authentication_method:
        out.authentication_method = v.str;
        break;
    case property_id::authentication_data:
        out.authentication_data = v.bin;
        break;
    case property_id::request_problem_information:
        out.request_problem_information = u8;
        break;
    case property_id::will_delay_interval:
        out.will_delay_interval = v.num;
        break;
    case property_id::request_response_information:
        out.request_response_information = u8;
        break;
    case property_id::response_information:
        out.response_information = v.str;
        break;
    case property_id::server_reference:
        out.server_reference = v.str;
        break;
    case property_id::reason_string:
        out.reason_string = v.str;
        break;
    case property_id::receive_maximum:
        out.receive_maximum = u16;
        break;
    case property_id::topic_alias_maximum:
        out.topic_alias_maximum = u16;
        break;
    case property_id::topic_alias:
        out.topic_alias = u16;
        break;
    case property_id::maximum_qos:
        out.maximum_qos = u8;
        break;
    case property_id::retain_available:
        out.retain_available = u8;
        break;
    case property_id::user_property:
        out.user_properties.emplace_back(v.str, v.str2);
        break;
    case property_id::maximum_packet_size:
        out.maximum_packet_size = v.num;
        break;
    case property_id::wildcard_subscription_available:
        out.wildcard_subscription_available = u8;
        break;
    case property_id::subscription_identifier_available:
        out.subscription_identifier_available = u8;
        break;
    case property_id::shared_subscription_available:
        out.shared_subscription_available = u8;
        break;
    }
}

} // namespace

error parse_properties(std::span<const uint8_t> block, packet_type t, bool for_will, properties& out) {
    out = properties{};
    const uint32_t mask = for_will ? will_bit : bit(t);
    uint64_t seen = 0;
    detail::reader r(block);
    while (!r.empty()) {
        // The identifier is a varint on the wire even though every defined one fits in a byte.
        uint32_t raw_id;
        if (!r.varint(raw_id)) return error::malformed;
        if (raw_id >= rules.size() || rules[raw_id].kind == value_kind::none) return error::bad_property;
        const property_rule& rule = rules[raw_id];
        if ((rule.allowed & mask) == 0) return error::bad_property;
        auto id = static_cast<property_id>(raw_id);
        // Subscription identifiers repeat only in a PUBLISH the server built from several matching subscriptions;
        // in SUBSCRIBE a second one is a Protocol Error.
        bool may_repeat = id == property_id::user_property ||
                          (id == property_id::subscription_identifier && t == packet_type::publish && !for_will);
        if (!may_repeat && (seen & (uint64_t{1} << raw_id))) return error::bad_property;
        seen |= uint64_t{1} << raw_id;
        raw_value v;
        if (error e = read_value(r, rule.kind, v); e != error::none) return e;
        if (!value_allowed(id, v.num)) return error::bad_property;
        if (id == property_id::response_topic && !valid_topic_name(v.str)) return error::bad_topic;
        store(id, v, out);
    }
    return error::none;
}

namespace {

// Walks a properties value in identifier order; Sink decides whether bytes are counted or appended.
template <typename Sink> void emit_all(const properties& p, Sink& s) {
    auto byte = [&](property_id id, const std::optional<uint8_t>& v) {
        if (v) {
            s.id(id);
            s.u8(*v);
        }
    };
    auto u16 = [&](property_id id, const std::optional<uint16_t>& v) {
        if (v) {
            s.id(id);
            s.u16(*v);
        }
    };
    auto u32 = [&](property_id id, const std::optional<uint32_t>& v) {
        if (v) {
            s.id(id);
            s.u32(*v);
        }
    };
    auto str = [&](property_id id, const std::optional<std::string_view>& v) {
        if (v) {
            s.id(id);
            s.str(*v);
        }
    };
    auto bin = [&](property_id id, const std::optional<std::span<const uint8_t>>& v) {
        if (v) {
            s.id(id);
            s.bin(*v);
        }
    };
    using pid = property_id;
    byte(pid::payload_format_indicator, p.payload_format_indicator);
    u32(pid::message_expiry_interval, p.message_expiry_interval);
    str(pid::content_type, p.content_type);
    str(pid::response_topic, p.response_topic);
    bin(pid::correlation_data, p.correlation_data);
    for (uint32_t v : p.subscription_identifiers) {
        s.id(pid::subscription_identifier);
        s.varint(v);
    }
    u32(pid::session_expiry_interval, p.session_expiry_interval);
    str(pid::assigned_client_identifier, p.assigned_client_identifier);
    u16(pid::server_keep_alive, p.server_keep_alive);
    str(pid::authentication_method, p.authentication_method);
    bin(pid::authentication_data, p.authentication_data);
    byte(pid::request_problem_information, p.request_problem_information);
    u32(pid::will_delay_interval, p.will_delay_interval);
    byte(pid::request_response_information, p.request_response_information);
    str(pid::response_information, p.response_information);
    str(pid::server_reference, p.server_reference);
    str(pid::reason_string, p.reason_string);
    u16(pid::receive_maximum, p.receive_maximum);
    u16(pid::topic_alias_maximum, p.topic_alias_maximum);
    u16(pid::topic_alias, p.topic_alias);
    byte(pid::maximum_qos, p.maximum_qos);
    byte(pid::retain_available, p.retain_available);
    for (const auto& [k, v] : p.user_properties) {
        s.id(pid::user_property);
        s.str(k);
        s.str(v);
    }
    u32(pid::maximum_packet_size, p.maximum_packet_size);
    byte(pid::wildcard_subscription_available, p.wildcard_subscription_available);
    byte(pid::subscription_identifier_available, p.subscription_identifier_available);
    byte(pid::shared_subscription_available, p.shared_subscription_available);
}

// Counts the bytes emit_all would write.
struct size_sink {
    size_t n = 0;
    void id(property_id) { n += 1; }
    void u8(uint8_t) { n += 1; }
    void u16(uint16_t) { n += 2; }
    void u32(uint32_t) { n += 4; }
    void varint(uint32_t v) { n += varint_size(v); }
    void str(std::string_view v) { n += 2 + v.size(); }
    void bin(std::span<const uint8_t> v) { n += 2 + v.size(); }
};

// Appends the bytes to a vector.
struct write_sink {
    std::vector<uint8_t>& out;
    void id(property_id i) { detail::put_u8(out, static_cast<uint8_t>(i)); }
    void u8(uint8_t v) { detail::put_u8(out, v); }
    void u16(uint16_t v) { detail::put_u16(out, v); }
    void u32(uint32_t v) { detail::put_u32(out, v); }
    void varint(uint32_t v) { detail::put_varint(out, v); }
    void str(std::string_view v) { detail::put_string(out, v); }
    void bin(std::span<const uint8_t> v) { detail::put_binary(out, v); }
};

} // namespace

size_t properties_size(const properties& p) {
    size_sink s;
    emit_all(p, s);
    return s.n;
}

void encode_properties(std::vector<uint8_t>& out, const properties& p) {
    size_t n = properties_size(p);
    out.reserve(out.size() + varint_size(static_cast<uint32_t>(n)) + n);
    detail::put_varint(out, static_cast<uint32_t>(n));
    write_sink s{out};
    emit_all(p, s);
}

} // namespace ringmq::mqtt
