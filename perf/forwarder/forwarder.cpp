// The do-nothing forwarder of issue 4: an MQTT 3.1.1 "broker" that only CONNACKs, SUBACKs exact topic filters,
// answers PINGREQ and copies QoS 0 PUBLISH bytes verbatim to the subscribers of the identical topic. No sessions, no
// QoS 2, no wildcards, no retained messages, no limits. It is the ceiling that perf/compare measures ringmq against
// on the same host in the same run: what one core can deliver when the broker itself costs next to nothing.
//
// QoS 1 the least a broker must do on the wire: each PUBLISH gets its PUBACK and goes out verbatim (the publisher's
// packet id included), and the subscribers' PUBACKs are read and dropped. Nothing is tracked, so nothing is ever sent
// again and no window limits what is in flight: the kernel's share of a QoS 1 delivery, the ceiling of perf/compare's
// QoS 1 rows. A subscriber gets the QoS it asked for, at most 1, and every frame as published (loadgen subscribes
// with the QoS it publishes with).
//
// One thread, level-triggered epoll, non-blocking sockets with TCP_NODELAY. Each epoll batch reads every ready socket
// once, appends whole runs of same-topic PUBLISH frames to each subscriber's buffer with one copy, and then writes
// every dirty buffer with one send(): a batch per subscriber, like ringmq's own send path. Loopback only.

#include "../loadgen/mqtt_codec.hpp"

#include <CLI/CLI.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

namespace mqtt = loadgen::mqtt;

// Bytes read per socket per epoll turn; level-triggered epoll reports the socket again if more is waiting.
constexpr std::size_t read_chunk = 64 * 1024;
// A subscriber whose unsent bytes pass this is disconnected: the forwarder has no backpressure of its own, and a
// closed-loop generator never gets near it.
constexpr std::size_t out_cap = std::size_t{64} << 20;
// A partial frame larger than this closes the connection (loadgen never sends one).
constexpr std::size_t max_frame = std::size_t{1} << 20;

volatile std::sig_atomic_t stop_requested = 0;

// One client connection; owned by the forwarder's table (indexed by fd), on its only thread.
struct client {
    int fd = -1;
    bool dirty = false;           // in the turn's flush list
    bool closing = false;         // closed this turn: invisible to find(), destroyed when the turn ends
    bool want_out = false;        // EPOLLOUT armed because a send was partial
    std::vector<std::uint8_t> in; // the unparsed tail of earlier reads
    mqtt::byte_buffer out;
    std::vector<std::string> topics; // exact filters this client subscribed, for clean-up on close
};

struct string_hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

// The whole forwarder: listening socket, epoll set, clients and the exact-topic table; lives on main's thread.
class forwarder {
public:
    explicit forwarder(int listen_fd) : lfd_(listen_fd), scratch_(read_chunk) {
        ep_ = epoll_create1(EPOLL_CLOEXEC);
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.fd = lfd_;
        epoll_ctl(ep_, EPOLL_CTL_ADD, lfd_, &ev);
    }

    int run() {
        std::vector<epoll_event> evs(1024);
        while (!stop_requested) {
            const int n = epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 500);
            if (n < 0) {
                if (errno == EINTR) continue;
                std::perror("forwarder: epoll_wait");
                return 1;
            }
            for (int i = 0; i < n; ++i) {
                const int fd = evs[i].data.fd;
                if (fd == lfd_) {
                    accept_all();
                    continue;
                }
                client* c = find(fd);
                if (!c) continue;
                if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                    close_client(fd);
                    continue;
                }
                if (evs[i].events & EPOLLOUT) mark_dirty(*c);
                if (evs[i].events & EPOLLIN) on_readable(*c);
            }
            flush();
            reap_closed();
        }
        return 0;
    }

