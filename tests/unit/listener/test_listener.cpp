// Listening sockets: one per shard on one port, and what accepted sockets inherit from them (TCP_NODELAY, which the
// shards no longer set per accept); when an accept loop pauses, and the descriptor limit at start-up; a client's
// address as connections keep it and show it.
#include "listener/listener.hpp"
#include "listener/peer_addr.hpp"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>

namespace ringmq::listener {
namespace {

int connect_to(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    return fd;
}

TEST(Listener, SocketsShareOnePortAndAcceptedSocketsHaveNoDelay) {
    bound b;
    std::string why;
    ASSERT_TRUE(bind_reuseport(config::endpoint{"127.0.0.1", 0}, 2, {16, false}, b, why)) << why;
    ASSERT_EQ(b.fds.size(), 2u);
    ASSERT_NE(b.port, 0);
    for (int i = 0; i < 8; ++i) {
        const int client = connect_to(b.port);
        pollfd p[2] = {{b.fds[0], POLLIN, 0}, {b.fds[1], POLLIN, 0}};
        ASSERT_GT(::poll(p, 2, 2000), 0);
        const int lfd = (p[0].revents & POLLIN) ? b.fds[0] : b.fds[1];
        const int accepted = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
        ASSERT_GE(accepted, 0);
        int v = 0;
        socklen_t len = sizeof v;
        ASSERT_EQ(getsockopt(accepted, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
        EXPECT_NE(v, 0) << "connection " << i;
        len = sizeof v;
        ASSERT_EQ(getsockopt(lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &v, &len), 0);
        EXPECT_EQ(v, 0) << "deferred accept without being asked for";
        ::close(accepted);
        ::close(client);
    }
    close_all(b);
}

TEST(Listener, WithDeferAcceptAConnectionIsHandedOverWithItsFirstBytes) {
    bound b;
    std::string why;
    ASSERT_TRUE(bind_reuseport(config::endpoint{"127.0.0.1", 0}, 1, {16, true}, b, why)) << why;
    int v = 0;
    socklen_t len = sizeof v;
    ASSERT_EQ(getsockopt(b.fds[0], IPPROTO_TCP, TCP_DEFER_ACCEPT, &v, &len), 0);
    EXPECT_GE(v, defer_accept_s);
    const int client = connect_to(b.port); // the handshake completes on the client's side
    pollfd p{b.fds[0], POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 300), 0) << "a connection that has sent nothing was offered to accept";
    ASSERT_EQ(::send(client, "\x10", 1, MSG_NOSIGNAL), 1);
    ASSERT_EQ(::poll(&p, 1, 2000), 1);
    const int accepted = ::accept4(b.fds[0], nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(accepted, 0);
    char c = 0;
    EXPECT_EQ(::recv(accepted, &c, 1, MSG_DONTWAIT), 1) << "the first byte did not come with the connection";
    EXPECT_EQ(c, '\x10');
    ::close(accepted);
    ::close(client);
    close_all(b);
}

TEST(Listener, AcceptedSocketsInheritTheNotSentLowWaterMark) {
    // Set once on the listening socket, it must reach every accepted one (the shards make no call per accept).
    for (const int lowat : {32768, 65536}) {
        bound b;
        std::string why;
        ASSERT_TRUE(bind_reuseport(config::endpoint{"127.0.0.1", 0}, 1, {16, false, lowat}, b, why)) << why;
        const int client = connect_to(b.port);
        pollfd p{b.fds[0], POLLIN, 0};
        ASSERT_EQ(::poll(&p, 1, 2000), 1);
        const int accepted = ::accept4(b.fds[0], nullptr, nullptr, SOCK_CLOEXEC);
        ASSERT_GE(accepted, 0);
        int v = 0;
        socklen_t len = sizeof v;
        ASSERT_EQ(getsockopt(accepted, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, &len), 0);
        EXPECT_EQ(v, lowat);
        ::close(accepted);
        ::close(client);
        close_all(b);
    }
}

TEST(Listener, AnAddressNotOnThisHostIsRefusedNamingIt) {
    bound b;
    std::string why;
    EXPECT_FALSE(bind_reuseport(config::endpoint{"192.0.2.1", 0}, 2, {16, true}, b, why)); // TEST-NET-1, never local
    EXPECT_NE(why.find("192.0.2.1"), std::string::npos) << why;
    EXPECT_TRUE(b.fds.empty());
}

TEST(AcceptPacer, PausesOnlyForLackOfDescriptorsOrMemory) {
    accept_pacer p("test");
    for (const int err : {ECONNABORTED, EPERM, EPROTO, EINVAL})
        EXPECT_FALSE(p.failed(-err)) << err << ": one connection's trouble, accept on at once";
    EXPECT_EQ(p.paused(), 0u);
    for (const int err : {EMFILE, ENFILE, ENOBUFS, ENOMEM})
        EXPECT_TRUE(p.failed(-err)) << err;
    EXPECT_EQ(p.paused(), 4u);
    p.accepted();
    EXPECT_TRUE(p.failed(-EMFILE)) << "a new episode pauses again";
    EXPECT_EQ(p.paused(), 5u);
}

TEST(AcceptPacer, RaisingTheDescriptorLimitNeverLowersIt) {
    rlimit before{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &before), 0);
    const uint64_t now = raise_fd_limit();
    EXPECT_GE(now, static_cast<uint64_t>(before.rlim_cur));
    rlimit after{};
    ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &after), 0);
    EXPECT_EQ(static_cast<uint64_t>(after.rlim_cur), now);
    EXPECT_EQ(after.rlim_cur, before.rlim_max == RLIM_INFINITY ? after.rlim_cur : before.rlim_max)
        << "the soft limit is raised to the hard one";
}

TEST(PeerAddr, ShowsIpv4Ipv6AndMappedAddressesAsLogsAndTheAdminApiDid) {
    sockaddr_in v4{};
    v4.sin_family = AF_INET;
    v4.sin_port = htons(51234);
    ASSERT_EQ(inet_pton(AF_INET, "10.1.2.3", &v4.sin_addr), 1);
    const peer_addr a = peer_addr::from(reinterpret_cast<sockaddr*>(&v4), sizeof v4);
    EXPECT_TRUE(a.known());
    EXPECT_EQ(a.text(), "10.1.2.3:51234");
    EXPECT_EQ(fmt::format("from {}", a), "from 10.1.2.3:51234");
    EXPECT_EQ(a.host(), "10.1.2.3");
    EXPECT_EQ(a.port, 51234);

    sockaddr_in6 v6{};
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(1883);
    ASSERT_EQ(inet_pton(AF_INET6, "2001:db8::7", &v6.sin6_addr), 1);
    const peer_addr b = peer_addr::from(reinterpret_cast<sockaddr*>(&v6), sizeof v6);
    EXPECT_EQ(b.text(), "[2001:db8::7]:1883");
    EXPECT_EQ(b.host(), "2001:db8::7");

    // An IPv4 client of a dual-stack listener: logs keep the IPv6 form, the admin API shows the IPv4 address.
    ASSERT_EQ(inet_pton(AF_INET6, "::ffff:127.0.0.1", &v6.sin6_addr), 1);
    const peer_addr c = peer_addr::from(reinterpret_cast<sockaddr*>(&v6), sizeof v6);
    EXPECT_EQ(c.text(), "[::ffff:127.0.0.1]:1883");
    EXPECT_EQ(c.host(), "127.0.0.1");
}

TEST(PeerAddr, UnknownForOtherFamiliesShortLengthsAndUnconnectedSockets) {
    const peer_addr none;
    EXPECT_FALSE(none.known());
    EXPECT_EQ(none.text(), "?");
    EXPECT_EQ(none.host(), "?");
    EXPECT_EQ(none.port, 0);
    sockaddr_in v4{};
    v4.sin_family = AF_INET;
    EXPECT_FALSE(peer_addr::from(reinterpret_cast<sockaddr*>(&v4), sizeof v4 - 1).known());
    sockaddr_in6 v6{};
    v6.sin6_family = AF_INET6;
    EXPECT_FALSE(peer_addr::from(reinterpret_cast<sockaddr*>(&v6), sizeof(sockaddr_in)).known());
    sockaddr_un u{};
    u.sun_family = AF_UNIX;
    EXPECT_FALSE(peer_addr::from(reinterpret_cast<sockaddr*>(&u), sizeof u).known());
    const int lone = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_FALSE(peer_addr::of_socket(lone).known());
    ::close(lone);
}

TEST(PeerAddr, OfAnAcceptedSocketIsTheClientsOwnAddress) {
    bound b;
    std::string why;
    ASSERT_TRUE(bind_reuseport(config::endpoint{"127.0.0.1", 0}, 1, {16, false}, b, why)) << why;
    const int client = connect_to(b.port);
    const int server = ::accept4(b.fds[0], nullptr, nullptr, SOCK_CLOEXEC);
    if (server < 0) ::close(client);
    ASSERT_GE(server, 0);
    sockaddr_in mine{};
    socklen_t len = sizeof mine;
    ASSERT_EQ(getsockname(client, reinterpret_cast<sockaddr*>(&mine), &len), 0);
    const peer_addr p = peer_addr::of_socket(server);
    EXPECT_EQ(p.text(), fmt::format("127.0.0.1:{}", ntohs(mine.sin_port)));
    EXPECT_EQ(p, peer_addr::from(reinterpret_cast<sockaddr*>(&mine), len));
    ::close(server);
    ::close(client);
    close_all(b);
}

} // namespace
} // namespace ringmq::listener
