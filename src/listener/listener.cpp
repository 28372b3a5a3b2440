#include "listener/listener.hpp"

#include "util/log.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>

namespace ringmq::listener {

namespace {

// listen: open, bind and listen one SO_REUSEPORT socket and return it. probe: bind one without SO_REUSEPORT and
// close it again (bind_reuseport's check that nobody listens there), returning 0 when the address was free.
enum class open_mode { listen, probe };

int open_one(const config::endpoint& ep, uint16_t port, const listen_options& opt, open_mode mode, uint16_t& actual,
             std::string& why) {
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
    // A listening socket's option that it cannot take ends the open, naming the option.
    const auto set = [&](int level, int name, int value, const char* label) {
        if (setsockopt(fd, level, name, &value, sizeof value) == 0) return true;
        why = fmt::format("{}: {}", label, std::strerror(errno));
        ::close(fd);
        return false;
    };
    if (mode == open_mode::listen) {
        if (!set(SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT")) return -1;
        // Accepted sockets inherit TCP_NODELAY (and the low-water mark) from the listening one, which saves the
        // shards a system call per accept.
        if (!set(IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY")) return -1;
        if (opt.defer_accept && !set(IPPROTO_TCP, TCP_DEFER_ACCEPT, defer_accept_s, "TCP_DEFER_ACCEPT")) return -1;
        if (opt.notsent_lowat > 0 && !set(IPPROTO_TCP, TCP_NOTSENT_LOWAT, opt.notsent_lowat, "TCP_NOTSENT_LOWAT"))
            return -1;
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        why =
            fmt::format("cannot bind {}: {}", config::to_string(config::endpoint{ep.host, port}), std::strerror(errno));
        ::close(fd);
        return -1;
    }
    if (mode == open_mode::probe) {
        ::close(fd);
        return 0;
    }
    if (::listen(fd, opt.backlog) != 0) {
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

bool bind_reuseport(const config::endpoint& ep, unsigned count, const listen_options& opt, bound& out,
                    std::string& why) {
    out = {};
    uint16_t port = ep.port;
    // SO_REUSEPORT lets any process of the same user bind the port again: a second ringmq started by mistake would
    // take half the connections of the first, each broker routing only its own. A bind without it fails while
    // anyone listens there, so it is tried first (port 0 gets a fresh port, which nobody else holds). Two brokers
    // started within the same instant can still both pass it.
    if (port != 0) {
        uint16_t unused = 0;
        if (open_one(ep, port, opt, open_mode::probe, unused, why) < 0) return false;
    }
    for (unsigned i = 0; i < count; ++i) {
        uint16_t actual = 0;
        const int fd = open_one(ep, port, opt, open_mode::listen, actual, why);
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

bool accept_pacer::failed(int res) {
    const int err = -res;
    if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
        // The connection was reset or refused on its way in: the next one is unaffected.
        log::info("{}: accept failed: {}", what_, std::strerror(err));
        return false;
    }
    if (episode_failures_++ == 0)
        log::warn("{}: accept failed: {}; pausing accepts for {} ms at a time until it succeeds", what_,
                  std::strerror(err), pause_ms);
    ++paused_;
    return true;
}

void accept_pacer::accepted() {
    if (episode_failures_ == 0) return;
    log::warn("{}: accepting again after {} failed attempt{}", what_, episode_failures_,
              episode_failures_ == 1 ? "" : "s");
    episode_failures_ = 0;
}

uint64_t raise_fd_limit() {
    rlimit r{};
    if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
    if (r.rlim_cur < r.rlim_max) {
        const rlim_t was = r.rlim_cur;
        // An unlimited hard limit still stops at fs.nr_open (1048576 by default), which setrlimit will not exceed.
        r.rlim_cur = r.rlim_max == RLIM_INFINITY ? rlim_t{1} << 20 : r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) == 0)
            log::info("raised the open-file limit from {} to {}", static_cast<uint64_t>(was),
                      static_cast<uint64_t>(r.rlim_cur));
        else
            getrlimit(RLIMIT_NOFILE, &r);
    }
    return static_cast<uint64_t>(r.rlim_cur);
}

} // namespace ringmq::listener
