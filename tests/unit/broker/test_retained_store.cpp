// The retained store: store, replace and clear by topic, limits, and wildcard matching that reads only the topics
// under the filter's literal prefix yet finds exactly what matching every stored topic one by one finds, also when
// it reads in steps.
#include "broker/retained_store.hpp"

#include "routing/match.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace ringmq::broker {
namespace {

session::message_ref msg(std::string_view topic, std::string_view payload = "x", uint8_t qos = 0) {
    return session::message_ref::adopt(
        session::message::make(topic, {reinterpret_cast<const uint8_t*>(payload.data()), payload.size()}, qos, true));
}

std::string payload_of(const session::message* m) {
    return m ? std::string(reinterpret_cast<const char*>(m->payload().data()), m->payload().size()) : "<none>";
}

std::vector<std::string> matches(const retained_store& s, std::string_view filter) {
    std::vector<std::string> out;
    s.for_each_match(filter, [&](const session::message_ref& m) { out.emplace_back(m->topic()); });
    return out;
}

TEST(RetainedStore, LiteralPrefixStopsAtTheFirstWildcardAndKeepsTheParentOfHash) {
    EXPECT_EQ(retained_store::literal_prefix("a/b/#"), "a/b");
    EXPECT_EQ(retained_store::literal_prefix("a/#"), "a");
    EXPECT_EQ(retained_store::literal_prefix("#"), "");
    EXPECT_EQ(retained_store::literal_prefix("/#"), "");
    EXPECT_EQ(retained_store::literal_prefix("+/x"), "");
    EXPECT_EQ(retained_store::literal_prefix("a/+/c"), "a/");
    EXPECT_EQ(retained_store::literal_prefix("a/b"), "a/b");
    EXPECT_EQ(retained_store::literal_prefix("$SYS/+/x/#"), "$SYS/");
}

TEST(RetainedStore, StoreReplaceClearAndFind) {
    retained_store s;
    EXPECT_EQ(s.store(msg("a/b", "1"), 0), retained_store::store_result::stored);
    EXPECT_EQ(payload_of(s.find("a/b")), "1");
    EXPECT_EQ(s.store(msg("a/b", "2"), 0), retained_store::store_result::replaced);
    EXPECT_EQ(payload_of(s.find("a/b")), "2");
    EXPECT_EQ(s.size(), 1u);
    EXPECT_EQ(s.store(msg("a/b", ""), 0), retained_store::store_result::cleared);
    EXPECT_EQ(s.find("a/b"), nullptr);
    EXPECT_EQ(s.store(msg("a/b", ""), 0), retained_store::store_result::absent);
    EXPECT_EQ(s.size(), 0u);
}

TEST(RetainedStore, ALimitRefusesNewTopicsButStillReplacesAndLeavesTheRefusedMessageWithTheCaller) {
    retained_store s;
    EXPECT_EQ(s.store(msg("t/1"), 2), retained_store::store_result::stored);
    EXPECT_EQ(s.store(msg("t/2"), 2), retained_store::store_result::stored);
    session::message_ref third = msg("t/3");
    EXPECT_EQ(s.store(std::move(third), 2), retained_store::store_result::full);
    ASSERT_TRUE(third); // not moved from: the caller may still log it
    EXPECT_EQ(third->topic(), "t/3");
    EXPECT_EQ(s.store(msg("t/1", "new"), 2), retained_store::store_result::replaced);
    EXPECT_EQ(payload_of(s.find("t/1")), "new");
    EXPECT_EQ(s.find("t/3"), nullptr);
}

// A replaced message is freed; the key must then view the new message's bytes, not the freed ones (whose memory the
// allocator hands out again for the next messages of the same size).
TEST(RetainedStore, AReplacedTopicStaysFindableAfterTheOldMessageIsFreedAndItsMemoryReused) {
    retained_store s;
    ASSERT_EQ(s.store(msg("t/5", "old"), 0), retained_store::store_result::stored);
    ASSERT_EQ(s.store(msg("t/5", "new"), 0), retained_store::store_result::replaced);
    for (int i = 0; i < 200; ++i) // same sizes as the freed message: its block is reused with other topic bytes
        s.store(msg("u/" + std::to_string(i % 10), "old"), 0);
    EXPECT_EQ(payload_of(s.find("t/5")), "new");
    EXPECT_EQ(matches(s, "t/#"), std::vector<std::string>{"t/5"});
}

TEST(RetainedStore, WildcardMatchesAreExactlyThoseOfMatchingEveryTopic) {
    const std::vector<std::string> topics = {
        "a",   "a/b",         "a/b/c",    "a/bc",  "ab",     "a//b",         "/a",
        "/",   "$SYS/broker", "$SYS/x/y", "sport", "sports", "sport/tennis", "sport/tennis/p1",
        "b/a", "a/b/c/d",     "a/c/c",    "x/y/z"};
    retained_store s;
    for (const auto& t : topics)
        ASSERT_EQ(s.store(msg(t), 0), retained_store::store_result::stored) << t;
    const std::vector<std::string> filters = {"#",    "+",    "+/+",     "a/#",   "a/+",       "a/+/c",
                                              "/#",   "/+",   "$SYS/#",  "+/b",   "sport/#",   "sport/tennis/+",
                                              "a//+", "a/b",  "+/+/+/#", "a/b/#", "nothing/#", "$SYS/+/y",
                                              "+/a",  "a/+/+"};
    for (const auto& f : filters) {
        std::vector<std::string> want;
        for (const auto& t : topics)
            if (routing::topic_matches(f, t)) want.push_back(t);
        std::sort(want.begin(), want.end());
        EXPECT_EQ(matches(s, f), want) << f; // in topic order
    }
    EXPECT_EQ(matches(s, "$SYS/#"), (std::vector<std::string>{"$SYS/broker", "$SYS/x/y"}));
    const std::vector<std::string> all = matches(s, "#");
    EXPECT_EQ(all.size(), topics.size() - 2); // every topic but the two '$' ones
}

TEST(RetainedStore, AWildcardSubscribeLooksOnlyAtTopicsUnderItsLiteralPrefix) {
    retained_store s;
    for (int i = 0; i < 10000; ++i)
        s.store(msg("dev/" + std::to_string(i) + "/state"), 0);
    s.store(msg("dev/42/cfg"), 0);
    std::vector<std::string> got;
    const size_t looked =
        s.for_each_match("dev/42/#", [&](const session::message_ref& m) { got.emplace_back(m->topic()); });
    EXPECT_EQ(got, (std::vector<std::string>{"dev/42/cfg", "dev/42/state"}));
    // "dev/42" is also the prefix of dev/420..429 and dev/4200..4299: 2 + 10 + 100 topics, not 10001.
    EXPECT_EQ(looked, 112u);
    EXPECT_EQ(s.for_each_match("dev/+/cfg", [](const session::message_ref&) {}), 10001u);
    EXPECT_EQ(s.for_each_match("dev/42/cfg", [](const session::message_ref&) {}), 1u);
}

// Reads the filter in steps of `budget` topics, taking at most `room` messages per step (f refuses the rest), and
// runs `between` after each step: what a subscriber's read sees over several loop turns.
template <class Between>
std::vector<std::string> read_in_steps(const retained_store& s, std::string_view filter, size_t budget, size_t room,
                                       Between&& between, size_t* steps = nullptr, uint64_t upto = UINT64_MAX) {
    std::vector<std::string> out;
    std::string after;
    for (size_t n = 1; n < 100000; ++n) {
        size_t taken = 0;
        const retained_store::scan_result r = s.scan(
            filter, after, budget,
            [&](const session::message_ref& m) {
                if (taken == room) return false;
                ++taken;
                out.emplace_back(m->topic());
                return true;
            },
            upto);
        EXPECT_LE(r.looked, budget);
        if (r.done) {
            if (steps) *steps = n;
            return out;
        }
        between(n);
    }
    ADD_FAILURE() << "the read never ended";
    return out;
}

TEST(RetainedStore, AReadInStepsFindsWhatOneReadFindsWhateverItsBudgetAndRoom) {
    retained_store s;
    for (int i = 0; i < 300; ++i)
        s.store(msg("dev/" + std::to_string(i) + (i % 3 ? "/state" : "/cfg")), 0);
    s.store(msg("$SYS/x"), 0);
    for (const char* f : {"#", "dev/+/cfg", "dev/1/#", "dev/+/+", "+/x", "dev/7/cfg", "none/#"}) {
        const std::vector<std::string> whole = matches(s, f);
        for (size_t budget : {size_t{1}, size_t{7}, size_t{1000}})
            for (size_t room : {size_t{1}, size_t{3}, size_t{1000}})
                EXPECT_EQ(read_in_steps(s, f, budget, room, [](size_t) {}), whole)
                    << f << " budget " << budget << " room " << room;
    }
}

TEST(RetainedStore, AReadStepLooksAtNoMoreThanItsBudget) {
    retained_store s;
    for (int i = 0; i < 1000; ++i)
        s.store(msg("dev/" + std::to_string(i) + "/state"), 0);
    size_t steps = 0;
    // "+/x" matches nothing and must look at every topic: 1000 topics, 100 a step.
    EXPECT_TRUE(read_in_steps(
                    s, "+/x", 100, 1000, [](size_t) {}, &steps)
                    .empty());
    EXPECT_EQ(steps, 10u);
}

TEST(RetainedStore, AReadContinuesInPlaceWhenTopicsAreStoredAndClearedBetweenItsSteps) {
    retained_store s;
    for (int i = 10; i < 20; ++i)
        s.store(msg("t/" + std::to_string(i)), 0);
    // Steps of 2: after the first step (t/10, t/11) the topic it stopped at is cleared, one it passed and one ahead
    // are stored, and one ahead is cleared.
    const std::vector<std::string> got = read_in_steps(s, "t/#", 2, 1000, [&](size_t n) {
        if (n != 1) return;
        s.store(msg("t/11", ""), 0);
        s.store(msg("t/105"), 0);
        s.store(msg("t/155"), 0);
        s.store(msg("t/17", ""), 0);
    });
    EXPECT_EQ(got, (std::vector<std::string>{"t/10", "t/11", "t/12", "t/13", "t/14", "t/15", "t/155", "t/16", "t/18",
                                             "t/19"}));
}

TEST(RetainedStore, AReadPassesOverWhatWasStoredAfterItBegan) {
    // The shard delivers what it stores live to its subscribers, so to a reading one too: the read, which began
    // before, leaves those to the live copy, of any QoS (sent by both, a retained QoS 2 message came twice, and the
    // newest of a topic updated at QoS 0 came ahead of its older live copies). A topic replaced behind the read, or
    // one not replaced, is the read's as before.
    retained_store s;
    for (int i = 10; i < 20; ++i)
        s.store(msg("t/" + std::to_string(i)), 0);
    const uint64_t upto = s.applied();
    const std::vector<std::string> got = read_in_steps(
        s, "t/#", 2, 1000,
        [&](size_t n) {
            if (n != 1) return;
            s.store(msg("t/10", "new", 1), 0); // passed
            s.store(msg("t/15", "new", 2), 0); // ahead
            s.store(msg("t/155", "x", 1), 0);  // ahead, new
            s.store(msg("t/17", "new", 0), 0); // ahead, QoS 0
        },
        nullptr, upto);
    EXPECT_EQ(got, (std::vector<std::string>{"t/10", "t/11", "t/12", "t/13", "t/14", "t/16", "t/18", "t/19"}));
    EXPECT_EQ(s.applied(), upto + 4);
    // One topic: its replacement after the read began is not the read's.
    std::string after;
    size_t taken = 0;
    const uint64_t before = s.applied();
    s.store(msg("t/12", "newer", 1), 0);
    EXPECT_TRUE(s.scan(
                     "t/12", after, 10, [&](const session::message_ref&) { return ++taken, true; }, before)
                    .done);
    EXPECT_EQ(taken, 0u);
    EXPECT_TRUE(s.scan("t/12", after, 10, [&](const session::message_ref&) { return ++taken, true; }).done);
    EXPECT_EQ(taken, 1u);
}

TEST(RetainedStore, AReadOfOneTopicWaitsUntilItsMessageIsTaken) {
    retained_store s;
    s.store(msg("a/b"), 0);
    std::string after;
    EXPECT_FALSE(s.scan("a/b", after, 10, [](const session::message_ref&) { return false; }).done);
    size_t taken = 0;
    const retained_store::scan_result r = s.scan("a/b", after, 10, [&](const session::message_ref&) {
        ++taken;
        return true;
    });
    EXPECT_TRUE(r.done);
    EXPECT_EQ(taken, 1u);
    EXPECT_TRUE(s.scan("a/c", after, 10, [](const session::message_ref&) { return true; }).done);
}

session::message_ref stamped(std::string_view topic, std::string_view payload, uint32_t stamp) {
    session::message_ref m = msg(topic, payload);
    m->set_stamp(stamp);
    return m;
}

using sr = retained_store::store_result;

TEST(RetainedStore, CrossingUpdatesEndTheSameOnEveryShardWhateverOrderTheyArriveIn) {
    // Shard 0 retains "on" (stamp 1) while shard 1 clears the topic (stamp 2): each applies its own first, then the
    // other's. Both must end with the later update, the clear.
    retained_store s0, s1;
    EXPECT_EQ(s0.store(stamped("t", "on", 1), 0, 100, true), sr::stored);
    EXPECT_EQ(s1.store(stamped("t", "", 2), 0, 100, true), sr::absent);
    EXPECT_EQ(s0.store(stamped("t", "", 2), 0, 101, true), sr::cleared);
    EXPECT_EQ(s1.store(stamped("t", "on", 1), 0, 101, true), sr::stale) << "the tombstone remembers the later clear";
    for (const retained_store* s : {&s0, &s1}) {
        EXPECT_EQ(s->find("t"), nullptr);
        EXPECT_EQ(s->size(), 0u);
        EXPECT_TRUE(matches(*s, "#").empty()) << "tombstones are not retained messages";
        EXPECT_EQ(s->tombstones(), 1u);
    }
    // Two payloads crossing: the later stamp wins on both.
    EXPECT_EQ(s0.store(stamped("u", "a", 3), 0, 102, true), sr::stored);
    EXPECT_EQ(s1.store(stamped("u", "b", 4), 0, 102, true), sr::stored);
    EXPECT_EQ(s0.store(stamped("u", "b", 4), 0, 103, true), sr::replaced);
    EXPECT_EQ(s1.store(stamped("u", "a", 3), 0, 103, true), sr::stale);
    EXPECT_EQ(payload_of(s0.find("u")), "b");
    EXPECT_EQ(payload_of(s1.find("u")), "b");
}

// The shard a retained PUBLISH comes to asks full_for before it sends the update to the others, which store it with
// no limit: two shards at the limit that each admit a new topic at the same moment both end with both.
TEST(RetainedStore, FullForAsksWhatStoreWouldRefuseAndCopiesAdmittedElsewhereAreStoredPastTheLimit) {
    retained_store s0, s1;
    EXPECT_EQ(s0.store(stamped("old", "o", 1), 2, 0, true), sr::stored);
    EXPECT_EQ(s1.store(stamped("old", "o", 1), 0, 0, true), sr::stored);
    EXPECT_FALSE(s0.full_for("a", false, 2)) << "one place left";
    EXPECT_FALSE(s1.full_for("b", false, 2));
    EXPECT_EQ(s0.store(stamped("a", "A", 2), 2, 1, true), sr::stored);
    EXPECT_EQ(s1.store(stamped("b", "B", 3), 2, 1, true), sr::stored);
    // Each receives the other's copy, already admitted.
    EXPECT_EQ(s0.store(stamped("b", "B", 3), 0, 2, true), sr::stored);
    EXPECT_EQ(s1.store(stamped("a", "A", 2), 0, 2, true), sr::stored);
    EXPECT_EQ(s0.size(), 3u);
    EXPECT_EQ(s1.size(), 3u);
    for (const retained_store* s : {&s0, &s1}) {
        EXPECT_TRUE(s->full_for("c", false, 2)) << "a new topic at or past the limit";
        EXPECT_FALSE(s->full_for("a", false, 2)) << "a stored topic may always be replaced";
        EXPECT_FALSE(s->full_for("c", true, 2)) << "a clear is never refused";
        EXPECT_FALSE(s->full_for("c", false, 0)) << "0 = no limit";
    }
    EXPECT_EQ(s0.store(stamped("a", "", 4), 2, 3, true), sr::cleared);
    EXPECT_TRUE(s0.full_for("a", false, 2)) << "a tombstone's topic is a new one (3 - 1 = 2 stored)";
    EXPECT_EQ(s0.full_for("a", false, 2), s0.store(stamped("a", "again", 5), 2, 4, true) == sr::full);
}

TEST(RetainedStore, TombstonesArePrunedOnceOldAndNeverCountAgainstTheLimit) {
    retained_store s;
    EXPECT_EQ(s.store(stamped("a", "1", 1), 1, 0, true), sr::stored);
    EXPECT_EQ(s.store(stamped("a", "", 2), 1, 10, true), sr::cleared);
    EXPECT_EQ(s.size(), 0u);
    EXPECT_EQ(s.store(stamped("b", "2", 3), 1, 20, true), sr::stored) << "the tombstone takes no place under the limit";
    EXPECT_EQ(s.store(stamped("a", "3", 4), 1, 30, true), sr::full) << "a tombstone's topic is a new one";
    EXPECT_EQ(s.prune_tombstones(9), 0u) << "made at 10";
    EXPECT_EQ(s.prune_tombstones(10), 1u);
    EXPECT_EQ(s.tombstones(), 0u);
    EXPECT_EQ(s.size(), 1u);
    // A tombstone replaced by a later message before it is pruned stays that message.
    EXPECT_EQ(s.store(stamped("b", "", 5), 0, 40, true), sr::cleared);
    EXPECT_EQ(s.store(stamped("b", "back", 6), 0, 41, true), sr::stored);
    EXPECT_EQ(s.prune_tombstones(1000), 0u);
    EXPECT_EQ(payload_of(s.find("b")), "back");
    EXPECT_EQ(s.size(), 1u);
}

TEST(RetainedStore, WithoutTombstonesAClearErasesAndStampsStillOrder) {
    retained_store s;
    EXPECT_EQ(s.store(stamped("a", "1", 7), 0), sr::stored);
    EXPECT_EQ(s.store(stamped("a", "0", 6), 0), sr::stale);
    EXPECT_EQ(s.store(stamped("a", "", 8), 0), sr::cleared);
    EXPECT_EQ(s.tombstones(), 0u);
    EXPECT_EQ(s.store(stamped("a", "", 9), 0), sr::absent);
    // The counter wraps: 1 comes after 0xffffffff.
    EXPECT_EQ(s.store(stamped("w", "old", 0xffffffffu), 0), sr::stored);
    EXPECT_EQ(s.store(stamped("w", "new", 1), 0), sr::replaced);
    EXPECT_EQ(s.store(stamped("w", "older", 0xfffffffeu), 0), sr::stale);
    EXPECT_EQ(payload_of(s.find("w")), "new");
}

TEST(RetainedStore, ATopicLeftAloneForBillionsOfUpdatesIsStillReplacedAndCleared) {
    // The store sees every update of the node (other topics here, every 2^28th of them), so it follows the 32-bit
    // stamps round the wrap: "cfg", stored once at stamp 1, takes the update 2^31 + 1 later, and a clear at 2^32 +
    // 2^31 + 3. As 32-bit stamps both were refused as older than "cfg"'s.
    retained_store s;
    EXPECT_EQ(s.store(stamped("cfg", "v1", 1), 0), sr::stored);
    uint64_t n = 1;
    const auto others_until = [&](uint64_t last) {
        for (n += 1u << 28; n < last; n += 1u << 28)
            s.store(stamped("x", std::to_string(n), static_cast<uint32_t>(n)), 0);
    };
    others_until((uint64_t{1} << 31) + 2);
    EXPECT_EQ(s.store(stamped("cfg", "v2", 0x80000002u), 0), sr::replaced);
    EXPECT_EQ(payload_of(s.find("cfg")), "v2");
    others_until((uint64_t{1} << 32) + 0x80000003u);
    EXPECT_EQ(s.store(stamped("cfg", "", 0x80000003u), 0), sr::cleared) << "stamp 2^32 + 0x80000003";
    EXPECT_EQ(s.find("cfg"), nullptr);
}

TEST(RetainedStore, ClearsReplacedBeforeThePruneStillLeaveTheQueue) {
    // A clear then a set of the same topic: no tombstone is left, but the clear's queue entry is, until the prune.
    retained_store s;
    for (uint32_t i = 0; i < 100; ++i) {
        EXPECT_EQ(s.store(stamped("d", "", 2 * i + 1), 0, 10, true), i == 0 ? sr::absent : sr::cleared);
        EXPECT_EQ(s.store(stamped("d", "on", 2 * i + 2), 0, 10, true), sr::stored);
    }
    EXPECT_EQ(s.tombstones(), 0u);
    EXPECT_EQ(s.tombs_queued(), 100u) << "what the shard looks at to prune";
    EXPECT_EQ(s.prune_tombstones(10), 0u) << "no tombstone to drop, the topic holds a message";
    EXPECT_EQ(s.tombs_queued(), 0u);
    EXPECT_EQ(payload_of(s.find("d")), "on");
}

TEST(RetainedStore, ClearsOfTopicsNeverStoredAreKeptWithinCountAndBytes) {
    // Each clear of an unknown topic is a tombstone (an older update may still be on its way); a flood of them is
    // held to the limits by dropping the oldest before their time.
    retained_store s;
    s.set_tombstone_limits(100, 1000);
    for (uint32_t i = 0; i < 1000; ++i)
        EXPECT_EQ(s.store(stamped("gone/" + std::to_string(1000 + i), "", i + 1), 0, 10, true), sr::absent);
    EXPECT_EQ(s.tombs_queued(), 100u) << "the count limit";
    EXPECT_EQ(s.tombstones(), 100u);
    EXPECT_EQ(s.tombstones_dropped_early(), 900u);
    EXPECT_EQ(s.tombstone_bytes(), 900u) << "100 topics of 9 bytes";
    // The newest are kept: an older update of one of them is still refused, of an evicted one it is taken.
    EXPECT_EQ(s.store(stamped("gone/1999", "late", 5), 0, 11, true), sr::stale);
    EXPECT_EQ(s.store(stamped("gone/1000", "late", 5), 0, 11, true), sr::stored);
    // The byte limit: long topics.
    retained_store b;
    b.set_tombstone_limits(100, 1000);
    const std::string long_topic(300, 't');
    for (uint32_t i = 0; i < 10; ++i)
        b.store(stamped(long_topic + std::to_string(i), "", i + 1), 0, 10, true);
    EXPECT_EQ(b.tombs_queued(), 3u) << "3 x 301 bytes fit in 1000";
    EXPECT_LE(b.tombstone_bytes(), 1000u);
    EXPECT_EQ(b.tombstones_dropped_early(), 7u);
    // Pruning by time still empties it, and the bytes with it.
    EXPECT_EQ(b.prune_tombstones(10), 3u);
    EXPECT_EQ(b.tombstone_bytes(), 0u);
    // A stored topic cleared and then evicted from the queue is gone for good, not brought back.
    retained_store c;
    c.set_tombstone_limits(1, 1000);
    EXPECT_EQ(c.store(stamped("k", "v", 1), 0, 10, true), sr::stored);
    EXPECT_EQ(c.store(stamped("k", "", 2), 0, 10, true), sr::cleared);
    EXPECT_EQ(c.store(stamped("other", "", 3), 0, 10, true), sr::absent);
    EXPECT_EQ(c.find("k"), nullptr);
    EXPECT_EQ(c.size(), 0u);
    EXPECT_EQ(c.tombstones(), 1u);
}

} // namespace
} // namespace ringmq::broker
