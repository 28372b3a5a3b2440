#pragma once
// String rules of MQTT shared by the decoders and the broker: UTF-8 well-formedness (MQTT 1.5.3), topic names,
// topic filters and shared-subscription filters. Pure functions over caller-owned strings; no state.
#include <cstddef>
#include <string_view>

namespace ringmq::mqtt {

// Well-formed UTF-8 without U+0000 and without surrogate code points (MQTT 1.5.3). Control characters and
// non-characters are allowed: the spec only says SHOULD NOT for them, and rejecting would break real clients.
bool valid_utf8(std::string_view s);

// A topic a message is published to: non-empty, valid UTF-8, no '+' or '#'.
bool valid_topic_name(std::string_view s);

// A subscription filter: non-empty, valid UTF-8, '#' only as the whole last level, '+' only as a whole level.
// "$share/..." is checked as an ordinary filter here; see parse_shared_filter.
bool valid_topic_filter(std::string_view s);

// Number of '/'-separated levels: "a/b" -> 2, "a" -> 1, "/" -> 2, "" -> 1.
size_t topic_levels(std::string_view s);

// True when s starts with "$share/" (v5 shared subscription). Such a filter is shared even if malformed, so the
// broker must then call parse_shared_filter and reject it rather than subscribe to it literally.
bool is_shared_filter(std::string_view s);

// Splits "$share/group/filter" into group and filter. False when the group is empty or contains '+', '#' or '/',
// or the filter part is missing or not a valid topic filter (MQTT 4.8.2).
bool parse_shared_filter(std::string_view s, std::string_view& group, std::string_view& filter);

} // namespace ringmq::mqtt
