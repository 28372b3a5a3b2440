// Session state machine: window and packet ids, queue limits and drop policy, QoS 2 in both directions, resend state.
#include "session/session.hpp"
#include "session_program.hpp"

#include <gtest/gtest.h>

#include <deque>
#include <random>
#include <set>
#include <string>
#include <vector>

using ringmq::session::limits;
using ringmq::session::message;
using ringmq::session::message_ref;
using ringmq::session::outgoing;
using ringmq::session::qos2_arrival;
using ringmq::session::session;
using offer = ringmq::session::session::offer_result;

namespace {

message_ref msg(const std::string& payload, uint8_t qos = 1) {
    return message_ref::adopt(
        message::make("t/x", {reinterpret_cast<const uint8_t*>(payload.data()), payload.size()}, qos, false));
}

std::string text(const outgoing* o) {
    auto p = o->msg->payload();
    return {reinterpret_cast<const char*>(p.data()), p.size()};
}

// Takes every message the session lets out, acknowledging QoS 1 ones: their payloads, each followed by a comma.
std::string drain_acked(session& s) {
    std::string got;
    while (const outgoing* n = s.next_ready()) {
        got += text(n) + ",";
        if (n->qos != 0 && !s.on_puback(n->pid)) return got + "(PUBACK missed)";
    }
    return got;
}

limits lim(uint32_t inflight, uint32_t queued) {
    limits l;
    l.max_inflight = inflight;
    l.max_queued = queued;
    return l;
}

} // namespace

TEST(Message, HoldsTopicPayloadAndFlags) {
    message_ref m = message_ref::adopt(message::make("a/b", {reinterpret_cast<const uint8_t*>("xyz"), 3}, 2, true));
    EXPECT_EQ(m->topic(), "a/b");
    ASSERT_EQ(m->payload().size(), 3u);
    EXPECT_EQ(m->payload()[2], 'z');
    EXPECT_EQ(m->qos(), 2);
    EXPECT_TRUE(m->retain());
    message_ref copy = m;
    EXPECT_EQ(copy.get(), m.get());
    message* w = m->with(0, false);
    EXPECT_EQ(w->topic(), "a/b");
    EXPECT_FALSE(w->retain());
    w->release();
}

// The message is held as a PUBLISH frame with packet id 0: checked byte by byte against the encoding MQTT 3.1.1
// (2.2.3, 3.3) gives, on each side of the remaining length's 1-, 2- and 3-byte boundaries.
TEST(Message, HoldsItselfAsAPublishFrame) {
    // Remaining length = 7 + payload: 127/128, 16383/16384 and 2097151/2097152 are the boundaries.
    for (const size_t payload_len : {size_t{0}, size_t{1}, size_t{120}, size_t{121}, size_t{16376}, size_t{16377},
                                     size_t{2097144}, size_t{2097145}}) {
        for (const bool retain : {false, true}) {
            SCOPED_TRACE(testing::Message() << "payload " << payload_len << " retain " << retain);
            std::vector<uint8_t> payload(payload_len);
            for (size_t i = 0; i < payload_len; ++i)
                payload[i] = static_cast<uint8_t>(i * 7 + 1);
            message_ref m = message_ref::adopt(message::make("a/b", payload, 1, retain));
            const size_t rl = 2 + 3 + 2 + payload_len;
            std::vector<uint8_t> want{static_cast<uint8_t>(retain ? 0x33 : 0x32)};
            for (size_t v = rl;; v /= 128) {
                want.push_back(static_cast<uint8_t>(v % 128 + (v >= 128 ? 128 : 0)));
                if (v < 128) break;
            }
            want.insert(want.end(), {0, 3, 'a', '/', 'b', 0, 0});
            const size_t head = want.size();
            want.insert(want.end(), payload.begin(), payload.end());
            const auto f = m->frame();
            ASSERT_EQ(std::vector<uint8_t>(f.begin(), f.end()), want);
            EXPECT_EQ(m->frame_head(), head);
            EXPECT_EQ(m->topic(), "a/b");
            EXPECT_EQ(m->payload().data(), f.data() + head);
            EXPECT_EQ(m->payload().size(), payload_len);
            EXPECT_EQ(m->data_size(), 3 + payload_len);
            EXPECT_EQ(m->size(), sizeof(message) + want.size());
        }
    }
}

TEST(Session, QoS0OnlineIsSentWithoutPacketId) {
    session s("c", true, lim(2, 10));
    const outgoing* o = nullptr;
    EXPECT_EQ(s.offer(msg("a", 0), 0, true, &o), offer::send);
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->pid, 0);
    EXPECT_EQ(s.inflight_len(), 0u);
}

