#include "routing/match.hpp"
#include "routing/topic_trie.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

namespace ringmq::routing::test {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;

// Distinct, never dereferenced subscriber ids.
std::array<int, 16> g_sessions{};
subscriber_id S(size_t i) { return &g_sessions.at(i); }

using hit = std::pair<subscriber_id, std::string>;

struct match_result {
    std::vector<hit> hits; // (sub, matched filter), one per report, in report order
    std::vector<uint8_t> options;
    uint64_t mask = 0;
};

match_result run_match(const topic_trie& t, std::string_view topic) {
    match_result r;
    r.mask = t.match(topic, [&r](const subscriber_entry& e, std::string_view filter) {
        r.hits.emplace_back(e.sub, std::string(filter));
        r.options.push_back(e.options);
    });
    return r;
}

// Filters (only) that match a topic with one subscriber per filter.
std::vector<std::string> matched_filters(const topic_trie& t, std::string_view topic) {
    std::vector<std::string> out;
    for (auto& h : run_match(t, topic).hits)
        out.push_back(h.second);
    std::sort(out.begin(), out.end());
    return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Matching semantics

TEST(topic_trie_match, empty_trie_matches_nothing) {
    topic_trie t;
    EXPECT_TRUE(t.empty());
    auto r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, IsEmpty());
    EXPECT_EQ(r.mask, 0u);
}

TEST(topic_trie_match, exact_filter_matches_only_identical_topic) {
    topic_trie t;
    t.subscribe("sport/tennis/player1", S(0), 1);
    EXPECT_THAT(matched_filters(t, "sport/tennis/player1"), ElementsAre("sport/tennis/player1"));
    EXPECT_THAT(matched_filters(t, "sport/tennis"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "sport/tennis/player1/ranking"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "sport/tennis/player2"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "Sport/tennis/player1"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "sport/tennis/player1/"), IsEmpty());
}

TEST(topic_trie_match, reports_subscriber_options_and_filter) {
    topic_trie t;
    t.subscribe("a/b", S(0), 2);
    t.subscribe("a/b", S(1), 0x25);
    auto r = run_match(t, "a/b");
    ASSERT_EQ(r.hits.size(), 2u);
    std::map<subscriber_id, uint8_t> opts;
    for (size_t i = 0; i < r.hits.size(); ++i) {
        EXPECT_EQ(r.hits[i].second, "a/b");
        opts[r.hits[i].first] = r.options[i];
    }
    EXPECT_EQ(opts.at(S(0)), 2);
    EXPECT_EQ(opts.at(S(1)), 0x25);
}

TEST(topic_trie_match, plus_matches_exactly_one_level) {
    topic_trie t;
    t.subscribe("sport/+", S(0), 0);
    EXPECT_THAT(matched_filters(t, "sport/tennis"), ElementsAre("sport/+"));
    EXPECT_THAT(matched_filters(t, "sport/"), ElementsAre("sport/+")); // the empty level is a level
    EXPECT_THAT(matched_filters(t, "sport"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "sport/tennis/player1"), IsEmpty());
}

TEST(topic_trie_match, plus_in_the_middle_and_alone) {
    topic_trie t;
    t.subscribe("+/tennis/#", S(0), 0);
    t.subscribe("+", S(1), 0);
    t.subscribe("+/+", S(2), 0);
    t.subscribe("/+", S(3), 0);
    EXPECT_THAT(matched_filters(t, "sport/tennis"), ElementsAre("+/+", "+/tennis/#"));
    EXPECT_THAT(matched_filters(t, "sport/tennis/x/y"), ElementsAre("+/tennis/#"));
    EXPECT_THAT(matched_filters(t, "sport"), ElementsAre("+"));
    EXPECT_THAT(matched_filters(t, "/finance"), ElementsAre("+/+", "/+"));
    EXPECT_THAT(matched_filters(t, "a/b/c"), IsEmpty());
}

TEST(topic_trie_match, hash_matches_parent_and_all_descendants) {
    topic_trie t;
    t.subscribe("a/#", S(0), 0);
    EXPECT_THAT(matched_filters(t, "a"), ElementsAre("a/#"));
    EXPECT_THAT(matched_filters(t, "a/"), ElementsAre("a/#"));
    EXPECT_THAT(matched_filters(t, "a/b"), ElementsAre("a/#"));
    EXPECT_THAT(matched_filters(t, "a/b/c/d/e"), ElementsAre("a/#"));
    EXPECT_THAT(matched_filters(t, "b"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "ab"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "b/a"), IsEmpty());
}

TEST(topic_trie_match, lone_hash_matches_every_non_dollar_topic) {
    topic_trie t;
    t.subscribe("#", S(0), 0);
    for (std::string_view topic : {"a", "a/b", "/", "/a", "a//b", "x/y/z/w"})
        EXPECT_THAT(matched_filters(t, topic), ElementsAre("#")) << topic;
}

TEST(topic_trie_match, plus_then_hash) {
    topic_trie t;
    t.subscribe("+/#", S(0), 0);
    EXPECT_THAT(matched_filters(t, "a"), ElementsAre("+/#"));
    EXPECT_THAT(matched_filters(t, "a/b/c"), ElementsAre("+/#"));
    EXPECT_THAT(matched_filters(t, "$SYS/b"), IsEmpty());
}

TEST(topic_trie_match, dollar_topics_not_matched_by_leading_wildcards) {
    topic_trie t;
    t.subscribe("#", S(0), 0);
    t.subscribe("+/monitor/Clients", S(1), 0);
    t.subscribe("+", S(2), 0);
    t.subscribe("+/#", S(3), 0);
    EXPECT_THAT(matched_filters(t, "$SYS/monitor/Clients"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "$SYS"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "$"), IsEmpty());
    // Sanity: the same filters do match the non-'$' spelling.
    EXPECT_THAT(matched_filters(t, "SYS/monitor/Clients"), ElementsAre("#", "+/#", "+/monitor/Clients"));
}

TEST(topic_trie_match, dollar_topics_matched_by_explicit_first_level) {
    topic_trie t;
    t.subscribe("$SYS/#", S(0), 0);
    t.subscribe("$SYS/monitor/+", S(1), 0);
    t.subscribe("$SYS", S(2), 0);
    t.subscribe("$SYS/+/+/#", S(3), 0);
    EXPECT_THAT(matched_filters(t, "$SYS/monitor/Clients"), ElementsAre("$SYS/#", "$SYS/+/+/#", "$SYS/monitor/+"));
    EXPECT_THAT(matched_filters(t, "$SYS"), ElementsAre("$SYS", "$SYS/#"));
    EXPECT_THAT(matched_filters(t, "$SYS/"), ElementsAre("$SYS/#"));
    EXPECT_THAT(matched_filters(t, "$SYX/monitor/Clients"), IsEmpty());
}

TEST(topic_trie_match, dollar_below_first_level_is_an_ordinary_level) {
    topic_trie t;
    t.subscribe("a/+", S(0), 0);
    t.subscribe("#", S(1), 0);
    EXPECT_THAT(matched_filters(t, "a/$x"), ElementsAre("#", "a/+"));
}

TEST(topic_trie_match, empty_levels_are_distinct_levels) {
    topic_trie t;
    t.subscribe("a//b", S(0), 0);
    t.subscribe("/a", S(1), 0);
    t.subscribe("a/+/b", S(2), 0);
    t.subscribe("+/a", S(3), 0);
    t.subscribe("a/", S(4), 0);
    EXPECT_THAT(matched_filters(t, "a//b"), ElementsAre("a/+/b", "a//b"));
    EXPECT_THAT(matched_filters(t, "a/b"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "a/x/b"), ElementsAre("a/+/b"));
    EXPECT_THAT(matched_filters(t, "/a"), ElementsAre("+/a", "/a"));
    EXPECT_THAT(matched_filters(t, "a"), IsEmpty());
    EXPECT_THAT(matched_filters(t, "a/"), ElementsAre("a/"));
    EXPECT_THAT(matched_filters(t, "a///b"), IsEmpty());
}

TEST(topic_trie_match, subscriber_with_overlapping_filters_reported_per_filter) {
    topic_trie t;
    t.subscribe("a/b", S(0), 0);
    t.subscribe("a/+", S(0), 1);
    t.subscribe("#", S(0), 2);
    t.subscribe("a/b", S(1), 0);
    auto r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, UnorderedElementsAre(hit{S(0), "a/b"}, hit{S(0), "a/+"}, hit{S(0), "#"}, hit{S(1), "a/b"}));
}

