#pragma once
// A client's address and port as the kernel reports them for an accepted socket. Each connection keeps one (on the
// shard that owns it, moved along with a handoff) in binary form: 20 bytes where the text took a 32-byte string, and
// no formatting per connection; the text is made only when a log line or the admin API asks for it.
#include <fmt/format.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace ringmq::listener {

struct peer_addr {
    std::array<uint8_t, 16> ip{}; // network order; AF_INET: the first 4 bytes
    uint16_t port = 0;            // host order
    uint8_t family = 0;           // AF_INET or AF_INET6; 0 while unknown

    // From the address getpeername or SO_PEERNAME wrote (len: the length they returned); unknown for any other family
    // or a short length.
    static peer_addr from(const sockaddr* sa, socklen_t len);
    // getpeername on a socket descriptor; unknown where it fails.
    static peer_addr of_socket(int fd);

    bool known() const { return family != 0; }
    // The address alone, as the admin API shows it: an IPv4-mapped IPv6 address as IPv4 ("127.0.0.1"); "?" unknown.
    std::string host() const;
    // As log lines show it: "127.0.0.1:5000", "[::1]:5000" (IPv4-mapped ones too: "[::ffff:127.0.0.1]:5000"), "?".
    std::string text() const;

    bool operator==(const peer_addr&) const = default;
};

} // namespace ringmq::listener

template <> struct fmt::formatter<ringmq::listener::peer_addr> : fmt::formatter<std::string_view> {
    template <class Context> auto format(const ringmq::listener::peer_addr& p, Context& ctx) const {
        return fmt::formatter<std::string_view>::format(p.text(), ctx);
    }
};