TEST(Session, WindowLimitsInflightAndQueuesTheRest) {
    session s("c", false, lim(2, 10));
    const outgoing* o = nullptr;
    EXPECT_EQ(s.offer(msg("0"), 1, true, &o), offer::send);
    const uint16_t p0 = o->pid;
    EXPECT_EQ(s.offer(msg("1"), 1, true, &o), offer::send);
    const uint16_t p1 = o->pid;
    EXPECT_NE(p0, 0);
    EXPECT_NE(p1, 0);
    EXPECT_NE(p0, p1);
    EXPECT_EQ(s.offer(msg("2"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.inflight_len(), 2u);
    EXPECT_EQ(s.queue_len(), 1u);
    EXPECT_EQ(s.next_ready(), nullptr); // window full
    EXPECT_TRUE(s.on_puback(p0));
    const outgoing* n = s.next_ready();
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(text(n), "2");
    EXPECT_NE(n->pid, p1);
    EXPECT_EQ(s.queue_len(), 0u);
}

TEST(Session, QoS0WaitsBehindQueuedMessagesToKeepOrder) {
    session s("c", false, lim(1, 10));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("0"), 1, true, &o), offer::send);
    const uint16_t p0 = o->pid;
    EXPECT_EQ(s.offer(msg("1"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("2", 0), 0, true, &o), offer::queued);
    EXPECT_TRUE(s.on_puback(p0));
    const outgoing* a = s.next_ready();
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(text(a), "1");
    // The QoS 0 message is behind a full window again but is not limited by it.
    const outgoing* b = s.next_ready();
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(text(b), "2");
    EXPECT_EQ(b->qos, 0);
    EXPECT_EQ(s.next_ready(), nullptr);
}

TEST(Session, AHeldQueueKeepsLiveMessagesBehindWhatIsAdmittedAheadOfThem) {
    session s("c", false, lim(2, 3));
    s.hold(true);
    EXPECT_FALSE(s.direct());
    const outgoing* o = nullptr;
    // Online, empty queue, free window: held, they queue all the same, QoS 0 too, up to the queue's limit.
    EXPECT_EQ(s.offer(msg("live1"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("live0", 0), 0, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("live2"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("live3", 0), 0, true, &o), offer::dropped) << "(a QoS 1 one would take live0's place)";
    EXPECT_EQ(s.next_ready(), nullptr);
    // Retained messages go ahead into the window until it is full; QoS 0 needs no room.
    const outgoing* a = s.admit(msg("ret1"), 1);
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(text(a), "ret1");
    EXPECT_NE(a->pid, 0);
    const uint16_t pa = a->pid;
    ASSERT_NE(s.admit(msg("ret2"), 1), nullptr);
    message_ref third = msg("ret3");
    EXPECT_EQ(s.admit(std::move(third), 1), nullptr);
    EXPECT_TRUE(third); // refused: still the caller's
    const outgoing* z = s.admit(msg("ret0", 0), 0);
    ASSERT_NE(z, nullptr);
    EXPECT_EQ(z->pid, 0);
    EXPECT_EQ(s.inflight_len(), 2u);
    EXPECT_TRUE(s.on_puback(pa));
    EXPECT_EQ(s.next_ready(), nullptr); // still held
    s.hold(false);
    EXPECT_FALSE(s.direct()); // the queue is not empty
    const outgoing* b = s.next_ready();
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(text(b), "live1");
    const outgoing* c = s.next_ready();
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(text(c), "live0");
    EXPECT_EQ(s.next_ready(), nullptr); // window full again (ret2, live1)
    // The window holds ret2 and live1 in that order and live2 still waits behind it.
    std::vector<std::string> in_window;
    for (const outgoing& w : s.window())
        in_window.push_back(text(&w));
    EXPECT_EQ(in_window, (std::vector<std::string>{"ret2", "live1"}));
    EXPECT_EQ(s.queue_len(), 1u);
    EXPECT_TRUE(s.on_puback(s.window().front().pid));
    const outgoing* d = s.next_ready();
    ASSERT_NE(d, nullptr);
    EXPECT_EQ(text(d), "live2");
    EXPECT_EQ(s.queue_len(), 0u);
    EXPECT_TRUE(s.direct());
}

TEST(Session, WaitingForAFlightKeepsTheQueueUntilTheLeftoversAreInFrontApartFromAHold) {
    session s("c", false, lim(2, 8));
    s.wait_flight(true);
    EXPECT_TRUE(s.waits_flight());
    EXPECT_FALSE(s.held()); // a reason of its own: the retained reads' hold is another
    EXPECT_FALSE(s.direct());
    const outgoing* o = nullptr;
    // Online, empty queue, free window: newer messages queue all the same.
    EXPECT_EQ(s.offer(msg("new0", 0), 0, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("new1"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.next_ready(), nullptr);
    // A hold that starts and ends meanwhile (retained reads) does not end the wait.
    s.hold(true);
    s.hold(false);
    EXPECT_EQ(s.next_ready(), nullptr);
    EXPECT_FALSE(s.direct());
    // The pending send's leftovers go to the front, then the wait ends: they come first, in order.
    std::vector<message_ref> left;
    left.push_back(msg("old0", 0));
    left.push_back(msg("old1", 0));
    EXPECT_EQ(s.requeue_front(left), 0u);
    s.wait_flight(false);
    std::vector<std::string> order;
    while (const outgoing* n = s.next_ready())
        order.push_back(text(n));
    EXPECT_EQ(order, (std::vector<std::string>{"old0", "old1", "new0", "new1"}));
    EXPECT_TRUE(s.direct()); // new1 is in the window, nothing queued
    // Nor does the end of a wait end a hold that began before it.
    s.hold(true);
    s.wait_flight(true);
    s.wait_flight(false);
    EXPECT_EQ(s.offer(msg("new2", 0), 0, true, &o), offer::queued);
    EXPECT_EQ(s.next_ready(), nullptr);
    s.hold(false);
    const outgoing* n2 = s.next_ready();
    ASSERT_NE(n2, nullptr);
    EXPECT_EQ(text(n2), "new2");
}

TEST(Session, OfflineMessagesAreQueuedAndFullQueueDropsNewest) {
    session s("c", false, lim(5, 3));
    const outgoing* o = nullptr;
    for (int i = 0; i < 5; ++i) {
        const offer r = s.offer(msg(std::to_string(i)), 1, false, &o);
        EXPECT_EQ(r, i < 3 ? offer::queued : offer::dropped) << i;
    }
    EXPECT_EQ(s.dropped(), 2u);
    std::string got;
    while (const outgoing* n = s.next_ready())
        got += text(n);
    EXPECT_EQ(got, "012");
}

TEST(Session, AMessageThatWouldBeDroppedIsRefusedWhenAskedAndNotCounted) {
    // The broker refuses the message of a client it holds rather than drop it (shard::offer_to): the client was not
    // answered and sends it again, so it is no loss and the session does not count it as dropped.
    session s("c", false, lim(1, 2));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("a"), 1, true, &o), offer::send);
    EXPECT_EQ(s.offer(msg("b"), 1, true, &o, false, true), offer::queued)
        << "refuse changes nothing while room is left";
    EXPECT_EQ(s.offer(msg("c"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("d"), 1, true, &o, true, true), offer::queued) << "within the quarter past the limit";
    EXPECT_EQ(s.offer(msg("e"), 1, true, &o, true, true), offer::refused);
    EXPECT_EQ(s.offer(msg("f"), 1, true, &o, false, true), offer::refused);
    EXPECT_EQ(s.dropped(), 0u);
    EXPECT_EQ(s.queue_len(), 3u);
    EXPECT_EQ(s.offer(msg("g"), 1, true, &o), offer::dropped) << "without refuse it is dropped and counted";
    EXPECT_EQ(s.dropped(), 1u);
    ASSERT_TRUE(s.on_puback(s.window().front().pid));
    EXPECT_EQ(drain_acked(s), "b,c,d,");
}

TEST(Session, PastTheLimitIsQueuedWithinAQuarterMoreWhenAsked) {
    // The broker holds the publisher of such a message back (shard::may_hold_publisher): it is queued, in order, past
    // the limits by up to a quarter of them (at least one message), and counts against them from then on.
    session s("c", false, lim(1, 2));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("a"), 1, true, &o), offer::send);
    EXPECT_EQ(s.offer(msg("b"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("c"), 1, true, &o), offer::queued) << "the queue is full now";
    EXPECT_EQ(s.offer(msg("d"), 1, true, &o), offer::dropped) << "without past_limit the limit holds";
    EXPECT_EQ(s.offer(msg("e"), 1, true, &o, true), offer::queued) << "2 + max(2 / 4, 1)";
    EXPECT_EQ(s.offer(msg("f"), 1, true, &o, true), offer::dropped) << "past the quarter too";
    EXPECT_EQ(s.queue_len(), 3u);
    EXPECT_EQ(s.dropped(), 2u);
    ASSERT_TRUE(s.on_puback(s.window().front().pid));
    EXPECT_EQ(drain_acked(s), "b,c,e,");

    // Bytes: each message is "t/x" and its payload. The queue holds 100 bytes, 125 with past_limit.
    limits l = lim(1, 0);
    l.max_queued_bytes = 100;
    session b("c", false, l);
    ASSERT_EQ(b.offer(msg("w"), 1, true, &o), offer::send);
    EXPECT_EQ(b.offer(msg(std::string(97, 'x')), 1, true, &o), offer::queued);
    EXPECT_EQ(b.offer(msg(std::string(22, 'y')), 1, true, &o), offer::dropped);
    EXPECT_EQ(b.offer(msg(std::string(22, 'y')), 1, true, &o, true), offer::queued) << "125 bytes";
    EXPECT_EQ(b.offer(msg("z"), 1, true, &o, true), offer::dropped) << "129 bytes";
    EXPECT_EQ(b.queued_bytes(), 125u);
}

limits burst(uint32_t queued, uint32_t kib) {
    limits l = lim(1, queued);
    l.burst_kib = kib;
    return l;
}

TEST(Session, BurstKiBTakeMessagesPastTheQuarterUpToTheirBound) {
    // Messages that were on their way from another shard before it could hold their publisher (shard::offer_to):
    // queued past the quarter while those stay within burst_kib (with a byte limit: while the queue's bytes stay
    // within its quarter plus burst_kib, below).
    const outgoing* o = nullptr;
    session s("c", false, burst(4, 1));
    ASSERT_EQ(s.offer(msg("a"), 1, true, &o), offer::send);
    for (int i = 0; i < 5; ++i)
        ASSERT_EQ(s.offer(msg("m" + std::to_string(i)), 1, true, &o, true), offer::queued) << i;
    // Each message is "t/x" and its payload: 5 bytes each, 25 queued.
    EXPECT_EQ(s.queued_bytes(), 25u);
    EXPECT_EQ(s.offer(msg(std::string(1021, 'x')), 1, true, &o), offer::dropped) << "only past the limit";
    EXPECT_EQ(s.offer(msg(std::string(1021, 'x')), 1, true, &o, true), offer::queued) << "1024 bytes past the quarter";
    EXPECT_EQ(s.offer(msg(""), 1, true, &o, true), offer::dropped) << "1027 bytes would pass 1 KiB";
    EXPECT_EQ(s.queued_bytes(), 1049u);

    // At most four times the limit more than the quarter, any QoS: 4 + 1 + 16 messages.
    session w("c", false, burst(4, 1024));
    ASSERT_EQ(w.offer(msg("a"), 1, true, &o), offer::send);
    int taken = 0;
    while (taken < 100 && w.offer(msg("k", 1 - taken % 2), 1 - taken % 2, true, &o, true) == offer::queued)
        ++taken;
    EXPECT_EQ(w.queue_len(), 21u);
    EXPECT_EQ(taken, 21);
    // No burst_kib, or mqtt.publisher_hold_burst = 0: none past the quarter.
    limits zero = burst(4, 1024);
    zero.burst_limits = 0;
    for (const limits& none : {burst(4, 0), zero}) {
        session z("c", false, none);
        ASSERT_EQ(z.offer(msg("a"), 1, true, &o), offer::send);
        for (int i = 0; i < 5; ++i)
            ASSERT_EQ(z.offer(msg("m"), 1, true, &o, true), offer::queued) << i;
        EXPECT_EQ(z.offer(msg("m"), 1, true, &o, true), offer::dropped);
    }

    // With a byte limit the extra counts from its quarter past it, at most 4 x the limit and at most burst_kib: a
    // queue of 100 bytes takes 100 + 25 + 400, one of 1000 bytes 1000 + 250 + 1024. Each message is 3 bytes more
    // than its payload.
    for (const auto& [limit, most] : {std::pair<uint64_t, uint64_t>{100, 525}, {1000, 2274}}) {
        limits l = burst(0, 1);
        l.max_queued_bytes = limit;
        session b("c", false, l);
        ASSERT_EQ(b.offer(msg("w"), 1, true, &o), offer::send);
        const uint64_t slack = limit + limit / 4;
        EXPECT_EQ(b.offer(msg(std::string(slack - 3, 'x')), 1, true, &o, true), offer::queued) << slack;
        EXPECT_EQ(b.offer(msg(std::string(most - slack - 3, 'z')), 1, true, &o, true), offer::queued) << most;
        EXPECT_EQ(b.offer(msg(""), 1, true, &o, true), offer::dropped) << most + 3;
        EXPECT_EQ(b.queued_bytes(), most);
    }
}

TEST(Session, WithoutAByteLimitTheBurstCountsOnlyTheBytesTakenPastTheSlack) {
    // No max_queued_bytes: the bytes the queue holds within its limits' quarter do not use up the burst's room. Until
    // stop 59 they did, so a queue of large messages at its mark had no burst room left for smaller ones already on
    // their way from another shard (the publishers' shard bounds those by a share of burst_kib, not knowing the queue's
    // bytes), and dropped them though their publishers were answered.
    const outgoing* o = nullptr;
    session s("c", false, burst(4, 1)); // a window of 1, 4 queued, 5 with the quarter, then 1 KiB past it
    ASSERT_EQ(s.offer(msg("a"), 1, true, &o), offer::send);
    for (int i = 0; i < 5; ++i)
        ASSERT_EQ(s.offer(msg(std::string(1997, 'x')), 1, true, &o, true), offer::queued) << i; // 2000 bytes each
    for (int i = 0; i < 4; ++i)
        ASSERT_EQ(s.offer(msg(std::string(253, 'y')), 1, true, &o, true), offer::queued) << i; // 256 bytes each
    EXPECT_EQ(s.queued_bytes(), 11024u);
    EXPECT_EQ(s.offer(msg(""), 1, true, &o, true), offer::dropped) << "1027 bytes past the slack";
    EXPECT_EQ(s.offer(msg(""), 1, true, &o, true, true), offer::refused);
    // The burst's bytes go back as its messages leave the queue: with the five large ones and one small one through
    // the window, and two large ones more within the quarter, one small one fits past it again (the queue holds 4768
    // bytes).
    const auto pass_one = [&s] {
        ASSERT_TRUE(s.on_puback(s.window().front().pid));
        ASSERT_NE(s.next_ready(), nullptr);
    };
    for (int i = 0; i < 6; ++i)
        pass_one();
    EXPECT_EQ(text(&s.window().front()), std::string(253, 'y')); // (the first small one, in the window)
    for (int i = 0; i < 2; ++i)
        EXPECT_EQ(s.offer(msg(std::string(1997, 'z')), 1, true, &o, true), offer::queued) << "within the quarter";
    EXPECT_EQ(s.offer(msg(std::string(253, 'w')), 1, true, &o, true), offer::queued) << "768 + 256 bytes past it";
    EXPECT_EQ(s.offer(msg(""), 1, true, &o, true), offer::dropped);
    EXPECT_EQ(s.queued_bytes(), 5024u);
}

TEST(Session, AFullQueueDropsItsOldestQoS0ForAQoS1Message) {
    // QoS 1/2 must be stored for an offline session, QoS 0 may be [MQTT-3.1.2-5].
    session s("c", false, lim(5, 3));
    const outgoing* o = nullptr;
    for (int i = 0; i < 3; ++i)
        ASSERT_EQ(s.offer(msg("z" + std::to_string(i), 0), 0, false, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("z3", 0), 0, false, &o), offer::dropped) << "a QoS 0 message drops no other";
    EXPECT_EQ(s.offer(msg("a"), 1, false, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("b"), 2, false, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("c"), 1, false, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("d"), 1, false, &o), offer::dropped) << "no QoS 0 left to drop";
    EXPECT_EQ(s.dropped(), 5u) << "z3, z0, z1, z2 and d";
    std::string got;
    while (const outgoing* n = s.next_ready())
        got += text(n);
    EXPECT_EQ(got, "abc");
}

TEST(Session, UnsentQoS0MessagesGoBackAheadOfTheQueueBehindTheWindow) {
    session s("c", false, lim(1, 4));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("w"), 1, true, &o), offer::send); // in the window
    ASSERT_EQ(s.offer(msg("q"), 1, true, &o), offer::queued);
    std::vector<message_ref> back;
    back.push_back(msg("u0", 0));
    back.push_back(msg("u1", 0));
    EXPECT_EQ(s.requeue_front(back), 0u);
    EXPECT_EQ(s.queue_len(), 3u);
    EXPECT_EQ(s.queued_bytes(), 3u + 1 + 3 + 2 + 3 + 2);
    std::string window;
    for (const outgoing& e : s.window())
        window += text(&e);
    EXPECT_EQ(window, "w") << "the window is untouched";
    ASSERT_TRUE(s.on_puback(s.window().front().pid));
    EXPECT_EQ(drain_acked(s), "u0,u1,q,");
}

TEST(Session, UnsentQoS0MessagesPastTheLimitsDropTheirOldest) {
    session s("c", false, lim(1, 3));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("q"), 1, false, &o), offer::queued);
    std::vector<message_ref> back;
    for (const char* p : {"u0", "u1", "u2"})
        back.push_back(msg(p, 0));
    EXPECT_EQ(s.requeue_front(back), 1u) << "room for two of them";
    EXPECT_EQ(s.dropped(), 1u);
    EXPECT_EQ(drain_acked(s), "u1,u2,q,") << "the oldest went";

    limits l = lim(1, 0);
    l.max_queued_bytes = 12; // each message: 3 bytes of topic plus its payload
    session b("c", false, l);
    std::vector<message_ref> more;
    for (const char* p : {"aaa", "bbb", "c"})
        more.push_back(msg(p, 0));
    EXPECT_EQ(b.requeue_front(more), 1u) << "4 + 6 bytes fit, 6 more would not";
    EXPECT_EQ(b.queued_bytes(), 10u);
    EXPECT_EQ(drain_acked(b), "bbb,c,");
}