// ---------------------------------------------------------------------------------------------------------------
// Subscribe / unsubscribe bookkeeping

TEST(topic_trie_subscribe, new_subscription_returns_true_and_replacement_false) {
    topic_trie t;
    bool active = false;
    EXPECT_TRUE(t.subscribe("a/b", S(0), 1, &active));
    EXPECT_TRUE(active);
    EXPECT_FALSE(t.subscribe("a/b", S(0), 2, &active));
    EXPECT_FALSE(active);
    EXPECT_EQ(t.subscription_count(), 1u);
    EXPECT_EQ(t.filter_count(), 1u);
    auto r = run_match(t, "a/b");
    ASSERT_EQ(r.hits.size(), 1u);
    EXPECT_EQ(r.options[0], 2) << "options must be replaced";
}

TEST(topic_trie_subscribe, became_active_only_for_first_local_subscriber) {
    topic_trie t;
    bool active = false;
    EXPECT_TRUE(t.subscribe("a/+", S(0), 0, &active));
    EXPECT_TRUE(active);
    active = true;
    EXPECT_TRUE(t.subscribe("a/+", S(1), 0, &active));
    EXPECT_FALSE(active);
    // A prefix/extension of an active filter is a different filter.
    EXPECT_TRUE(t.subscribe("a", S(0), 0, &active));
    EXPECT_TRUE(active);
    EXPECT_TRUE(t.subscribe("a/+/c", S(0), 0, &active));
    EXPECT_TRUE(active);
    // A node created by add_remote holds no local subscriber yet: the first local one still activates it.
    t.add_remote("r/s", 3);
    EXPECT_TRUE(t.subscribe("r/s", S(0), 0, &active));
    EXPECT_TRUE(active);
    EXPECT_EQ(t.filter_count(), 4u);
    EXPECT_EQ(t.subscription_count(), 5u);
    EXPECT_TRUE(t.subscribe("x", S(5), 0)); // the out-parameter is optional
}

TEST(topic_trie_subscribe, became_idle_only_when_last_local_subscriber_leaves) {
    topic_trie t;
    t.subscribe("a/b", S(0), 0);
    t.subscribe("a/b", S(1), 0);
    t.subscribe("a/b", S(2), 0);
    bool idle = true;
    EXPECT_TRUE(t.unsubscribe("a/b", S(1), &idle));
    EXPECT_FALSE(idle);
    EXPECT_THAT(run_match(t, "a/b").hits, UnorderedElementsAre(hit{S(0), "a/b"}, hit{S(2), "a/b"}));
    EXPECT_TRUE(t.unsubscribe("a/b", S(0), &idle));
    EXPECT_FALSE(idle);
    EXPECT_TRUE(t.has_local("a/b"));
    EXPECT_TRUE(t.unsubscribe("a/b", S(2), &idle));
    EXPECT_TRUE(idle);
    EXPECT_FALSE(t.has_local("a/b"));
    EXPECT_EQ(t.filter_count(), 0u);
    EXPECT_EQ(t.subscription_count(), 0u);
    EXPECT_TRUE(t.empty());
}