private:
    // Null for unknown fds and for clients closed during this turn (whose memory lives until the turn ends).
    client* find(int fd) {
        if (fd < 0 || static_cast<std::size_t>(fd) >= clients_.size()) return nullptr;
        client* c = clients_[fd].get();
        return c && !c->closing ? c : nullptr;
    }

    void accept_all() {
        for (;;) {
            const int fd = accept4(lfd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                    std::fprintf(stderr, "forwarder: accept: %s\n", std::strerror(errno));
                return;
            }
            const int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            if (static_cast<std::size_t>(fd) >= clients_.size()) clients_.resize(fd + 1024);
            clients_[fd] = std::make_unique<client>();
            clients_[fd]->fd = fd;
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.fd = fd;
            epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
        }
    }

    void on_readable(client& c) {
        const ssize_t r = recv(c.fd, scratch_.data(), scratch_.size(), 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            close_client(c.fd);
            return;
        }
        if (r < 0) return;
        const int fd = c.fd;
        std::size_t used;
        if (c.in.empty()) {
            used = parse(c, scratch_.data(), static_cast<std::size_t>(r));
            if (!find(fd)) return;
            c.in.assign(scratch_.data() + used, scratch_.data() + r);
        } else {
            c.in.insert(c.in.end(), scratch_.data(), scratch_.data() + r);
            used = parse(c, c.in.data(), c.in.size());
            if (!find(fd)) return;
            c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(used));
        }
        if (c.in.size() > max_frame) close_client(fd);
    }

    // Handles every whole packet in [p, p + n) and returns the bytes used. The client may be closed on return.
    std::size_t parse(client& c, const std::uint8_t* p, std::size_t n) {
        std::size_t pos = 0;
        // A run of consecutive QoS 0 PUBLISH frames on one topic, copied to the subscribers in one piece.
        std::size_t run_start = 0, run_end = 0;
        std::string_view run_topic;
        const auto end_run = [&] {
            if (run_end > run_start) forward(run_topic, p + run_start, run_end - run_start);
            run_start = run_end = 0;
        };
        while (pos < n) {
            mqtt::packet_view pv;
            const long used = mqtt::parse_packet(p + pos, n - pos, pv);
            if (used == 0) break;
            if (used < 0) {
                end_run();
                close_client(c.fd);
                return pos;
            }
            if (pv.type == mqtt::publish) {
                mqtt::publish_view pub;
                if (!mqtt::decode_publish(pv, pub) || pub.qos > 1) {
                    end_run();
                    std::fprintf(stderr, "forwarder: closing fd %d: only QoS 0 and 1 PUBLISH are forwarded\n", c.fd);
                    close_client(c.fd);
                    return pos;
                }
                if (pub.qos == 1) {
                    mqtt::encode_ack(c.out, mqtt::puback, pub.id);
                    mark_dirty(c);
                }
                if (run_end != pos || pub.topic != run_topic) {
                    end_run();
                    run_start = pos;
                    run_topic = pub.topic;
                }
                run_end = pos + static_cast<std::size_t>(used);
            } else {
                end_run();
                if (!control(c, pv)) return pos;
            }
            pos += static_cast<std::size_t>(used);
        }
        end_run();
        return pos;
    }

    // CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT; false when the client was closed.
    bool control(client& c, const mqtt::packet_view& pv) {
        switch (pv.type) {
        case mqtt::connect: {
            std::uint8_t* a = c.out.append(4);
            a[0] = mqtt::connack << 4;
            a[1] = 2;
            a[2] = 0;
            a[3] = 0;
            mark_dirty(c);
            return true;
        }
        case mqtt::subscribe: {
            if (pv.size < 2) break;
            std::vector<std::uint8_t> codes;
            std::size_t pos = 2;
            while (pos + 2 <= pv.size) {
                const std::size_t len = mqtt::get_u16(pv.body + pos);
                if (pos + 2 + len + 1 > pv.size) break;
                std::string topic(reinterpret_cast<const char*>(pv.body + pos + 2), len);
                const std::uint8_t granted = std::min<std::uint8_t>(pv.body[pos + 2 + len] & 3, 1);
                pos += 2 + len + 1;
                if (topic.find_first_of("+#") != std::string::npos) {
                    codes.push_back(0x80); // exact topics only
                    continue;
                }
                if (std::find(c.topics.begin(), c.topics.end(), topic) == c.topics.end()) {
                    subs_[topic].push_back(c.fd);
                    c.topics.push_back(std::move(topic));
                }
                codes.push_back(granted);
            }
            if (codes.empty() || pos != pv.size) break; // no filter, or a malformed one: protocol error
            const auto rem = static_cast<std::uint32_t>(2 + codes.size());
            std::uint8_t* a = c.out.append(1 + mqtt::varint_size(rem) + rem);
            *a++ = mqtt::suback << 4;
            a = mqtt::put_varint(a, rem);
            *a++ = pv.body[0];
            *a++ = pv.body[1];
            std::memcpy(a, codes.data(), codes.size());
            mark_dirty(c);
            return true;
        }
        case mqtt::pingreq:
            mqtt::encode_empty(c.out, mqtt::pingresp);
            mark_dirty(c);
            return true;
        case mqtt::puback: // a subscriber's: nothing was kept to release
            return true;
        case mqtt::disconnect:
            break;
        default:
            std::fprintf(stderr, "forwarder: closing fd %d: packet type %u is not handled\n", c.fd, pv.type);
            break;
        }
        close_client(c.fd);
        return false;
    }

    void forward(std::string_view topic, const std::uint8_t* p, std::size_t n) {
        const auto it = subs_.find(topic);
        if (it == subs_.end()) return;
        for (const int fd : it->second) {
            client* s = find(fd);
            if (!s) continue;
            if (s->out.size() + n > out_cap) {
                std::fprintf(stderr, "forwarder: closing fd %d: %zu bytes unsent\n", fd, s->out.size());
                close_client(fd);
                continue;
            }
            std::memcpy(s->out.append(n), p, n);
            mark_dirty(*s);
        }
    }

    void mark_dirty(client& c) {
        if (c.dirty) return;
        c.dirty = true;
        dirty_.push_back(c.fd);
    }

    void flush() {
        for (std::size_t i = 0; i < dirty_.size(); ++i) {
            client* c = find(dirty_[i]);
            if (!c) continue;
            c->dirty = false;
            while (!c->out.empty()) {
                const ssize_t w = send(c->fd, c->out.data(), c->out.size(), MSG_NOSIGNAL);
                if (w > 0) {
                    c->out.consume(static_cast<std::size_t>(w));
                    continue;
                }
                if (w < 0 && errno == EINTR) continue;
                if (w < 0 && errno == EAGAIN) break;
                close_client(c->fd);
                c = nullptr;
                break;
            }
            if (!c) continue;
            const bool want = !c->out.empty();
            if (want != c->want_out) {
                c->want_out = want;
                epoll_event ev{};
                ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
                ev.data.fd = c->fd;
                epoll_ctl(ep_, EPOLL_CTL_MOD, c->fd, &ev);
            }
        }
        dirty_.clear();
    }

    // Closes at the end of the turn: forward() may be walking this client's subscription lists, and its fd must not
    // be reused by an accept while events for it are still in the batch.
    void close_client(int fd) {
        client* c = find(fd);
        if (!c) return;
        c->closing = true;
        closed_.push_back(fd);
    }

    void reap_closed() {
        for (const int fd : closed_) {
            client* c = clients_[fd].get();
            for (const std::string& t : c->topics) {
                const auto it = subs_.find(t);
                if (it == subs_.end()) continue;
                auto& v = it->second;
                v.erase(std::remove(v.begin(), v.end(), fd), v.end());
                if (v.empty()) subs_.erase(it);
            }
            epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
            ::close(fd);
            clients_[fd].reset();
        }
        closed_.clear();
    }

    int lfd_;
    int ep_;
    std::vector<std::uint8_t> scratch_;
    std::vector<std::unique_ptr<client>> clients_;
    std::vector<int> dirty_;
    std::vector<int> closed_; // closed this turn, destroyed by reap_closed()
    std::unordered_map<std::string, std::vector<int>, string_hash, std::equal_to<>> subs_;
};

} // namespace