TEST(Session, NoQoS0IsDroppedWhereDroppingThemAllWouldNotMakeRoom) {
    // Each message is 3 bytes of topic plus its payload; the queue takes 30 bytes.
    limits l = lim(1, 0);
    l.max_queued_bytes = 30;
    session s("c", false, l);
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("0000000", 0), 0, false, &o), offer::queued);      // 10 bytes
    ASSERT_EQ(s.offer(msg("111111111111111"), 1, false, &o), offer::queued); // 18 bytes
    EXPECT_EQ(s.offer(msg("2222222222222222222222"), 1, false, &o), offer::dropped)
        << "25 bytes: 18 + 25 would still pass 30";
    EXPECT_EQ(s.queue_len(), 2u) << "the QoS 0 message stays";
    EXPECT_EQ(s.offer(msg("33333333"), 1, false, &o), offer::queued) << "11 bytes fit once the QoS 0 one is gone";
    EXPECT_EQ(s.queued_bytes(), 29u);
    EXPECT_EQ(s.dropped(), 2u);
}

TEST(Session, UnlimitedQueueWhenZero) {
    session s("c", false, lim(1, 0));
    const outgoing* o = nullptr;
    for (int i = 0; i < 5000; ++i)
        ASSERT_EQ(s.offer(msg("x"), 1, false, &o), offer::queued);
    EXPECT_EQ(s.queue_len(), 5000u);
    EXPECT_EQ(s.dropped(), 0u);
}