TEST(topic_trie_subscribe, unsubscribe_of_unknown_returns_false) {
    topic_trie t;
    bool idle = true;
    EXPECT_FALSE(t.unsubscribe("a/b", S(0), &idle));
    EXPECT_FALSE(idle);
    t.subscribe("a/b", S(0), 0);
    idle = true;
    EXPECT_FALSE(t.unsubscribe("a/b", S(1), &idle)); // other subscriber
    EXPECT_FALSE(idle);
    EXPECT_FALSE(t.unsubscribe("a", S(0), &idle)); // intermediate node, no locals
    EXPECT_FALSE(t.unsubscribe("a/b/c", S(0), &idle));
    EXPECT_FALSE(t.unsubscribe("a/+", S(0), &idle));
    EXPECT_FALSE(t.unsubscribe("a/#", S(0), &idle));
    EXPECT_EQ(t.subscription_count(), 1u);
    EXPECT_EQ(t.node_count(), 2u);
    EXPECT_TRUE(t.unsubscribe("a/b", S(0)));
    EXPECT_FALSE(t.unsubscribe("a/b", S(0)));
}

TEST(topic_trie_subscribe, node_count_counts_levels_and_pruning_returns_to_zero) {
    topic_trie t;
    t.subscribe("a/b/c", S(0), 0);
    EXPECT_EQ(t.node_count(), 3u);
    t.subscribe("a/b/d", S(0), 0);
    EXPECT_EQ(t.node_count(), 4u);
    t.subscribe("a/+/#", S(0), 0);
    EXPECT_EQ(t.node_count(), 6u);
    t.subscribe("a", S(1), 0);
    EXPECT_EQ(t.node_count(), 6u);
    t.subscribe("a//", S(1), 0);
    EXPECT_EQ(t.node_count(), 8u);

    EXPECT_TRUE(t.unsubscribe("a/b/c", S(0)));
    EXPECT_EQ(t.node_count(), 7u);
    EXPECT_TRUE(t.unsubscribe("a", S(1)));
    EXPECT_EQ(t.node_count(), 7u) << "a still has children";
    EXPECT_TRUE(t.unsubscribe("a/+/#", S(0)));
    EXPECT_EQ(t.node_count(), 5u);
    EXPECT_TRUE(t.unsubscribe("a//", S(1)));
    EXPECT_EQ(t.node_count(), 3u);
    EXPECT_FALSE(t.empty());
    EXPECT_TRUE(t.unsubscribe("a/b/d", S(0)));
    EXPECT_EQ(t.node_count(), 0u);
    EXPECT_TRUE(t.empty());
    EXPECT_THAT(run_match(t, "a/b/d").hits, IsEmpty());

    // The pruned trie is fully reusable.
    t.subscribe("a/b/c", S(2), 0);
    EXPECT_EQ(t.node_count(), 3u);
    EXPECT_THAT(run_match(t, "a/b/c").hits, ElementsAre(hit{S(2), "a/b/c"}));
}

TEST(topic_trie_subscribe, pruning_single_level_and_wildcard_only_filters) {
    topic_trie t;
    for (std::string_view f : {"#", "+", "", "/", "+/+", "#", "$SYS/#", "//"})
        t.subscribe(f, S(0), 0);
    EXPECT_EQ(t.filter_count(), 7u);
    for (std::string_view f : {"#", "+", "", "/", "+/+", "$SYS/#", "//"})
        EXPECT_TRUE(t.unsubscribe(f, S(0))) << f;
    EXPECT_EQ(t.node_count(), 0u);
    EXPECT_EQ(t.filter_count(), 0u);
}

TEST(topic_trie_subscribe, has_local_is_exact_filter_lookup) {
    topic_trie t;
    t.subscribe("a/+/c", S(0), 0);
    EXPECT_TRUE(t.has_local("a/+/c"));
    EXPECT_FALSE(t.has_local("a/b/c")) << "has_local takes a filter, not a topic";
    EXPECT_FALSE(t.has_local("a/+"));
    EXPECT_FALSE(t.has_local("a"));
    EXPECT_FALSE(t.has_local("a/#"));
    EXPECT_FALSE(t.has_local("x"));
    t.add_remote("r", 1);
    EXPECT_FALSE(t.has_local("r")) << "a remote bit is not a local subscriber";
}

TEST(topic_trie_subscribe, counts_track_filters_and_pairs) {
    topic_trie t;
    t.subscribe("a", S(0), 0);
    t.subscribe("a", S(1), 0);
    t.subscribe("b", S(0), 0);
    t.subscribe("b", S(0), 1); // replace
    t.subscribe("c/#", S(2), 0);
    EXPECT_EQ(t.filter_count(), 3u);
    EXPECT_EQ(t.subscription_count(), 4u);
    t.unsubscribe("a", S(0));
    EXPECT_EQ(t.filter_count(), 3u);
    EXPECT_EQ(t.subscription_count(), 3u);
    t.unsubscribe("a", S(1));
    EXPECT_EQ(t.filter_count(), 2u);
    EXPECT_EQ(t.subscription_count(), 2u);
}

// ---------------------------------------------------------------------------------------------------------------
// Remote shard masks

TEST(topic_trie_remote, masks_are_ored_over_matching_filters) {
    topic_trie t;
    t.add_remote("a/b", 1);
    t.add_remote("a/+", 2);
    t.add_remote("#", 5);
    t.add_remote("a/b/#", 7);
    t.add_remote("x/y", 9);
    t.add_remote("a/b", 63);
    auto r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, IsEmpty()) << "remote bits carry no local subscriber";
    EXPECT_EQ(r.mask,
              (uint64_t{1} << 1) | (uint64_t{1} << 2) | (uint64_t{1} << 5) | (uint64_t{1} << 7) | (uint64_t{1} << 63));
    EXPECT_EQ(run_match(t, "a/c").mask, (uint64_t{1} << 2) | (uint64_t{1} << 5));
    EXPECT_EQ(run_match(t, "x/y").mask, (uint64_t{1} << 5) | (uint64_t{1} << 9));
    EXPECT_EQ(run_match(t, "$x/y").mask, 0u);
}

