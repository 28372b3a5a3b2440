// Micro-benchmarks of the MQTT codec: decode and encode per packet type.
#include "mqtt/codec.hpp"

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

using namespace ringmq::mqtt;

namespace {

std::vector<uint8_t> publish_packet(size_t payload, uint8_t qos) {
    std::vector<uint8_t> out;
    std::vector<uint8_t> data(payload, 'x');
    publish_view p{};
    p.topic = "sensors/room1/temperature";
    p.payload = data;
    p.qos = qos;
    p.packet_id = qos ? 7 : 0;
    encode_publish(out, protocol_version::v311, p);
    return out;
}

void BM_decode_publish(benchmark::State& st) {
    const auto pkt = publish_packet(static_cast<size_t>(st.range(0)), static_cast<uint8_t>(st.range(1)));
    for (auto _ : st) {
        fixed_header h{};
        parse_fixed_header(pkt.data(), pkt.size(), h);
        publish_view v{};
        auto e = decode_publish({pkt.data() + h.header_len, h.remaining_length}, h.flags, protocol_version::v311, v);
        benchmark::DoNotOptimize(e);
        benchmark::DoNotOptimize(v);
    }
    st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * pkt.size()));
}
BENCHMARK(BM_decode_publish)->Args({16, 0})->Args({16, 1})->Args({1024, 0});

void BM_encode_publish(benchmark::State& st) {
    std::vector<uint8_t> data(static_cast<size_t>(st.range(0)), 'x');
    std::vector<uint8_t> out;
    out.reserve(4096);
    publish_view p{};
    p.topic = "sensors/room1/temperature";
    p.payload = data;
    p.qos = static_cast<uint8_t>(st.range(1));
    p.packet_id = p.qos ? 7 : 0;
    for (auto _ : st) {
        out.clear();
        encode_publish(out, protocol_version::v311, p);
        benchmark::DoNotOptimize(out.data());
    }
}
BENCHMARK(BM_encode_publish)->Args({16, 0})->Args({16, 1})->Args({1024, 0});

void BM_encode_publish_prefix(benchmark::State& st) {
    uint8_t buf[max_publish_prefix];
    for (auto _ : st) {
        size_t n = encode_publish_prefix(buf, 1, false, false, 200, 25);
        benchmark::DoNotOptimize(n);
        benchmark::DoNotOptimize(buf);
    }
}
BENCHMARK(BM_encode_publish_prefix);

void BM_decode_connect(benchmark::State& st) {
    std::vector<uint8_t> out;
    connect_view c{};
    c.version = protocol_version::v311;
    c.clean_session = true;
    c.keepalive = 60;
    c.client_id = "bench-client-0001";
    c.has_username = true;
    c.username = "user";
    std::vector<uint8_t> pw{'p', 'w'};
    c.has_password = true;
    c.password = pw;
    encode_connect(out, c);
    for (auto _ : st) {
        fixed_header h{};
        parse_fixed_header(out.data(), out.size(), h);
        connect_view v{};
        auto e = decode_connect({out.data() + h.header_len, h.remaining_length}, h.flags, v);
        benchmark::DoNotOptimize(e);
        benchmark::DoNotOptimize(v);
    }
}
BENCHMARK(BM_decode_connect);

void BM_decode_subscribe(benchmark::State& st) {
    std::vector<uint8_t> out;
    subscription subs[] = {{"a/b/c", 1}, {"sensors/+/temperature", 0}, {"alerts/#", 2}};
    encode_subscribe(out, protocol_version::v311, 9, subs);
    for (auto _ : st) {
        fixed_header h{};
        parse_fixed_header(out.data(), out.size(), h);
        subscribe_view v{};
        auto e = decode_subscribe({out.data() + h.header_len, h.remaining_length}, h.flags, protocol_version::v311, v);
        benchmark::DoNotOptimize(e);
        benchmark::DoNotOptimize(v);
    }
}
BENCHMARK(BM_decode_subscribe);

void BM_decode_ack(benchmark::State& st) {
    std::vector<uint8_t> out;
    encode_ack(out, packet_type::puback, protocol_version::v311, 1234);
    for (auto _ : st) {
        fixed_header h{};
        parse_fixed_header(out.data(), out.size(), h);
        ack_view v{};
        auto e = decode_ack(packet_type::puback, {out.data() + h.header_len, h.remaining_length}, h.flags,
                            protocol_version::v311, v);
        benchmark::DoNotOptimize(e);
        benchmark::DoNotOptimize(v);
    }
}
BENCHMARK(BM_decode_ack);

} // namespace