TEST(Session, QueuedBytesLimitDropsWhatWouldPassIt) {
    // Each message is topic "t/x" (3 bytes) and a 7-byte payload: 10 bytes. The window holds 1, the queue 25 bytes.
    limits l = lim(1, 0);
    l.max_queued_bytes = 25;
    session s("c", false, l);
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("w000000"), 1, true, &o), offer::send) << "into the window: not queued, not counted";
    EXPECT_EQ(s.queued_bytes(), 0u);
    EXPECT_EQ(s.offer(msg("q000001"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.offer(msg("q000002", 0), 0, true, &o), offer::queued) << "QoS 0 behind the window counts too";
    EXPECT_EQ(s.queued_bytes(), 20u);
    EXPECT_EQ(s.offer(msg("q000003", 0), 0, true, &o), offer::dropped) << "30 bytes would pass 25";
    EXPECT_EQ(s.offer(msg("q4"), 1, true, &o), offer::queued) << "5 bytes still fit: 25";
    EXPECT_EQ(s.queued_bytes(), 25u);
    EXPECT_EQ(s.dropped(), 1u);

    // Leaving the queue (into the window, or sent as QoS 0) gives the bytes back.
    ASSERT_TRUE(s.on_puback(s.window().front().pid));
    const outgoing* n = s.next_ready();
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(text(n), "q000001");
    EXPECT_EQ(s.queued_bytes(), 15u);
    n = s.next_ready();
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(text(n), "q000002");
    EXPECT_EQ(s.queued_bytes(), 5u);
    EXPECT_EQ(s.offer(msg("q000005"), 1, true, &o), offer::queued);
    EXPECT_EQ(s.queued_bytes(), 15u);

    s.clear_messages();
    EXPECT_EQ(s.queued_bytes(), 0u);
    EXPECT_EQ(s.offer(msg("larger than the limit by itself"), 1, false, &o), offer::dropped)
        << "a message over the limit alone is never queued";
    EXPECT_EQ(s.dropped(), 2u);
}

TEST(Session, AckWithUnknownOrWrongQoSIdIsMissed) {
    session s("c", false, lim(4, 10));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("a"), 1, true, &o), offer::send);
    const uint16_t p1 = o->pid;
    ASSERT_EQ(s.offer(msg("b", 2), 2, true, &o), offer::send);
    const uint16_t p2 = o->pid;
    EXPECT_FALSE(s.on_puback(999));
    EXPECT_FALSE(s.on_puback(p2));  // QoS 2 message: PUBACK is wrong
    EXPECT_FALSE(s.on_pubrec(p1));  // QoS 1 message: PUBREC is wrong
    EXPECT_FALSE(s.on_pubcomp(p2)); // PUBCOMP before PUBREC
    EXPECT_TRUE(s.on_puback(p1));
    EXPECT_FALSE(s.on_puback(p1)); // duplicate
    EXPECT_EQ(s.inflight_len(), 1u);
}