TEST(topic_trie_remote, visits_count_the_nodes_a_match_walks_with_or_without_local_matches) {
    // The shard bounds a turn's work by them (node.turn_work_us): a lookup whose matches are all on other shards
    // reports nothing local, but walks the filters' nodes all the same.
    topic_trie t;
    for (const char* f : {"a/+/c/#", "a/b/+/#", "+/b/c/#", "a/b/c/#", "+/+/+/#"})
        t.add_remote(f, 1);
    const uint64_t before = t.visits();
    EXPECT_EQ(run_match(t, "a/b/c/d").mask, uint64_t{1} << 1);
    const uint64_t walked = t.visits() - before;
    // The root and the 11 distinct nodes of the 5 filters' first 3 levels, each once (the '#' leaves are reported).
    EXPECT_EQ(walked, 12u);
    const uint64_t at = t.visits();
    EXPECT_EQ(run_match(t, "z").mask, 0u); // only '+' then nothing: the root and its '+' child
    EXPECT_GE(t.visits() - at, 2u);
    EXPECT_LT(t.visits() - at, walked);
}

TEST(topic_trie_remote, remote_matches_counts_one_shards_matching_filters) {
    // The shard lets a gated topic go when a filter there that no gate holds takes it too: the count is per filter
    // with that shard's bit, whatever other shards or local subscribers the same filters have.
    topic_trie t;
    t.add_remote("#", 1);
    t.add_remote("a/+", 1);
    t.add_remote("a/b", 1);
    t.add_remote("a/b", 2);
    t.add_remote("a/#", 2);
    t.subscribe("a/b", S(7), 1);
    t.subscribe("x/#", S(7), 1);
    EXPECT_EQ(t.remote_matches("a/b", 1), 3u);
    EXPECT_EQ(t.remote_matches("a/b", 2), 2u);
    EXPECT_EQ(t.remote_matches("a/c", 1), 2u);
    EXPECT_EQ(t.remote_matches("a", 1), 1u);
    EXPECT_EQ(t.remote_matches("a", 2), 1u); // 'a/#' matches its parent level
    EXPECT_EQ(t.remote_matches("x/y", 1), 1u);
    EXPECT_EQ(t.remote_matches("x/y", 0), 0u);    // a local subscriber is no remote bit
    EXPECT_EQ(t.remote_matches("$SYS/a", 1), 0u); // '#' at the first level takes no '$' topic
    t.remove_remote("a/+", 1);
    EXPECT_EQ(t.remote_matches("a/b", 1), 2u);
    EXPECT_EQ(t.remote_matches("a/c", 1), 1u);
}

TEST(topic_trie_remote, remote_mask_is_exact_filter_lookup) {
    topic_trie t;
    EXPECT_EQ(t.remote_mask("a/b"), 0u);
    t.add_remote("a/b", 0);
    t.add_remote("a/b", 3);
    t.add_remote("a/b", 3); // idempotent
    EXPECT_EQ(t.remote_mask("a/b"), 0b1001u);
    EXPECT_EQ(t.remote_mask("a"), 0u);
    EXPECT_EQ(t.remote_mask("a/+"), 0u);
    EXPECT_EQ(t.remote_mask("a/b/c"), 0u);
    t.remove_remote("a/b", 0);
    EXPECT_EQ(t.remote_mask("a/b"), 0b1000u);
    t.remove_remote("a/b", 5); // not set: no change
    EXPECT_EQ(t.remote_mask("a/b"), 0b1000u);
    t.remove_remote("zz/top", 3); // unknown filter: no-op
    EXPECT_EQ(t.node_count(), 2u);
}

TEST(topic_trie_remote, remove_remote_prunes_when_nothing_is_left) {
    topic_trie t;
    t.add_remote("a/b/c", 4);
    t.add_remote("a/b/c", 6);
    t.add_remote("a/+", 4);
    EXPECT_EQ(t.node_count(), 4u);
    t.remove_remote("a/b/c", 4);
    EXPECT_EQ(t.node_count(), 4u);
    t.remove_remote("a/b/c", 6);
    EXPECT_EQ(t.node_count(), 2u);
    EXPECT_EQ(t.remote_mask("a/+"), uint64_t{1} << 4);
    t.remove_remote("a/+", 4);
    EXPECT_EQ(t.node_count(), 0u);
    EXPECT_TRUE(t.empty());
}

TEST(topic_trie_remote, local_and_remote_on_same_node_keep_each_other_alive) {
    topic_trie t;
    t.subscribe("a/b", S(0), 0);
    t.add_remote("a/b", 2);
    bool idle = false;
    EXPECT_TRUE(t.unsubscribe("a/b", S(0), &idle));
    EXPECT_TRUE(idle);
    EXPECT_EQ(t.node_count(), 2u) << "remote bit keeps the node";
    auto r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, IsEmpty());
    EXPECT_EQ(r.mask, uint64_t{1} << 2);

    t.subscribe("a/b", S(1), 0);
    t.remove_remote("a/b", 2);
    EXPECT_EQ(t.node_count(), 2u) << "local subscriber keeps the node";
    r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, ElementsAre(hit{S(1), "a/b"}));
    EXPECT_EQ(r.mask, 0u);
    t.unsubscribe("a/b", S(1));
    EXPECT_EQ(t.node_count(), 0u);
}

TEST(topic_trie_remote, dollar_topics_and_remote_masks) {
    topic_trie t;
    t.add_remote("#", 1);
    t.add_remote("+/x", 2);
    t.add_remote("$SYS/#", 3);
    t.add_remote("$SYS/+", 4);
    EXPECT_EQ(run_match(t, "$SYS/x").mask, (uint64_t{1} << 3) | (uint64_t{1} << 4));
    EXPECT_EQ(run_match(t, "$SYS").mask, uint64_t{1} << 3);
    EXPECT_EQ(run_match(t, "SYS/x").mask, (uint64_t{1} << 1) | (uint64_t{1} << 2));
}

