// libFuzzer target for the admin listener's HTTP request parser (tests/fuzz, as ARCHITECTURE.md plans; that page is
// outside this repository): the first input byte picks how the rest is cut into reads (1 to 64 bytes, or whole), which
// are fed to one http_parser as a connection's bytes. Each request handed out must keep within the parser's limits
// (header bytes, body bytes), an error must stay an error with a 4xx status, and a parser must never report a request
// it has not got; the Basic credentials and percent-decoding helpers also get each request's header and target. Any
// breach aborts. Built only with clang (meson -Dfuzz=true, see README "Fuzzing").
#include "admin/http.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>

namespace {

constexpr size_t max_header = 1024;
constexpr size_t max_body = 2048;

void check(bool ok) {
    if (!ok) std::abort();
}

void check_request(const ringmq::admin::http_request& r) {
    check(r.body.size() <= max_body);
    check(!r.method.empty());
    check(r.target.size() <= max_header);
    size_t header_bytes = 0;
    for (const auto& [k, v] : r.headers)
        header_bytes += k.size() + v.size();
    check(header_bytes <= max_header);
    if (const std::string* auth = r.header("authorization")) {
        std::string user, password;
        if (ringmq::admin::parse_basic_auth(*auth, user, password)) check(user.find(':') == std::string::npos);
    }
    std::string decoded;
    if (ringmq::admin::percent_decode(r.target, true, decoded)) check(decoded.size() <= r.target.size());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const size_t cut = data[0] % 65; // 0: the whole input in one read
    const char* p = reinterpret_cast<const char*>(data + 1);
    size_t left = size - 1;
    ringmq::admin::http_parser parser(max_header, max_body);
    bool failed = false;
    while (left > 0) {
        const size_t n = cut == 0 ? left : std::min(cut, left);
        size_t off = 0;
        while (off < n) {
            size_t used = 0;
            const auto st = parser.feed(p + off, n - off, used);
            check(used <= n - off);
            if (st == ringmq::admin::http_parser::status::error) {
                // A client's error, or 501/505 (a transfer coding or HTTP version the parser does not take).
                const int st_code = parser.error_status();
                check((st_code >= 400 && st_code < 500) || st_code == 501 || st_code == 505);
                failed = true;
                break;
            }
            off += used;
            if (st == ringmq::admin::http_parser::status::request_ready) {
                check_request(parser.take());
            } else {
                check(off == n); // need_more: the whole read was consumed
            }
        }
        if (failed) break;
        p += n;
        left -= n;
    }
    if (failed) {
        size_t used = 1;
        check(parser.feed("x", 1, used) == ringmq::admin::http_parser::status::error); // an error stays an error
    }
    return 0;
}