TEST(Session, PubacksInAnyOrderFreeTheirEntriesOnly) {
    session s("c", false, lim(4, 10));
    std::vector<uint16_t> pids;
    for (const char* p : {"a", "b", "c", "d"}) {
        const outgoing* o = nullptr;
        ASSERT_EQ(s.offer(msg(p), 1, true, &o), offer::send);
        pids.push_back(o->pid);
    }
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("e"), 1, true, &o), offer::queued);
    EXPECT_TRUE(s.on_puback(pids[2])); // from the middle
    EXPECT_FALSE(s.on_puback(pids[2]));
    EXPECT_TRUE(s.on_puback(pids[0])); // the front
    EXPECT_FALSE(s.on_puback(pids[0]));
    std::vector<std::string> left;
    for (const outgoing& w : s.window())
        left.push_back(text(&w));
    EXPECT_EQ(left, (std::vector<std::string>{"b", "d"}));
    const outgoing* n = s.next_ready();
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(text(n), "e");
    const uint16_t pid_e = n->pid;
    EXPECT_TRUE(s.on_puback(pids[1])); // the front again, with the queue now empty
    EXPECT_TRUE(s.on_puback(pid_e));   // the back
    EXPECT_TRUE(s.on_puback(pids[3]));
    EXPECT_EQ(s.inflight_len(), 0u);
    EXPECT_EQ(s.next_ready(), nullptr);
}