// ---------------------------------------------------------------------------------------------------------------
// Iteration, move, clear

std::map<std::string, size_t> local_filters(const topic_trie& t) {
    std::map<std::string, size_t> out;
    t.for_each_local_filter([&out](std::string_view f, size_t n) {
        EXPECT_TRUE(out.emplace(std::string(f), n).second) << "filter visited twice: " << f;
    });
    return out;
}

TEST(topic_trie_iterate, for_each_local_filter_visits_filters_with_locals_only) {
    topic_trie t;
    EXPECT_THAT(local_filters(t), IsEmpty());
    t.subscribe("a/b", S(0), 0);
    t.subscribe("a/b", S(1), 0);
    t.subscribe("a/+", S(0), 0);
    t.subscribe("a/#", S(0), 0);
    t.subscribe("#", S(2), 0);
    t.subscribe("/", S(2), 0);
    t.subscribe("$SYS/x", S(2), 0);
    t.add_remote("r/s", 1);   // remote only
    t.add_remote("a/b/c", 1); // remote only, below a local filter
    const std::map<std::string, size_t> expected{{"a/b", 2}, {"a/+", 1}, {"a/#", 1}, {"#", 1}, {"/", 1}, {"$SYS/x", 1}};
    EXPECT_EQ(local_filters(t), expected);
    t.unsubscribe("a/b", S(0));
    t.unsubscribe("/", S(2));
    const std::map<std::string, size_t> expected2{{"a/b", 1}, {"a/+", 1}, {"a/#", 1}, {"#", 1}, {"$SYS/x", 1}};
    EXPECT_EQ(local_filters(t), expected2);
}

void fill(topic_trie& t) {
    t.subscribe("a/b", S(0), 1);
    t.subscribe("a/+", S(1), 0);
    t.subscribe("#", S(2), 0);
    t.subscribe("+/b", S(3), 0);
    t.add_remote("a/b", 4);
}

void expect_filled(const topic_trie& t) {
    auto r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, UnorderedElementsAre(hit{S(0), "a/b"}, hit{S(1), "a/+"}, hit{S(2), "#"}, hit{S(3), "+/b"}));
    EXPECT_EQ(r.mask, uint64_t{1} << 4);
    EXPECT_EQ(t.filter_count(), 4u);
    EXPECT_EQ(t.subscription_count(), 4u);
    EXPECT_EQ(t.node_count(), 6u);
}

void expect_empty(const topic_trie& t) {
    EXPECT_EQ(t.filter_count(), 0u);
    EXPECT_EQ(t.subscription_count(), 0u);
    EXPECT_EQ(t.node_count(), 0u);
    EXPECT_TRUE(t.empty());
    auto r = run_match(t, "a/b");
    EXPECT_THAT(r.hits, IsEmpty());
    EXPECT_EQ(r.mask, 0u);
    EXPECT_THAT(local_filters(t), IsEmpty());
}

TEST(topic_trie_move, move_constructor_transfers_everything) {
    topic_trie a;
    fill(a);
    topic_trie b(std::move(a));
    expect_filled(b);
    expect_empty(a); // NOLINT(bugprone-use-after-move): documented moved-from state is empty
    // Pruning in the moved-to trie walks parent pointers up to its own root: must reach 0 cleanly.
    EXPECT_TRUE(b.unsubscribe("a/b", S(0)));
    b.remove_remote("a/b", 4);
    EXPECT_TRUE(b.unsubscribe("a/+", S(1)));
    EXPECT_TRUE(b.unsubscribe("#", S(2)));
    EXPECT_TRUE(b.unsubscribe("+/b", S(3)));
    expect_empty(b);
    // The moved-from trie is usable.
    a.subscribe("x", S(3), 0);
    EXPECT_THAT(run_match(a, "x").hits, ElementsAre(hit{S(3), "x"}));
}

TEST(topic_trie_move, move_assignment_replaces_and_transfers) {
    topic_trie a;
    fill(a);
    topic_trie b;
    b.subscribe("old/filter", S(5), 0);
    b.add_remote("old/+", 9);
    b = std::move(a);
    expect_filled(b);
    EXPECT_FALSE(b.has_local("old/filter"));
    EXPECT_EQ(b.remote_mask("old/+"), 0u);
    expect_empty(a); // NOLINT(bugprone-use-after-move)
    EXPECT_TRUE(b.unsubscribe("a/+", S(1)));
    EXPECT_TRUE(b.unsubscribe("#", S(2)));
    EXPECT_TRUE(b.unsubscribe("+/b", S(3)));
    EXPECT_TRUE(b.unsubscribe("a/b", S(0)));
    b.remove_remote("a/b", 4);
    expect_empty(b);
}

TEST(topic_trie_move, self_move_assignment_keeps_contents) {
    topic_trie a;
    fill(a);
    topic_trie& alias = a;
    a = std::move(alias);
    expect_filled(a);
}

TEST(topic_trie_clear, clear_drops_everything_and_trie_is_reusable) {
    topic_trie t;
    fill(t);
    t.subscribe("deep/1/2/3/4/5/6/7/8/9", S(3), 0);
    t.clear();
    expect_empty(t);
    EXPECT_FALSE(t.has_local("a/b"));
    EXPECT_EQ(t.remote_mask("a/b"), 0u);
    fill(t);
    expect_filled(t);
}

TEST(topic_trie_clear, very_deep_filter_is_torn_down_without_recursion) {
    topic_trie t;
    std::string deep = "x";
    for (int i = 0; i < 100000; ++i)
        deep += "/x";
    t.subscribe(deep, S(0), 0);
    EXPECT_EQ(t.node_count(), 100001u);
    t.clear();
    EXPECT_TRUE(t.empty());
    t.subscribe(deep, S(0), 0); // and destructor tears it down
}

// ---------------------------------------------------------------------------------------------------------------
// Randomised comparison with a brute-force matcher

