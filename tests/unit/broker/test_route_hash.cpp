// The route cache's slot hash: topics that differ in one byte, wherever it is, spread over the slots.
#include "broker/route_hash.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <set>
#include <string>

using ringmq::broker::route_hash;

namespace {
constexpr size_t slots = 4096; // shard::route_cache_size
} // namespace

// 64 topics that differ only in the byte at one position, for each length that takes a different path through the
// hash (under 4 bytes, 4-7, a multiple of 8, words and a tail) and for the first, a middle and the last byte: 64 keys
// in 4096 slots collide about once by chance, so 60 distinct slots is a pass. Topics like sensor/1, sensor/2, ...
// once shared a single slot, each evicting the other from the cache.
TEST(RouteHash, TopicsDifferingInOneByteSpreadOverTheSlots) {
    for (const size_t len : {1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 15, 16, 17, 23, 24, 31, 40}) {
        for (const size_t pos : {size_t{0}, len / 2, len - 1}) {
            SCOPED_TRACE(testing::Message() << "length " << len << ", byte " << pos);
            std::string t(len, 'a');
            for (size_t i = 0; i < len; ++i)
                t[i] = static_cast<char>('a' + i % 26);
            std::set<size_t> used;
            for (int k = 0; k < 64; ++k) {
                t[pos] = static_cast<char>('0' + k);
                used.insert(route_hash(t) & (slots - 1));
            }
            EXPECT_GE(used.size(), 60u);
        }
    }
}

// Realistic families: numbered devices under a shared prefix and suffix, and the load generator's own topics.
TEST(RouteHash, NumberedTopicsSpreadOverTheSlots) {
    for (const char* shape : {"sensor/%d", "building/7/floor/3/room/%d/temperature", "lg/15046/%d", "%d"}) {
        SCOPED_TRACE(shape);
        std::set<size_t> used;
        for (int n = 0; n < 1000; ++n) {
            char buf[128];
            std::snprintf(buf, sizeof buf, shape, n);
            used.insert(route_hash(buf) & (slots - 1));
        }
        // 1000 keys in 4096 slots: about 890 distinct by chance.
        EXPECT_GE(used.size(), 850u);
    }
}

TEST(RouteHash, DependsOnTheWholeTopic) {
    EXPECT_EQ(route_hash("a/b"), route_hash(std::string("a/b")));
    EXPECT_NE(route_hash(""), route_hash(std::string(1, '\0')));
    EXPECT_NE(route_hash("abcdefgh"), route_hash(std::string_view("abcdefgh\0", 9)));
}