TEST(Session, OutgoingQoS2Flow) {
    session s("c", false, lim(4, 10));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("q2", 2), 2, true, &o), offer::send);
    const uint16_t pid = o->pid;
    EXPECT_TRUE(s.on_pubrec(pid));
    ASSERT_EQ(s.window().size(), 1u);
    EXPECT_TRUE(s.window().front().released); // a reconnect resends PUBREL, not the PUBLISH
    EXPECT_TRUE(s.on_pubrec(pid));            // duplicate PUBREC: PUBREL again
    EXPECT_TRUE(s.on_pubcomp(pid));
    EXPECT_EQ(s.inflight_len(), 0u);
    EXPECT_FALSE(s.on_pubcomp(pid));
}

TEST(Session, ReleasesAreKeptInTheOrderThePubrecsCame) {
    session s("c", false, lim(4, 10));
    const outgoing* o = nullptr;
    uint16_t pid[3];
    for (uint16_t& p : pid) {
        ASSERT_EQ(s.offer(msg("q2", 2), 2, true, &o), offer::send);
        p = o->pid;
    }
    EXPECT_TRUE(s.released_in_order().empty());
    ASSERT_TRUE(s.on_pubrec(pid[2]));
    ASSERT_TRUE(s.on_pubrec(pid[0]));
    ASSERT_TRUE(s.on_pubrec(pid[2])); // a duplicate PUBREC keeps its first place
    auto ids = [&s] { return std::vector<uint16_t>(s.released_in_order().begin(), s.released_in_order().end()); };
    EXPECT_EQ(ids(), (std::vector<uint16_t>{pid[2], pid[0]}));
    ASSERT_TRUE(s.on_pubcomp(pid[2]));
    EXPECT_EQ(ids(), (std::vector<uint16_t>{pid[0]}));
    ASSERT_TRUE(s.on_pubrec(pid[1]));
    EXPECT_EQ(ids(), (std::vector<uint16_t>{pid[0], pid[1]}));
    s.clear_messages();
    EXPECT_TRUE(s.released_in_order().empty());
}

TEST(Session, UndeliveredCountsQueueAndUnacknowledgedWindow) {
    session s("c", false, lim(3, 10));
    const outgoing* o = nullptr;
    EXPECT_EQ(s.undelivered(), 0u);
    ASSERT_EQ(s.offer(msg("a"), 1, true, &o), offer::send);
    ASSERT_EQ(s.offer(msg("b", 2), 2, true, &o), offer::send);
    const uint16_t p2 = o->pid;
    ASSERT_EQ(s.offer(msg("c", 2), 2, true, &o), offer::send);
    ASSERT_EQ(s.offer(msg("d"), 1, true, &o), offer::queued);
    ASSERT_EQ(s.offer(msg("e", 0), 0, false, &o), offer::queued);
    EXPECT_EQ(s.undelivered(), 5u);
    ASSERT_TRUE(s.on_pubrec(p2)); // delivered: only its PUBCOMP is awaited
    EXPECT_EQ(s.undelivered(), 4u);
    s.clear_messages();
    EXPECT_EQ(s.undelivered(), 0u);
}

TEST(Session, IncomingQoS2DeliversOnceUntilReleased) {
    session s("c", false, lim(4, 10));
    EXPECT_EQ(s.incoming_qos2(7), qos2_arrival::fresh);
    EXPECT_EQ(s.incoming_qos2(7), qos2_arrival::duplicate); // resent PUBLISH: not delivered again
    EXPECT_EQ(s.awaiting_rel(), 1u);
    EXPECT_TRUE(s.incoming_release(7));
    EXPECT_FALSE(s.incoming_release(7));
    EXPECT_EQ(s.incoming_qos2(7), qos2_arrival::fresh); // the id may be reused after release
}

TEST(Session, IncomingQoS2BeyondMaxAwaitingRelIsRefused) {
    limits l = lim(4, 10);
    l.max_awaiting_rel = 2;
    session s("c", false, l);
    EXPECT_EQ(s.incoming_qos2(1), qos2_arrival::fresh);
    EXPECT_EQ(s.incoming_qos2(2), qos2_arrival::fresh);
    EXPECT_EQ(s.incoming_qos2(3), qos2_arrival::full);
    EXPECT_EQ(s.awaiting_rel(), 2u) << "a refused id is not recorded";
    EXPECT_EQ(s.incoming_qos2(2), qos2_arrival::duplicate) << "a resent one of those waiting is still answered";
    EXPECT_TRUE(s.incoming_release(1));
    EXPECT_EQ(s.incoming_qos2(3), qos2_arrival::fresh) << "room again once one is released";
    EXPECT_EQ(s.incoming_qos2(4), qos2_arrival::full);

    l.max_awaiting_rel = 0; // unlimited
    session u("u", false, l);
    for (uint32_t pid = 1; pid <= 65535; ++pid)
        ASSERT_EQ(u.incoming_qos2(static_cast<uint16_t>(pid)), qos2_arrival::fresh) << pid;
    EXPECT_EQ(u.awaiting_rel(), 65535u);
}

