#pragma once
// Matching one topic filter against one topic name (MQTT 4.7), without a trie: used where a single filter is
// checked against many stored topics (retained delivery on subscribe). Pure function, no state.
#include <string_view>

namespace ringmq::routing {

// True when `topic` matches `filter`. Both must already be valid; a leading wildcard never matches a '$' topic.
inline bool topic_matches(std::string_view filter, std::string_view topic) {
    if (!topic.empty() && topic.front() == '$' && !filter.empty() && (filter.front() == '+' || filter.front() == '#'))
        return false;
    size_t f = 0, t = 0;
    for (;;) {
        const size_t fe = filter.find('/', f);
        const std::string_view flevel =
            filter.substr(f, fe == std::string_view::npos ? std::string_view::npos : fe - f);
        if (flevel == "#") return true;
        const size_t te = t == std::string_view::npos ? std::string_view::npos : topic.find('/', t);
        if (t == std::string_view::npos) return false; // topic exhausted, filter has more (non-#) levels
        const std::string_view tlevel = topic.substr(t, te == std::string_view::npos ? std::string_view::npos : te - t);
        if (flevel != "+" && flevel != tlevel) return false;
        const bool f_last = fe == std::string_view::npos;
        const bool t_last = te == std::string_view::npos;
        if (f_last && t_last) return true;
        if (f_last) return false;
        f = fe + 1;
        if (t_last) {
            // Only "#" may follow: "a/#" matches "a".
            return filter.substr(f) == "#";
        }
        t = te + 1;
    }
}

// True when `filter` has a wildcard level ('+' or '#'; valid filters have them only as whole levels).
inline bool has_wildcard(std::string_view filter) { return filter.find_first_of("+#") != std::string_view::npos; }

// True only when every topic `inner` matches, `outer` matches too (both valid filters): "a/#" covers "a/+/c" and "a",
// "+/b" covers "x/b", "#" covers "$SYS/x" not (a leading wildcard never matches a '$' topic). Level by level, it misses
// the few covers where a '+' of outer meets a '#' of inner ("+/#" covers "#" and "/#"): a caller then does as if not.
inline bool filter_covers(std::string_view outer, std::string_view inner) {
    if (!inner.empty() && inner.front() == '$' && !outer.empty() && (outer.front() == '+' || outer.front() == '#'))
        return false;
    size_t o = 0, i = 0;
    for (;;) {
        const size_t oe = outer.find('/', o), ie = inner.find('/', i);
        const std::string_view ol = outer.substr(o, oe == std::string_view::npos ? std::string_view::npos : oe - o);
        const std::string_view il = inner.substr(i, ie == std::string_view::npos ? std::string_view::npos : ie - i);
        if (ol == "#") return true;                             // any number of levels, none included
        if (il == "#" || (ol != "+" && ol != il)) return false; // (inner's '#' takes levels outer's one does not)
        if (oe == std::string_view::npos && ie == std::string_view::npos) return true;
        if (ie == std::string_view::npos) return outer.substr(oe + 1) == "#"; // "a/#" takes "a" too
        if (oe == std::string_view::npos) return false;                       // inner's topics are longer
        o = oe + 1;
        i = ie + 1;
    }
}

} // namespace ringmq::routing