std::vector<std::string> split_levels(std::string_view s) {
    std::vector<std::string> out;
    size_t start = 0;
    for (;;) {
        size_t slash = s.find('/', start);
        if (slash == std::string_view::npos) {
            out.emplace_back(s.substr(start));
            return out;
        }
        out.emplace_back(s.substr(start, slash - start));
        start = slash + 1;
    }
}

// MQTT 3.1.1 / 5.0 section 4.7, written straight from the spec text.
bool brute_matches(std::string_view filter, std::string_view topic) {
    const auto f = split_levels(filter);
    const auto t = split_levels(topic);
    if (!topic.empty() && topic[0] == '$' && (f[0] == "+" || f[0] == "#")) return false;
    for (size_t i = 0; i < f.size(); ++i) {
        if (f[i] == "#") return true; // matches the parent level and any number of children
        if (i >= t.size()) return false;
        if (f[i] != "+" && f[i] != t[i]) return false;
    }
    return f.size() == t.size();
}

TEST(topic_trie_brute, brute_force_matcher_self_check) {
    EXPECT_TRUE(brute_matches("a/#", "a"));
    EXPECT_TRUE(brute_matches("a/+", "a/"));
    EXPECT_FALSE(brute_matches("a/+", "a"));
    EXPECT_FALSE(brute_matches("#", "$x"));
    EXPECT_TRUE(brute_matches("$x/#", "$x"));
    EXPECT_FALSE(brute_matches("a//b", "a/b"));
    EXPECT_TRUE(brute_matches("+/+", "/"));
}

struct model {
    std::map<std::string, std::map<subscriber_id, uint8_t>> locals; // filter -> sub -> options
    std::map<std::string, uint64_t> remotes;                        // filter -> mask (non-zero only)

    size_t subscriptions() const {
        size_t n = 0;
        for (auto& [f, subs] : locals)
            n += subs.size();
        return n;
    }
    // Every distinct non-empty level prefix of a filter that carries something is one node.
    size_t nodes() const {
        std::set<std::string> prefixes;
        auto add = [&prefixes](const std::string& f) {
            for (size_t i = 0; i <= f.size(); ++i)
                if (i == f.size() || f[i] == '/') prefixes.insert(f.substr(0, i));
        };
        for (auto& [f, subs] : locals)
            add(f);
        for (auto& [f, m] : remotes)
            add(f);
        return prefixes.size();
    }
};

std::string random_filter(std::mt19937& rng) {
    static constexpr std::array<std::string_view, 7> k_levels{"a", "b", "c", "", "$x", "+", "#"};
    const int n = std::uniform_int_distribution<int>(1, 4)(rng);
    std::string f;
    for (int i = 0; i < n; ++i) {
        if (i) f += '/';
        std::string_view l = k_levels[std::uniform_int_distribution<size_t>(0, k_levels.size() - 1)(rng)];
        if (l == "#" && i != n - 1) l = "+"; // '#' only as the last level
        f += l;
    }
    return f;
}

std::string random_topic(std::mt19937& rng) {
    static constexpr std::array<std::string_view, 5> k_levels{"a", "b", "c", "", "$x"};
    const int n = std::uniform_int_distribution<int>(1, 5)(rng);
    std::string t;
    for (int i = 0; i < n; ++i) {
        if (i) t += '/';
        t += k_levels[std::uniform_int_distribution<size_t>(0, k_levels.size() - 1)(rng)];
    }
    return t;
}