TEST(Session, WindowKeptForResendInOrder) {
    session s("c", false, lim(3, 10));
    const outgoing* o = nullptr;
    for (int i = 0; i < 5; ++i)
        s.offer(msg(std::to_string(i)), 1, true, &o);
    ASSERT_EQ(s.window().size(), 3u);
    std::string order;
    for (const outgoing& w : s.window())
        order += text(&w);
    EXPECT_EQ(order, "012");
    s.clear_messages();
    EXPECT_EQ(s.inflight_len(), 0u);
    EXPECT_EQ(s.queue_len(), 0u);
}

TEST(Session, PacketIdsSkipIdsInUseAndWrap) {
    session s("c", false, lim(65535, 0));
    const outgoing* o = nullptr;
    std::set<uint16_t> seen;
    for (int i = 0; i < 65535; ++i) {
        ASSERT_EQ(s.offer(msg("x"), 1, true, &o), offer::send);
        ASSERT_NE(o->pid, 0);
        ASSERT_TRUE(seen.insert(o->pid).second) << "duplicate id " << o->pid;
    }
    // Window full of all 65535 ids: the next waits; freeing id 500 makes exactly that id available.
    EXPECT_EQ(s.offer(msg("y"), 1, true, &o), offer::queued);
    EXPECT_TRUE(s.on_puback(500));
    const outgoing* n = s.next_ready();
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->pid, 500);
}

TEST(Session, ThePacketIdBitmapComesOnlyWithALargeWindow) {
    // A session allowed 1000 in flight but using few carries no bitmap; past 64 entries its ids move into one: the
    // ids given before it stay taken when the rotation comes round to them.
    session s("c", false, lim(1000, 0));
    const outgoing* o = nullptr;
    std::set<uint16_t> held;
    for (int i = 0; i < 64; ++i) {
        ASSERT_EQ(s.offer(msg("x"), 1, true, &o), offer::send);
        ASSERT_TRUE(held.insert(o->pid).second);
    }
    EXPECT_FALSE(s.pid_bitmap());
    ASSERT_EQ(s.offer(msg("x"), 1, true, &o), offer::send);
    EXPECT_TRUE(s.pid_bitmap());
    ASSERT_TRUE(held.insert(o->pid).second);
    for (int i = 0; i < 70000; ++i) {
        ASSERT_EQ(s.offer(msg("y"), 1, true, &o), offer::send);
        ASSERT_EQ(held.count(o->pid), 0u) << "id " << o->pid << " given while in flight, message " << i;
        ASSERT_TRUE(s.on_puback(o->pid));
    }
    EXPECT_EQ(s.inflight_len(), 65u);
    session small("d", false, lim(64, 0));
    for (int i = 0; i < 70; ++i)
        small.offer(msg("x"), 1, true, &o);
    EXPECT_FALSE(small.pid_bitmap()); // a window of 64 never holds more
}

TEST(Session, AStuckPacketIdIsSkippedWhenTheRotationComesRound) {
    // A small window (ids checked by scan only once the oldest entry is a whole rotation old): id 1 is never
    // acknowledged while 3 x 65535 others come and go, and is never given again until it is.
    session s("c", false, lim(2, 0));
    const outgoing* o = nullptr;
    ASSERT_EQ(s.offer(msg("stuck"), 1, true, &o), offer::send);
    ASSERT_EQ(o->pid, 1);
    uint16_t expect = 2;
    for (int i = 0; i < 3 * 65535; ++i) {
        ASSERT_EQ(s.offer(msg("x"), 1, true, &o), offer::send);
        ASSERT_EQ(o->pid, expect) << "message " << i;
        ASSERT_TRUE(s.on_puback(o->pid));
        expect = expect == 65535 ? 2 : static_cast<uint16_t>(expect + 1); // 1 stays taken
    }
    ASSERT_EQ(s.inflight_len(), 1u);
    EXPECT_EQ(s.window().front().pid, 1);
    // Once the window has emptied, ids follow the rotation again, 1 included.
    ASSERT_TRUE(s.on_puback(1));
    for (int i = 0; i < 65535; ++i) {
        ASSERT_EQ(s.offer(msg("y"), 1, true, &o), offer::send);
        const uint16_t pid = o->pid;
        ASSERT_TRUE(s.on_puback(pid));
        if (pid == 1) return;
    }
    FAIL() << "id 1 was not given again within a rotation";
}

TEST(Fifo, PushPopAndErase) {
    ringmq::session::fifo<int> f;
    EXPECT_TRUE(f.empty());
    for (int i = 0; i < 200; ++i)
        f.push_back(int{i});
    for (int i = 0; i < 150; ++i) {
        ASSERT_EQ(f.front(), i);
        f.pop_front();
    }
    EXPECT_EQ(f.size(), 50u); // order kept through growth and pops
    EXPECT_EQ(f.front(), 150);
    EXPECT_EQ(f.back(), 199);
    auto it = f.begin() + 10; // 160
    it = f.erase(it);
    EXPECT_EQ(*it, 161);
    EXPECT_EQ(f.size(), 49u);
    f.erase(f.begin()); // erasing the front is a pop
    EXPECT_EQ(f.front(), 151);
    int expect = 151, n = 0;
    for (int v : f) {
        if (expect == 160) ++expect;
        EXPECT_EQ(v, expect++);
        ++n;
    }
    EXPECT_EQ(n, 48);
    while (!f.empty())
        f.pop_front();
    EXPECT_EQ(f.size(), 0u);
    f.push_back(7);
    EXPECT_EQ(f.front(), 7);
}