int main(int argc, char** argv) {
    CLI::App app{"forwarder: the do-nothing MQTT 3.1.1 QoS 0/1 forwarder perf/compare uses as the ceiling"};
    std::string listen = "127.0.0.1:1883";
    app.add_option("--listen", listen, "loopback address:port to listen on")->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    const auto colon = listen.rfind(':');
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    int port = -1;
    if (colon != std::string::npos) port = std::atoi(listen.c_str() + colon + 1);
    if (colon == std::string::npos || port < 0 || port > 65535 ||
        inet_pton(AF_INET, listen.substr(0, colon).c_str(), &addr.sin_addr) != 1 ||
        (ntohl(addr.sin_addr.s_addr) >> 24) != 127) {
        std::fprintf(stderr, "forwarder: --listen must be 127.x.x.x:PORT, got %s\n", listen.c_str());
        return 2;
    }
    addr.sin_port = htons(static_cast<std::uint16_t>(port));

    const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(lfd, 4096) != 0) {
        std::fprintf(stderr, "forwarder: cannot listen on %s: %s\n", listen.c_str(), std::strerror(errno));
        return 1;
    }
    struct sigaction sa {};
    sa.sa_handler = [](int) { stop_requested = 1; };
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    std::signal(SIGPIPE, SIG_IGN);
    socklen_t alen = sizeof addr;
    getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &alen); // port 0 asks the kernel for one
    char host[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &addr.sin_addr, host, sizeof host);
    std::fprintf(stderr, "forwarder ready on %s:%u\n", host, ntohs(addr.sin_port));
    return forwarder(lfd).run();
}