TEST(topic_trie_brute, random_operations_agree_with_brute_force) {
    std::mt19937 rng(20240611);
    topic_trie t;
    model m;
    constexpr size_t k_subs = 6;
    constexpr unsigned k_shards = 8;
    // A fixed pool of filters so the same filter is hit repeatedly (replace, unsubscribe, prune paths).
    std::vector<std::string> pool;
    for (int i = 0; i < 120; ++i)
        pool.push_back(random_filter(rng));
    auto pick = [&] { return pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(rng)]; };
    auto pick_sub = [&] { return S(std::uniform_int_distribution<size_t>(0, k_subs - 1)(rng)); };

    size_t matches_checked = 0, nonempty_matches = 0;
    for (int step = 0; step < 6000; ++step) {
        const int op = std::uniform_int_distribution<int>(0, 99)(rng);
        // Drift towards unsubscribing in the last third so the trie shrinks through many prune paths.
        const bool draining = step > 4000;
        if (op < (draining ? 15 : 35)) {
            const std::string f = pick();
            subscriber_id s = pick_sub();
            const uint8_t opts = static_cast<uint8_t>(rng() & 0x3f);
            auto& subs = m.locals[f];
            const bool expect_new = !subs.contains(s);
            const bool expect_active = subs.empty();
            bool active = !expect_active;
            ASSERT_EQ(t.subscribe(f, s, opts, &active), expect_new) << "subscribe " << f;
            ASSERT_EQ(active, expect_active) << "subscribe " << f;
            subs[s] = opts;
        } else if (op < 60) {
            const std::string f = pick();
            subscriber_id s = pick_sub();
            auto it = m.locals.find(f);
            const bool expect_found = it != m.locals.end() && it->second.contains(s);
            const bool expect_idle = expect_found && it->second.size() == 1;
            bool idle = !expect_idle;
            ASSERT_EQ(t.unsubscribe(f, s, &idle), expect_found) << "unsubscribe " << f;
            ASSERT_EQ(idle, expect_idle) << "unsubscribe " << f;
            if (expect_found) {
                it->second.erase(s);
                if (it->second.empty()) m.locals.erase(it);
            }
        } else if (op < (draining ? 62 : 70)) {
            const std::string f = pick();
            const unsigned shard = std::uniform_int_distribution<unsigned>(0, k_shards - 1)(rng);
            t.add_remote(f, shard);
            m.remotes[f] |= uint64_t{1} << shard;
        } else if (op < 80) {
            const std::string f = pick();
            const unsigned shard = std::uniform_int_distribution<unsigned>(0, k_shards - 1)(rng);
            t.remove_remote(f, shard);
            auto it = m.remotes.find(f);
            if (it != m.remotes.end()) {
                it->second &= ~(uint64_t{1} << shard);
                if (it->second == 0) m.remotes.erase(it);
            }
        } else {
            const std::string topic = random_topic(rng);
            std::vector<std::tuple<subscriber_id, std::string, uint8_t>> expected;
            uint64_t expected_mask = 0;
            for (auto& [f, subs] : m.locals)
                if (brute_matches(f, topic))
                    for (auto& [s, o] : subs)
                        expected.emplace_back(s, f, o);
            for (auto& [f, mask] : m.remotes)
                if (brute_matches(f, topic)) expected_mask |= mask;
            std::vector<std::tuple<subscriber_id, std::string, uint8_t>> got;
            const uint64_t mask = t.match(topic, [&got](const subscriber_entry& e, std::string_view f) {
                got.emplace_back(e.sub, std::string(f), e.options);
            });
            ASSERT_THAT(got, UnorderedElementsAreArray(expected)) << "topic '" << topic << "' step " << step;
            ASSERT_EQ(mask, expected_mask) << "topic '" << topic << "' step " << step;
            ++matches_checked;
            if (!expected.empty()) ++nonempty_matches;
        }
        ASSERT_EQ(t.filter_count(), m.locals.size()) << "step " << step;
        ASSERT_EQ(t.subscription_count(), m.subscriptions()) << "step " << step;
        ASSERT_EQ(t.node_count(), m.nodes()) << "step " << step;
    }
    // The generator must actually exercise matching, not only empty results.
    EXPECT_GT(matches_checked, 500u);
    EXPECT_GT(nonempty_matches, 100u);

    // Per-filter lookups and the route listing agree with the model.
    for (const std::string& f : pool) {
        EXPECT_EQ(t.has_local(f), m.locals.contains(f)) << f;
        auto it = m.remotes.find(f);
        EXPECT_EQ(t.remote_mask(f), it == m.remotes.end() ? 0 : it->second) << f;
    }
    std::map<std::string, size_t> expected_listing;
    for (auto& [f, subs] : m.locals)
        expected_listing[f] = subs.size();
    EXPECT_EQ(local_filters(t), expected_listing);

    // Remove everything that is left; the trie must prune back to nothing.
    for (auto& [f, subs] : m.locals)
        for (auto& [s, o] : subs)
            ASSERT_TRUE(t.unsubscribe(f, s)) << f;
    for (auto& [f, mask] : m.remotes)
        for (unsigned shard = 0; shard < k_shards; ++shard)
            if (mask & (uint64_t{1} << shard)) t.remove_remote(f, shard);
    EXPECT_EQ(t.node_count(), 0u);
    EXPECT_EQ(t.filter_count(), 0u);
    EXPECT_EQ(t.subscription_count(), 0u);
}

// Three shards' tries kept in step as the broker does (a filter's first and last local subscriber broadcast to the
// others): after every change, their first_holder_count()s add up to the number of distinct filters subscribed
// anywhere, the node's route count the admin API reports without listing the routes.
TEST(topic_trie_remote, first_holder_counts_add_up_to_the_distinct_filters) {
    constexpr unsigned shards = 3;
    std::array<topic_trie, shards> t;
    for (unsigned s = 0; s < shards; ++s)
        t[s].set_self(s);
    const std::array<std::string, 5> filters{"a", "a/+", "#", "b/c", "$x/#"};
    std::map<std::pair<unsigned, std::string>, std::set<size_t>> subs; // (shard, filter) -> subscribers
    std::mt19937 rng(7);
    for (int step = 0; step < 3000; ++step) {
        const unsigned s = rng() % shards;
        const std::string& f = filters[rng() % filters.size()];
        const size_t who = rng() % 4;
        bool edge = false;
        if (rng() % 2) {
            t[s].subscribe(f, S(who), 0, &edge);
            subs[{s, f}].insert(who);
            if (edge)
                for (unsigned o = 0; o < shards; ++o)
                    if (o != s) t[o].add_remote(f, s);
        } else {
            t[s].unsubscribe(f, S(who), &edge);
            subs[{s, f}].erase(who);
            if (edge)
                for (unsigned o = 0; o < shards; ++o)
                    if (o != s) t[o].remove_remote(f, s);
        }
        std::set<std::string> distinct;
        for (const auto& [key, who_set] : subs)
            if (!who_set.empty()) distinct.insert(key.second);
        size_t sum = 0;
        for (const auto& tr : t)
            sum += tr.first_holder_count();
        ASSERT_EQ(sum, distinct.size()) << "step " << step;
        // Listed in chunks, each shard's filters are its own, sorted.
        for (unsigned sh = 0; sh < shards; ++sh) {
            std::vector<std::string> rows, mine;
            const size_t chunk = 1 + rng() % 3;
            for (std::string after; !t[sh].local_filters_after(after, chunk, 1000, rows); after = rows.back())
                ASSERT_FALSE(rows.empty());
            for (const auto& [key, who_set] : subs)
                if (key.first == sh && !who_set.empty()) mine.push_back(key.second);
            std::sort(mine.begin(), mine.end());
            ASSERT_EQ(rows, mine) << "step " << step << " shard " << sh;
        }
    }
    // One shard alone counts every filter it has.
    topic_trie solo;
    solo.subscribe("x", S(0), 0);
    solo.subscribe("y", S(0), 0);
    EXPECT_EQ(solo.first_holder_count(), solo.filter_count());
    solo.add_remote("x", 3); // a higher shard's bit changes nothing for shard 0
    EXPECT_EQ(solo.first_holder_count(), 2u);
}

