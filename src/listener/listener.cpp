#include "listener/listener.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

namespace ringmq::listener {

namespace {

int open_one(const config::endpoint& ep, uint16_t port, int backlog, uint16_t& actual, std::string& why) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int family = AF_INET;
    if (ep.host.find(':') != std::string::npos) {
        family = AF_INET6;
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        if (inet_pton(AF_INET6, ep.host.c_str(), &a->sin6_addr) != 1) {
            why = fmt::format("invalid IPv6 address '{}'", ep.host);
            return -1;
        }
        len = sizeof(sockaddr_in6);
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        if (inet_pton(AF_INET, ep.host.c_str(), &a->sin_addr) != 1) {
            why = fmt::format("invalid IPv4 address '{}'", ep.host);
            return -1;
        }
        len = sizeof(sockaddr_in);
    }
    const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        why = fmt::format("socket(): {}", std::strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        why = fmt::format("SO_REUSEPORT: {}", std::strerror(errno));
        ::close(fd);
        return -1;
    }
    // Accepted sockets inherit TCP_NODELAY from the listening one, which saves the shards a system call per accept.
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        why = fmt::format("TCP_NODELAY: {}", std::strerror(errno));
        ::close(fd);
        return -1;
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        why =
            fmt::format("cannot bind {}: {}", config::to_string(config::endpoint{ep.host, port}), std::strerror(errno));
        ::close(fd);
        return -1;
    }
    if (::listen(fd, backlog) != 0) {
        why = fmt::format("listen(): {}", std::strerror(errno));
        ::close(fd);
        return -1;
    }
    sockaddr_storage got{};
    socklen_t gl = sizeof got;
    getsockname(fd, reinterpret_cast<sockaddr*>(&got), &gl);
    actual = ntohs(got.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&got)->sin6_port
                                             : reinterpret_cast<sockaddr_in*>(&got)->sin_port);
    return fd;
}

} // namespace

bool bind_reuseport(const config::endpoint& ep, unsigned count, int backlog, bound& out, std::string& why) {
    out = {};
    uint16_t port = ep.port;
    for (unsigned i = 0; i < count; ++i) {
        uint16_t actual = 0;
        const int fd = open_one(ep, port, backlog, actual, why);
        if (fd < 0) {
            close_all(out);
            return false;
        }
        out.fds.push_back(fd);
        port = actual;
    }
    out.port = port;
    return true;
}

void close_all(bound& b) {
    for (int fd : b.fds)
        ::close(fd);
    b.fds.clear();
}

} // namespace ringmq::listener
