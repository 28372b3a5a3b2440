#include "listener/peer_addr.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

namespace ringmq::listener {

peer_addr peer_addr::from(const sockaddr* sa, socklen_t len) {
    peer_addr p;
    if (len >= static_cast<socklen_t>(sizeof(sockaddr_in)) && sa->sa_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
        std::memcpy(p.ip.data(), &a->sin_addr, 4);
        p.port = ntohs(a->sin_port);
        p.family = AF_INET;
    } else if (len >= static_cast<socklen_t>(sizeof(sockaddr_in6)) && sa->sa_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
        std::memcpy(p.ip.data(), &a->sin6_addr, 16);
        p.port = ntohs(a->sin6_port);
        p.family = AF_INET6;
    }
    return p;
}

peer_addr peer_addr::of_socket(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return {};
    return from(reinterpret_cast<const sockaddr*>(&ss), len);
}

std::string peer_addr::host() const {
    char buf[INET6_ADDRSTRLEN];
    if (family == AF_INET6) {
        static constexpr uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(ip.data(), mapped, sizeof mapped) == 0)
            return inet_ntop(AF_INET, ip.data() + 12, buf, sizeof buf) ? buf : "?";
        return inet_ntop(AF_INET6, ip.data(), buf, sizeof buf) ? buf : "?";
    }
    if (family == AF_INET) return inet_ntop(AF_INET, ip.data(), buf, sizeof buf) ? buf : "?";
    return "?";
}

std::string peer_addr::text() const {
    char buf[INET6_ADDRSTRLEN];
    if (family == AF_INET && inet_ntop(AF_INET, ip.data(), buf, sizeof buf)) return fmt::format("{}:{}", buf, port);
    if (family == AF_INET6 && inet_ntop(AF_INET6, ip.data(), buf, sizeof buf)) return fmt::format("[{}]:{}", buf, port);
    return "?";
}

} // namespace ringmq::listener