// The ring wraps, grows while wrapped and erases from either side; a reference model (std::deque) says what it must
// hold after every step.
TEST(Fifo, RingWrapsGrowsAndErasesLikeADeque) {
    ringmq::session::fifo<int> f;
    std::deque<int> model;
    uint32_t rnd = 12345;
    auto next = [&] { return rnd = rnd * 1103515245u + 12345u, (rnd >> 16) & 0x7fff; };
    int v = 0;
    for (int step = 0; step < 20000; ++step) {
        const unsigned op = next() % 9;
        if (op < 4 || model.empty()) {
            f.push_back(int{v});
            model.push_back(v++);
        } else if (op == 8) {
            const size_t i = next() % (model.size() + 1);
            f.insert(i, int{v});
            model.insert(model.begin() + static_cast<std::ptrdiff_t>(i), v++);
        } else if (op < 6) {
            ASSERT_EQ(f.front(), model.front());
            f.pop_front();
            model.pop_front();
        } else {
            const size_t i = next() % model.size();
            auto it = f.erase(f.begin() + static_cast<std::ptrdiff_t>(i));
            model.erase(model.begin() + static_cast<std::ptrdiff_t>(i));
            if (i < model.size()) {
                ASSERT_EQ(*it, model[i]);
            } else {
                ASSERT_TRUE(it == f.end());
            }
        }
        ASSERT_EQ(f.size(), model.size());
        if (step % 97 == 0 || model.size() < 3) {
            size_t k = 0;
            for (int x : f)
                ASSERT_EQ(x, model[k++]) << "step " << step;
            ASSERT_EQ(k, model.size());
            if (!model.empty()) {
                ASSERT_EQ(f.back(), model.back());
            }
        }
    }
}

// A ring a burst grew gives most of its memory back once it holds little, not only when it is empty, and keeps its
// order through the shrinking.
TEST(Fifo, ShrinksAfterABurst) {
    ringmq::session::fifo<int> f;
    for (int i = 0; i < 2000; ++i)
        f.push_back(int{i});
    EXPECT_EQ(f.capacity(), 2048u);
    int front = 0;
    while (f.size() > 200) {
        ASSERT_EQ(f.front(), front++);
        f.pop_front();
    }
    EXPECT_EQ(f.capacity(), 512u); // under 256 of 2048 held: a quarter
    while (f.size() > 40) {
        ASSERT_EQ(f.front(), front++);
        f.pop_front();
    }
    EXPECT_EQ(f.capacity(), 128u);
    f.erase(f.begin() + 30); // the back side moves; 39 held, 128 is not above the threshold
    EXPECT_EQ(f.capacity(), 128u);
    for (int x : f) {
        if (front == 1990) ++front; // the erased one
        ASSERT_EQ(x, front++);
    }
    EXPECT_EQ(front, 2000);
}

// A message held by the fifo is released when it leaves by pop or erase (not at some later compaction), exactly once,
// through moves inside the ring (erase shifts entries; growth moves them all).
TEST(Fifo, ReleasesMessagesAsTheyLeave) {
    ringmq::session::fifo<outgoing> f;
    auto held = message_ref::adopt(message::make("t", {}, 1, false));
    for (int i = 0; i < 11; ++i) // grows 4 -> 8 -> 16 on the way
        f.push_back(outgoing{held, static_cast<uint16_t>(i + 1), 1, false});
    EXPECT_EQ(held->refs(), 12u);
    f.pop_front();
    EXPECT_EQ(held->refs(), 11u);
    f.erase(f.begin() + 5); // pid 7: the back side moves
    f.erase(f.begin() + 1); // pid 3: the front side moves
    EXPECT_EQ(held->refs(), 9u);
    f.erase(f.begin() + 7); // pid 11, the back itself
    EXPECT_EQ(held->refs(), 8u);
    EXPECT_EQ(f.size(), 7u);
    const uint16_t expect[] = {2, 4, 5, 6, 8, 9, 10};
    size_t k = 0;
    for (const outgoing& o : f)
        EXPECT_EQ(o.pid, expect[k++]);
    message_ref other = held; // copy-assign over a live reference, then move-assign over it
    other = held;
    EXPECT_EQ(held->refs(), 9u);
    other = message_ref::share(held.get());
    EXPECT_EQ(held->refs(), 9u);
    message_ref third = message_ref::share(held.get());
    other = std::move(third); // move-assign over a live reference to the same message
    EXPECT_FALSE(third);
    EXPECT_EQ(held->refs(), 9u);
    f.clear();
    EXPECT_TRUE(f.empty());
    EXPECT_EQ(held->refs(), 2u);
}

// Seeded random programs of offers, bursts, pumps, acks, admits, holds, waits for a flight, requeues, incoming QoS 2,
// reconnects and clears against a model of the session's promises (session_program.hpp; tests/fuzz/fuzz_session.cpp
// runs the same programs coverage-guided).
TEST(Session, RandomProgramsKeepEveryPromiseOfTheModel) {
    std::mt19937_64 rng(20261202);
    for (int program = 0; program < 3000; ++program) {
        std::vector<uint8_t> bytes(64 + rng() % 4000);
        for (uint8_t& b : bytes)
            b = static_cast<uint8_t>(rng());
        std::string failure;
        // One program in 100 may burn through the id rotation (about 65 k messages).
        ringmq::session::test::session_program::run(
            bytes.data(), bytes.size(), [&failure](const char* what) { failure = what; }, program % 100 == 0);
        ASSERT_EQ(failure, "") << "program " << program;
    }
}