// The route listing: sorted, in chunks bounded by rows and bytes, each going on after the last filter it got; a
// filter subscribed throughout is listed once however the trie changes between chunks.
TEST(topic_trie_iterate, local_filters_after_lists_sorted_chunks) {
    topic_trie t;
    std::set<std::string> all;
    for (int i = 0; i < 300; ++i) {
        const std::string f = "a/" + std::to_string(i % 7) + "/" + std::to_string(i);
        t.subscribe(f, S(0), 0);
        all.insert(f);
    }
    for (const char* f : {"#", "a/+", "a/#", "+/+/#", "b", "/", "$SYS/x"}) {
        t.subscribe(f, S(1), 0);
        all.insert(f);
    }
    t.add_remote("remote/only", 3); // no local subscriber: not listed
    std::vector<std::string> whole;
    EXPECT_TRUE(t.local_filters_after("", 1000, 1 << 20, whole));
    EXPECT_EQ(whole, std::vector<std::string>(all.begin(), all.end()));

    std::vector<std::string> rows;
    EXPECT_FALSE(t.local_filters_after("", 10, 1 << 20, rows));
    EXPECT_EQ(rows, std::vector<std::string>(whole.begin(), whole.begin() + 10));
    rows.clear();
    EXPECT_FALSE(t.local_filters_after("", 1000, 20, rows)) << "the byte bound";
    size_t bytes = 0, upto = 0;
    while (bytes < 20)
        bytes += whole[upto++].size();
    EXPECT_EQ(rows, std::vector<std::string>(whole.begin(), whole.begin() + upto)) << "rows until 20 bytes are reached";
    rows.clear();
    EXPECT_TRUE(t.local_filters_after(whole.back(), 10, 1 << 20, rows));
    EXPECT_THAT(rows, IsEmpty());

    // Between chunks: 300 filters added (rehashing the maps), one listed filter and one not yet listed removed.
    std::vector<std::string> chunks;
    EXPECT_FALSE(t.local_filters_after("", 100, 1 << 20, chunks));
    for (int i = 1000; i < 1300; ++i)
        t.subscribe("a/" + std::to_string(i % 7) + "/" + std::to_string(i), S(0), 0);
    const std::string gone_before = chunks[5], gone_after = whole[200];
    t.unsubscribe(gone_before, gone_before.rfind("a/", 0) == 0 ? S(0) : S(1));
    t.unsubscribe(gone_after, gone_after.rfind("a/", 0) == 0 ? S(0) : S(1));
    for (std::string after = chunks.back(); !t.local_filters_after(after, 100, 1 << 20, chunks);)
        after = chunks.back();
    EXPECT_TRUE(std::is_sorted(chunks.begin(), chunks.end()));
    EXPECT_EQ(std::adjacent_find(chunks.begin(), chunks.end()), chunks.end()) << "a filter listed twice";
    std::vector<std::string> stayed;
    std::set_intersection(chunks.begin(), chunks.end(), all.begin(), all.end(), std::back_inserter(stayed));
    EXPECT_EQ(stayed.size(), all.size() - 1) << "every filter subscribed throughout, and the one gone after";

    // Emptied and moved: nothing left to list, and the moved-to trie lists what it got.
    topic_trie moved(std::move(t));
    rows.clear();
    EXPECT_TRUE(t.local_filters_after("", 10, 1 << 20, rows));
    EXPECT_THAT(rows, IsEmpty());
    EXPECT_FALSE(moved.local_filters_after("", 1, 1 << 20, rows));
    EXPECT_EQ(rows, std::vector<std::string>{"#"});
    moved.clear();
    rows.clear();
    EXPECT_TRUE(moved.local_filters_after("", 10, 1 << 20, rows));
    EXPECT_THAT(rows, IsEmpty());
}

TEST(filter_covers, a_wider_filter_covers_the_topics_of_a_narrower_one) {
    EXPECT_TRUE(filter_covers("#", "a/b"));
    EXPECT_TRUE(filter_covers("#", "+/#"));
    EXPECT_TRUE(filter_covers("a/#", "a"));
    EXPECT_TRUE(filter_covers("a/#", "a/+/c"));
    EXPECT_TRUE(filter_covers("a/#", "a/#"));
    EXPECT_TRUE(filter_covers("+/b", "x/b"));
    EXPECT_TRUE(filter_covers("+/+", "+/b"));
    EXPECT_TRUE(filter_covers("a/b", "a/b"));
    EXPECT_FALSE(filter_covers("a/b", "a/+"));
    EXPECT_FALSE(filter_covers("a/+", "a/#")); // a/# takes a and a/b/c
    EXPECT_FALSE(filter_covers("a/+", "a"));
    EXPECT_FALSE(filter_covers("a/+/#", "a"));   // takes a/x and below, not a
    EXPECT_FALSE(filter_covers("a/b/#", "a/+")); // a/+ takes a/c
    EXPECT_FALSE(filter_covers("a", "a/b"));
    EXPECT_FALSE(filter_covers("a/b", "a"));
    EXPECT_FALSE(filter_covers("#", "$SYS/#"));
    EXPECT_FALSE(filter_covers("+/x", "$SYS/x"));
    EXPECT_TRUE(filter_covers("$SYS/#", "$SYS/x"));
    // Against topic_matches: where outer covers inner, every topic inner takes, outer takes.
    const char* filters[] = {"#",     "+",   "a",      "a/#", "a/+", "+/b",  "a/b",   "a/+/c", "+/+",
                             "a/b/#", "+/#", "$SYS/#", "/+",  "a/",  "a//b", "+/+/#", "/#",    "+/"};
    const char* topics[] = {"a",    "b",      "a/b", "a/c", "x/b",  "a/b/c", "a/x/c", "a/b/c/d",
                            "$SYS", "$SYS/x", "/b",  "a/",  "a//b", "/",     "//",    "/a/b"};
    for (const char* outer : filters)
        for (const char* inner : filters) {
            if (!filter_covers(outer, inner)) continue;
            for (const char* t : topics)
                EXPECT_TRUE(!topic_matches(inner, t) || topic_matches(outer, t)) << outer << " " << inner << " " << t;
        }
}

} // namespace
} // namespace ringmq::routing::test
