#include "config/config.hpp"

#include "mqtt/validate.hpp"
#include "util/file.hpp"
#include "util/log.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <toml++/toml.h>

#include <arpa/inet.h>
#include <sched.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <thread>
#include <tuple>

#ifndef RINGMQ_VERSION
#define RINGMQ_VERSION "dev"
#endif

namespace ringmq::config {
namespace {

constexpr std::string_view k_sections[] = {"node", "log", "mqtt", "admin", "sys"};
constexpr int k_exit_usage = 2;
constexpr int k_exit_invalid = 1;

std::string_view level_name(log::level l) {
    switch (l) {
    case log::level::debug:
        return "debug";
    case log::level::info:
        return "info";
    case log::level::warn:
        return "warn";
    case log::level::error:
        return "error";
    case log::level::off:
        return "off";
    }
    return "?";
}

std::string_view type_name(toml::node_type t) {
    switch (t) {
    case toml::node_type::none:
        return "nothing";
    case toml::node_type::table:
        return "a table";
    case toml::node_type::array:
        return "an array";
    case toml::node_type::string:
        return "a string";
    case toml::node_type::integer:
        return "an integer";
    case toml::node_type::floating_point:
        return "a floating-point number";
    case toml::node_type::boolean:
        return "a boolean";
    case toml::node_type::date:
        return "a date";
    case toml::node_type::time:
        return "a time";
    case toml::node_type::date_time:
        return "a date-time";
    }
    return "an unknown type";
}

// Where a value (or an error) comes from, as errors name it ("ringmq.toml:12:1", "--set k=v", "defaults"), and for a
// file's key its line and column: more errors than are shown are picked in the file's order by these (until stop 76
// by positions parsed back from the text, which a file named with ": " in it, or starting with "--", fooled).
struct place {
    static constexpr uint64_t no_line = UINT64_MAX; // the command line's and the defaults': after the file's
    std::string text;
    uint64_t line = no_line;
    uint64_t column = 0;
    place() = default;
    place(std::string t, uint64_t l = no_line, uint64_t c = 0) : text(std::move(t)), line(l), column(c) {}
    place(const char* t) : text(t) {}
};

// One configuration error: its whole text, at the place of what it is about (for the order errors are shown in).
using found_error = place;

// Where the effective value of one dotted key came from. The node lives in the file's table or in the override
// storage, both of which outlive the validation pass.
struct entry {
    const toml::node* node;
    place origin;
    // A --set value that parsed as a number, as typed: node.io_uring_kernel takes this text instead, so
    // `--set node.io_uring_kernel=6.10` means "6.10" (the number would be 6.1).
    std::string typed_number = {};
    bool unparsed = false; // a --set value that is no TOML value, taken as a plain string
    std::string file = {}; // a table in a file: the file, for naming each of its keys where it is unknown
};
using entry_map = std::map<std::string, entry, std::less<>>;

// The values still to validate plus the errors found so far; built once per load() on the main thread.
struct layers {
    entry_map entries;
    std::deque<toml::table> override_storage; // one tiny table per flag value; deque keeps nodes' addresses stable
    std::vector<found_error> errors;
    std::vector<std::string> warnings;
    // Values a later layer replaced (a file's value under a flag): still validated, into a scratch config, and their
    // problems reported as warnings, so that a broken file is known now rather than when the flag is dropped.
    std::vector<std::pair<std::string, entry>> shadowed;

    void error(const place& origin, std::string_view key, std::string_view reason) {
        // (A key or a value quoted in the reason may hold a line break: one error stays one line. An origin is
        // escaped where it is made: every message is escaped whole, see main.cpp.)
        fmt::memory_buffer out;
        fmt::format_to(std::back_inserter(out), "{}: ", origin.text);
        log::append_escaped(out, key);
        out.append(std::string_view(": "));
        log::append_escaped(out, reason);
        errors.push_back({fmt::to_string(out), origin.line, origin.column});
    }

    // Later layers replace earlier ones; what they replace is kept in `shadowed`.
    void set(std::string key, const toml::node* node, place origin, std::string_view typed_number = {}) {
        shadow(key);
        entries.emplace(std::move(key), entry{node, std::move(origin), std::string(typed_number)});
    }

    void shadow(const std::string& key) {
        if (auto it = entries.find(key); it != entries.end()) {
            shadowed.emplace_back(it->first, std::move(it->second));
            entries.erase(it);
        }
    }

    // A flag's value, wrapped in a node so it is validated exactly like the same key in the file.
    template <typename T> void set_value(std::string key, T value, place origin) {
        auto& t = override_storage.emplace_back();
        t.insert_or_assign("v", std::move(value));
        set(std::move(key), t.get("v"), std::move(origin));
    }
};

bool is_section(std::string_view s) {
    return std::find(std::begin(k_sections), std::end(k_sections), s) != std::end(k_sections);
}

// The file's name with the line and column where a key is written ("ringmq.toml:12:1"), as the parser's own errors
// name them, so that a long file's faulty line is found without searching for the key.
place file_at(std::string_view origin, const toml::source_region& where) {
    if (where.begin.line == 0) return std::string(origin); // a key the parser did not place (none in a parsed file)
    return {fmt::format("{}:{}:{}", origin, where.begin.line, where.begin.column), where.begin.line,
            where.begin.column};
}

// A table inside a section that is no known key: every leaf is an unknown key named by its whole dotted path
// (mqtt.a.b), an empty table an unknown section (`at`: where its own key is).
void report_nested(layers& l, const std::string& prefix, const toml::table& t, std::string_view origin,
                   const place& at) {
    if (t.empty()) l.error(at, prefix, "unknown section");
    for (auto&& [k, v] : t) {
        std::string key = fmt::format("{}.{}", prefix, k.str());
        if (const toml::table* sub = v.as_table())
            report_nested(l, key, *sub, origin, file_at(origin, k.source()));
        else
            l.error(file_at(origin, k.source()), key, "unknown key");
    }
}

// Flattens [section] key = value into "section.key" entries. Anything outside the known sections is an error here;
// unknown keys inside a known section are caught later as the entries nobody consumed.
void add_file(layers& l, const toml::table& root, std::string_view origin) {
    for (auto&& [k, v] : root) {
        std::string section(k.str());
        if (!is_section(section)) {
            l.error(file_at(origin, k.source()), section, v.is_table() ? "unknown section" : "unknown key");
            continue;
        }
        const toml::table* t = v.as_table();
        if (t == nullptr) {
            l.error(file_at(origin, k.source()), section, fmt::format("expected a table, got {}", type_name(v.type())));
            continue;
        }
        // A table ([mqtt.sub], or mqtt's a.b = 1) is an entry too: given for a known key, it is that key's wrong
        // type; for no known key, report_unknown names its leaves.
        for (auto&& [k2, v2] : *t) {
            const std::string key = fmt::format("{}.{}", section, k2.str());
            l.set(key, &v2, file_at(origin, k2.source()));
            if (v2.is_table()) l.entries.find(key)->second.file = origin;
        }
    }
}

struct parsed_toml {
    std::optional<toml::table> table;
    found_error error; // "<origin>:<line>:<col>: <message>" when table is empty
};

// A table nested as deep as a key has parts is reported, and destroyed, one stack frame per level (report_nested,
// toml::table's destructor): a key of 40,000 parts (a 70 KB file) overflowed the stack. No ringmq key has more than
// two parts; a key or table header with more than max_key_parts is refused before the file is parsed.
constexpr size_t max_key_parts = 64;

// The line (1-based) of the first key or [table] header with more than max_key_parts parts, else 0. A small TOML
// lexer: dots are counted outside strings and comments, from the last '=', ',', '{', '}', '[', ']' or line end, so
// keys inside inline tables count too, and a float value's one dot (or an array's) never adds up to many.
size_t deep_key_line(std::string_view t) {
    size_t line = 1, dots = 0;
    for (size_t i = 0; i < t.size(); ++i) {
        const char c = t[i];
        if (c == '#') { // a comment, to the end of the line
            while (i + 1 < t.size() && t[i + 1] != '\n')
                ++i;
        } else if (c == '"' || c == '\'') {
            const bool multi = t.compare(i, 3, std::string(3, c)) == 0;
            const bool basic = c == '"';
            i += multi ? 3 : 1;
            for (; i < t.size(); ++i) {
                if (basic && t[i] == '\\') {
                    ++i; // an escape: the next character is not the string's end
                    if (i < t.size() && t[i] == '\n') ++line;
                } else if (t[i] == '\n') {
                    ++line;
                    if (!multi) break; // unterminated: the parser reports it
                } else if (t[i] == c && (!multi || t.compare(i, 3, std::string(3, c)) == 0)) {
                    if (multi) i += 2;
                    break;
                }
            }
        } else if (c == '.') {
            if (++dots >= max_key_parts) return line;
        } else if (c == '=' || c == ',' || c == '{' || c == '}' || c == '[' || c == ']' || c == '\n') {
            dots = 0;
            if (c == '\n') ++line;
        }
    }
    return 0;
}

// Without the blanks around it (and a CRLF line's CR).
std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

std::string key_on_line(std::string_view text, size_t line);

parsed_toml parse_toml(std::string_view text, std::string_view origin, bool name_key = true) {
    parsed_toml r;
    if (const size_t line = deep_key_line(text); line != 0) {
        r.error = {fmt::format("{}:{}: a key or table header with more than {} dotted parts (ringmq's have two)",
                               origin, line, max_key_parts),
                   line, 0};
        return r;
    }
    auto fail = [&](const toml::parse_error& e) {
        // (toml++ writes what it quotes with escapes of its own.)
        const std::string key = name_key ? key_on_line(text, e.source().begin.line) : std::string{};
        r.error = {fmt::format("{}:{}:{}: {}{}", origin, e.source().begin.line, e.source().begin.column,
                               key.empty() ? "" : log::escaped(key) + ": ", e.description()),
                   e.source().begin.line, e.source().begin.column};
    };
#if TOML_EXCEPTIONS
    try {
        r.table = toml::parse(text, origin);
    } catch (const toml::parse_error& e) {
        fail(e);
    }
#else
    auto res = toml::parse(text, origin);
    if (res)
        r.table = std::move(res).table();
    else
        fail(res.error());
#endif
    return r;
}

// The dotted key whose value begins on `line` of a TOML text the parser refused there (a number past 64 bits, say),
// so that its error names the key as the checks' errors do; "" where there is none. Found by the parser itself, on a
// copy with that line's value (after its first '=') replaced by 0: a line inside a multi-line string or array, a
// section header the text itself cannot tell, make no key, or another.
std::string key_on_line(std::string_view text, size_t line) {
    size_t at = 0;
    for (size_t n = 1; n < line; ++n) {
        at = text.find('\n', at);
        if (at == std::string_view::npos) return "";
        ++at;
    }
    const size_t end = std::min(text.find('\n', at), text.size());
    const size_t eq = text.find('=', at);
    if (eq >= end) return "";
    std::string copy(text.substr(0, eq + 1));
    copy.append(" 0");
    copy.append(text.substr(end));
    parsed_toml p = parse_toml(copy, "", false);
    // A key set twice (the parser refuses the second) is still twice in that copy: then the line's key is replaced by
    // a probe, which the parser places under the table in force there, and the line's own bare key named under it.
    constexpr std::string_view probe = "ringmq_probe_key_";
    const std::string_view raw = trim(text.substr(at, eq - at));
    bool probed = false;
    if (!p.table) {
        if (raw.empty() || raw.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") !=
                               std::string_view::npos)
            return "";
        copy.assign(text.substr(0, at));
        copy.append(probe).append(" = 0");
        copy.append(text.substr(end));
        p = parse_toml(copy, "", false);
        if (!p.table) return "";
        probed = true;
    }
    std::string found;
    const auto walk = [&](const auto& self, const toml::table& t, const std::string& prefix) -> void {
        for (auto&& [k, v] : t) {
            if (!found.empty()) return;
            const std::string key = prefix.empty() ? std::string(k.str()) : fmt::format("{}.{}", prefix, k.str());
            if (const toml::table* sub = v.as_table())
                self(self, *sub, key);
            else if (v.source().begin.line == line)
                found = key;
        }
    };
    walk(walk, *p.table, "");
    if (probed) {
        if (!found.ends_with(probe)) return "";
        found.replace(found.size() - probe.size(), probe.size(), raw);
    }
    return found;
}

// --set KEY=VALUE: VALUE is a TOML value (10, true, "x", 1.5). Anything that does not parse as exactly one TOML
// value is taken as a bare string, so `--set mqtt.listen=127.0.0.1:1883` works without shell-quoted TOML quotes.
void add_set(layers& l, std::string_view arg) {
    using log::escaped; // a newline in the argument must not break a message in two
    auto eq = arg.find('=');
    std::string_view key = eq == std::string_view::npos ? std::string_view{} : trim(arg.substr(0, eq));
    if (key.empty()) {
        l.errors.push_back(
            {fmt::format("--set: expected KEY=VALUE (like mqtt.max_inflight=10), got '{}'", escaped(arg))});
        return;
    }
    // The whole argument names the origin, so an error shows the value as typed (`--set mqtt.max_inflight=1,5`);
    // a password is not shown, as the broker never logs it.
    const std::string origin = key == "admin.default_password" ? std::string("--set admin.default_password=(not shown)")
                                                               : fmt::format("--set {}", escaped(arg));
    std::string_view value = arg.substr(eq + 1);
    parsed_toml p = parse_toml(fmt::format("v = {}", value), origin, false);
    if (p.table && p.table->size() == 1 && p.table->contains("v")) {
        auto& t = l.override_storage.emplace_back(std::move(*p.table));
        const toml::node* v = t.get("v");
        l.set(std::string(key), v, origin, v->is_number() ? trim(value) : std::string_view{});
    } else {
        l.set_value(std::string(key), std::string(trim(value)), origin);
        l.entries.find(key)->second.unparsed = true;
    }
}

// Consumes entries key by key into the config; whatever is left at the end is an unknown key.
class checker {
public:
    explicit checker(layers& l) : l_(l) {}

    template <typename T> void integer(std::string_view key, T& field, int64_t lo, int64_t hi) {
        checked_integer(key, field, lo, hi, false);
    }
    template <typename T> void power_of_two(std::string_view key, T& field, int64_t lo, int64_t hi) {
        checked_integer(key, field, lo, hi, true);
    }

    void number(std::string_view key, double& field, double lo, double hi) {
        auto e = take(key);
        if (!e) return;
        double x;
        if (const auto* i = e->node->as_integer())
            x = static_cast<double>(i->get());
        else if (const auto* f = e->node->as_floating_point())
            x = f->get();
        else
            return type_error(*e, key, "a number");
        if (!(x >= lo && x <= hi)) // also rejects nan
            return l_.error(e->origin, key, fmt::format("must be between {:.1f} and {:.1f}, got {}", lo, hi, x));
        field = x;
    }

    void boolean(std::string_view key, bool& field) {
        auto e = take(key);
        if (!e) return;
        const auto* v = e->node->as_boolean();
        if (v == nullptr) return type_error(*e, key, "a boolean");
        field = v->get();
    }

    // check returns "" when the value is acceptable, else the reason. With typed_numbers, a --set value that parsed
    // as a number is taken as the text typed. Returns true when the key was given and accepted.
    template <typename Check>
    bool string(std::string_view key, std::string& field, Check check, bool typed_numbers = false) {
        auto e = take(key);
        if (!e) return false;
        const auto* v = e->node->as_string();
        if (v == nullptr && (!typed_numbers || e->typed_number.empty())) {
            type_error(*e, key, "a string");
            return false;
        }
        const std::string& text = v != nullptr ? v->get() : e->typed_number;
        std::string why = check(text);
        if (!why.empty()) {
            l_.error(e->origin, key, why);
            return false;
        }
        field = text;
        return true;
    }

    void listen(std::string_view key, endpoint& field) {
        endpoint ep;
        std::string text;
        auto check = [&](const std::string& s) {
            std::string why;
            return parse_endpoint(s, ep, why) ? std::string{} : fmt::format("bad endpoint '{}': {}", s, why);
        };
        if (string(key, text, check)) field = ep;
    }

    void level(std::string_view key, log::level& field) {
        log::level parsed = field;
        std::string text;
        auto check = [&](const std::string& s) {
            return log::parse_level(s, parsed)
                       ? std::string{}
                       : fmt::format("must be one of debug, info, warn (or warning), error, off, got '{}'", s);
        };
        if (string(key, text, check)) field = parsed;
    }

    // Origin of a key's effective value, for checks that span keys; text "" when the key was not given.
    place origin_of(std::string_view key) const {
        auto it = seen_.find(key);
        return it == seen_.end() ? place{} : it->second;
    }

    void report_unknown() {
        for (auto& [key, e] : l_.entries) {
            const toml::table* t = e.node ? e.node->as_table() : nullptr;
            if (t && !e.file.empty())
                report_nested(l_, key, *t, e.file, e.origin);
            else
                l_.error(e.origin, key, "unknown key");
        }
        l_.entries.clear();
    }

private:
    template <typename T> void checked_integer(std::string_view key, T& field, int64_t lo, int64_t hi, bool pow2) {
        auto e = take(key);
        if (!e) return;
        const auto* v = e->node->as_integer();
        if (v == nullptr) return type_error(*e, key, "an integer");
        const int64_t x = v->get();
        if (x < lo || x > hi || (pow2 && !std::has_single_bit(static_cast<uint64_t>(x))))
            return l_.error(e->origin, key,
                            pow2 ? fmt::format("must be a power of two from {} to {}, got {}", lo, hi, x)
                                 : fmt::format("must be between {} and {}, got {}", lo, hi, x));
        field = static_cast<T>(x);
    }

    std::optional<entry> take(std::string_view key) {
        auto it = l_.entries.find(key);
        if (it == l_.entries.end()) return std::nullopt;
        entry e = std::move(it->second);
        l_.entries.erase(it);
        seen_.insert_or_assign(std::string(key), e.origin);
        return e;
    }

    void type_error(const entry& e, std::string_view key, std::string_view expected) {
        // Digits TOML could not take as an integer (`--set` keeps them as a string) past 64 bits: said so, not "got a
        // string", which the user did not type. (Others, with a leading zero say, are no TOML integer: a string.)
        if (const auto* str = e.node->as_string(); str && e.unparsed && expected == "an integer") {
            std::string_view v = str->get();
            if (!v.empty() && v.front() == '-') v.remove_prefix(1);
            uint64_t n = 0;
            if (!v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
                std::from_chars(v.data(), v.data() + v.size(), n).ec == std::errc::result_out_of_range) {
                l_.error(e.origin, key, fmt::format("expected an integer, got {} (past 64 bits)", str->get()));
                return;
            }
        }
        // And a number past a double's range (1e400), which TOML does not take either.
        if (const auto* str = e.node->as_string(); str && e.unparsed && expected == "a number") {
            const std::string& v = str->get();
            char* end = nullptr;
            errno = 0;
            (void)std::strtod(v.c_str(), &end);
            const bool decimal = v.find_first_not_of("0123456789+-.eE") == std::string::npos; // (not 0x1p99999)
            if (decimal && !v.empty() && end == v.c_str() + v.size() && errno == ERANGE) {
                l_.error(e.origin, key, fmt::format("expected a number, got {} (out of range)", v));
                return;
            }
        }
        l_.error(e.origin, key, fmt::format("expected {}, got {}", expected, type_name(e.node->type())));
    }

    layers& l_;
    std::map<std::string, place, std::less<>> seen_;
};

std::string not_empty(const std::string& s) { return s.empty() ? "must not be empty" : ""; }

// An Erlang node name is an atom, at most 255 characters; the cap also keeps every $SYS topic, which carries the name
// as one level, far below MQTT's 65535-byte topic length.
constexpr size_t max_node_name = 255;

std::string check_kernel_release(const std::string& s) {
    int major = 0, minor = 0;
    std::string why;
    return parse_kernel_release(s, major, minor, why) || why.empty() ? "" : why;
}

std::string check_node_name(const std::string& s) {
    if (s.size() > max_node_name)
        return fmt::format("must be at most {} bytes (it is a level of every $SYS topic), got {}", max_node_name,
                           s.size());
    auto at = s.find('@');
    bool blank = std::any_of(s.begin(), s.end(), [](unsigned char c) { return c <= ' ' || c == 0x7f; });
    if (at == std::string::npos || at == 0 || at + 1 == s.size() || s.find('@', at + 1) != std::string::npos || blank)
        return fmt::format("must look like name@host (one word with one '@'), got '{}'", s);
    // The name is one level of the $SYS topics (ringmq's own PUBLISHes skip the topic checks clients get).
    if (s.find_first_of("/+#") != std::string::npos)
        return fmt::format("must not contain '/', '+' or '#' (it is a level of the $SYS topics), got '{}'", s);
    if (!mqtt::valid_utf8(s)) return "must be UTF-8 (it is a level of the $SYS topics)";
    // C1 controls (U+0080..U+009F, as C2 80..C2 9F) and the line and paragraph separators (U+2028/U+2029): MQTT's
    // topics should not hold them, and some readers break a line at them.
    for (size_t i = 0; i + 1 < s.size(); ++i) {
        const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
        if ((b(i) == 0xc2 && b(i + 1) <= 0x9f) ||
            (b(i) == 0xe2 && i + 2 < s.size() && b(i + 1) == 0x80 && (b(i + 2) == 0xa8 || b(i + 2) == 0xa9)))
            return "must not contain control characters or line separators (it is a level of the $SYS topics)";
    }
    return "";
}

// The users file separates fields with ':' and records with newlines; a default user it cannot hold would be refused
// only when the file is created, after the listeners are bound, and never when the file exists already.
std::string check_default_user(const std::string& s) {
    if (s.empty()) return "must not be empty";
    if (!util::fits_record_field(s)) return "must not contain ':' or control characters (the users file's separators)";
    return "";
}

// PBKDF2's HMAC zero-pads its key, so a NUL would make two passwords one; the users API refuses it too.
std::string check_default_password(const std::string& s) {
    if (s.empty()) return "must not be empty";
    if (s.find('\0') != std::string::npos) return "must not contain a NUL byte";
    return "";
}

// A listener's address as 16 bytes, an IPv4 one in its IPv4-mapped IPv6 form, so that two ways of writing one address
// ("::1" and "0:0:0:0:0:0:0:1", "::" and "::0") compare equal.
bool address_bytes(const std::string& host, in6_addr& out) {
    in_addr v4{};
    if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
        out = in6_addr{};
        out.s6_addr[10] = out.s6_addr[11] = 0xff;
        std::memcpy(&out.s6_addr[12], &v4, sizeof v4);
        return true;
    }
    return inet_pton(AF_INET6, host.c_str(), &out) == 1;
}

// Whether two listeners on the same port would collide: the same address, IPv6's unspecified address (dual-stack, so
// it takes the IPv4 addresses too), or IPv4's 0.0.0.0 against another IPv4 address. Compared as addresses, not text:
// "[::0]" against the admin listener's "127.0.0.1" on one port passed, and the MQTT listener was bound on every
// address before the admin one failed.
bool hosts_overlap(const std::string& a, const std::string& b) {
    in6_addr x{}, y{};
    if (!address_bytes(a, x) || !address_bytes(b, y)) return a == b;
    if (IN6_IS_ADDR_UNSPECIFIED(&x) || IN6_IS_ADDR_UNSPECIFIED(&y)) return true;
    if (std::memcmp(&x, &y, sizeof x) == 0) return true;
    in6_addr any4{};
    address_bytes("0.0.0.0", any4);
    const bool x_any4 = std::memcmp(&x, &any4, sizeof x) == 0, y_any4 = std::memcmp(&y, &any4, sizeof y) == 0;
    return (x_any4 && IN6_IS_ADDR_V4MAPPED(&y)) || (y_any4 && IN6_IS_ADDR_V4MAPPED(&x));
}

// One validation pass over the entries; fills cfg field by field, leaving defaults where nothing was given.
void validate_keys(checker& c, config& cfg) {
    constexpr int64_t u32_max = std::numeric_limits<uint32_t>::max();
    auto& m = cfg.limits;

    c.string("node.name", cfg.node_name, check_node_name);
    c.integer("node.shards", cfg.shards, 0, max_shards);
    c.integer("node.sends_per_turn", cfg.budgets.sends_per_turn, 1, 1048576);
    c.integer("node.retained_reads_per_turn", cfg.budgets.retained_reads_per_turn, 1, 16777216);
    c.integer("node.retained_read_slice", cfg.budgets.retained_read_slice, 1, 16777216);
    c.integer("node.turn_work_us", cfg.budgets.turn_work_us, 0, 10000000);
    c.integer("node.receive_limit", cfg.budgets.receive_limit, 0, 1073741824);
    c.integer("node.idle_poll_us", cfg.budgets.idle_poll_us, 0, 10000);
    c.integer("node.idle_poll_min_batch", cfg.budgets.idle_poll_min_batch, 0, 65536);
    c.integer("node.idle_poll_min_found", cfg.budgets.idle_poll_min_found, 0, 100);
    c.boolean("node.idle_poll_by_cpu", cfg.budgets.idle_poll_by_cpu);
    c.integer("node.wake_batch_us", cfg.budgets.wake_batch_us, 0, 100000);
    c.integer("node.wake_batch", cfg.budgets.wake_batch, 2, 4096);
    c.boolean("node.wake_batch_by_cpu", cfg.budgets.wake_batch_by_cpu);
    c.boolean("node.ring_wakeups", cfg.budgets.ring_wakeups);
    c.boolean("node.fixed_files", cfg.budgets.fixed_files);
    c.string("node.io_uring_kernel", cfg.budgets.io_uring_kernel, check_kernel_release, true);
    c.power_of_two("node.smp_queue_size", cfg.budgets.smp_queue_size, 64, 1048576);
    c.level("log.level", cfg.log_level);

    c.listen("mqtt.listen", cfg.mqtt_listen);
    c.boolean("mqtt.defer_accept", cfg.mqtt_defer_accept);
    c.integer("mqtt.tcp_notsent_lowat", cfg.mqtt_notsent_lowat, 0, 1 << 30);
    c.integer("mqtt.max_connections", m.max_connections, 1, u32_max);
    // At least 64: a CONNECT with a client id of 23 bytes, which MQTT requires a server to accept, takes 37 bytes (39
    // for 3.1), and the limit applies to the CONNECT too (at 16 every client was refused).
    c.integer("mqtt.max_packet_size", m.max_packet_size, 64, 268435460);
    c.integer("mqtt.max_client_id_len", m.max_client_id_len, 23, 65535);
    c.integer("mqtt.max_topic_levels", m.max_topic_levels, 1, 65535);
    c.integer("mqtt.max_inflight", m.max_inflight, 1, 65535);
    c.integer("mqtt.max_queued_messages", m.max_queued_messages, 0, u32_max);
    c.integer("mqtt.max_queued_bytes", m.max_queued_bytes, 0, int64_t{1} << 40);
    c.integer("mqtt.publisher_hold_ms", m.publisher_hold_ms, 0, 3600000);
    c.integer("mqtt.publisher_hold_burst", m.publisher_hold_burst, 0, 1000);
    c.integer("mqtt.max_sessions", m.max_sessions, 0, u32_max);
    c.integer("mqtt.max_subscriptions", m.max_subscriptions, 0, u32_max);
    c.integer("mqtt.max_awaiting_rel", m.max_awaiting_rel, 0, 65535);
    c.integer("mqtt.max_outgoing_bytes", m.max_outgoing_bytes, 1024, int64_t{1} << 40);
    c.integer("mqtt.max_outgoing_bytes_total", m.max_outgoing_bytes_total, 1048576, int64_t{1} << 44);
    c.integer("mqtt.send_stall_timeout", m.send_stall_timeout_ms, 1000, 86400000);
    c.integer("mqtt.max_cross_shard_bytes", m.max_cross_shard_bytes, 65536, int64_t{1} << 40);
    c.number("mqtt.keepalive_multiplier", m.keepalive_multiplier, 1.0, 10.0);
    c.integer("mqtt.connect_timeout", m.connect_timeout_ms, 100, 3600000);
    c.integer("mqtt.retry_interval", m.retry_interval_ms, 1000, 86400000);
    c.integer("mqtt.session_expiry_interval", m.session_expiry_ms, 0, 4294967295);
    c.integer("mqtt.max_retained_messages", m.max_retained_messages, 0, u32_max);
    c.integer("mqtt.max_retained_payload", m.max_retained_payload, 1, 268435455);
    c.boolean("mqtt.allow_anonymous", m.allow_anonymous);
    c.boolean("mqtt.retain_available", m.retain_available);

    c.boolean("admin.enabled", cfg.admin.enabled);
    c.listen("admin.listen", cfg.admin.listen);
    c.string("admin.users_file", cfg.admin.users_file, not_empty);
    c.string("admin.default_user", cfg.admin.default_user, check_default_user);
    c.string("admin.default_password", cfg.admin.default_password, check_default_password);
    c.integer("admin.max_body_bytes", cfg.admin.max_body_bytes, 1024, 1073741824);
    c.integer("admin.idle_timeout", cfg.admin.idle_timeout_ms, 1000, 86400000);
    c.integer("admin.send_timeout", cfg.admin.send_timeout_ms, 1000, 86400000);
    c.integer("admin.request_timeout", cfg.admin.request_timeout_ms, 1000, 86400000);
    c.integer("admin.max_connections", cfg.admin.max_connections, 1, 65536);
    c.integer("admin.reclaim_after", cfg.admin.reclaim_after_ms, 100, 86400000);
    c.integer("admin.password_checks_per_second", cfg.admin.password_checks_per_second, 1, 100000);

    c.boolean("sys.enabled", cfg.sys.enabled);
    c.integer("sys.interval", cfg.sys.interval_ms, 1000, 86400000);

    c.report_unknown();
}

void validate(layers& l, config& cfg) {
    checker c(l);
    validate_keys(c, cfg);

    // The values later layers replaced, into a scratch config; a key replaced twice waits for the next round.
    for (auto rest = std::move(l.shadowed); !rest.empty();) {
        layers sub;
        std::vector<std::pair<std::string, entry>> later;
        for (auto& [key, e] : rest)
            if (!sub.entries.emplace(key, e).second) later.emplace_back(key, e);
        config scratch;
        checker sc(sub);
        validate_keys(sc, scratch);
        for (found_error& e : sub.errors)
            l.warnings.push_back(e.text + " (not in force: a later setting replaces it)");
        rest = std::move(later);
    }

    // --admin-listen asks for the admin listener, which a file or --set turned off: one of them is a mistake (with
    // --no-admin, the command line refuses the pair itself).
    if (!cfg.admin.enabled && c.origin_of("admin.listen").text == "--admin-listen")
        l.error("--admin-listen", "admin.listen",
                fmt::format("an admin listener is asked for, but admin.enabled = false ({}): drop one of them",
                            c.origin_of("admin.enabled").text));

    // Caught here rather than as EADDRINUSE after the MQTT shards are already listening.
    const endpoint& a = cfg.admin.listen;
    const endpoint& q = cfg.mqtt_listen;
    if (cfg.admin.enabled && a.port != 0 && a.port == q.port && hosts_overlap(a.host, q.host)) {
        const place a_origin = c.origin_of("admin.listen"), q_origin = c.origin_of("mqtt.listen");
        // Blame the key that was given (the later flag when both were): the other is named with its origin.
        const bool blame_admin = !a_origin.text.empty();
        const auto side = [](std::string_view key, const endpoint& e, const place& origin) {
            return fmt::format("{} {}{}", key, to_string(e), origin.text.empty() ? " (its default)" : "");
        };
        l.error(blame_admin ? a_origin : (q_origin.text.empty() ? place("defaults") : q_origin),
                blame_admin ? "admin.listen" : "mqtt.listen",
                fmt::format("{} overlaps {} (admin and MQTT listeners need different ports; move one, or --no-admin)",
                            blame_admin ? side("admin.listen", a, a_origin) : side("mqtt.listen", q, q_origin),
                            blame_admin ? side("mqtt.listen", q, q_origin) : side("admin.listen", a, a_origin)));
    }
}

// A TOML file of every key is a few KiB; the cap keeps a wrong path (/dev/zero, a log file) from eating memory: the
// parsed table takes some 50 times its text (at 16 MiB, a file of 1.5 M unknown keys took 715 MB and 23 s).
constexpr size_t max_config_bytes = size_t{1} << 20;
// Errors reported at most (then how many more): a file of many wrong keys printed a line for each.
constexpr size_t max_errors = 50;

load_result finish(layers& l, config cfg) {
    validate(l, cfg);
    load_result r;
    r.warnings = std::move(l.warnings);
    // Each line as long as a log line at most: a 15 MB mqtt.listen was echoed in one 15 MB line.
    const auto cut = [](std::string& e) {
        if (e.size() > log::max_message_bytes) e = log::cut_escaped(e);
    };
    for (found_error& e : l.errors)
        cut(e.text);
    for (std::string& w : r.warnings)
        cut(w);
    if (!l.errors.empty()) {
        r.exit_code = k_exit_invalid;
        if (l.errors.size() > max_errors) {
            // The first ones of the file are shown, in its order: the errors are found pass by pass (the parser's,
            // unknown sections, the keys in the table's, alphabetical, order, the checks), so that 50 of 200 unknown
            // keys were not the first 50. Those of the command line, with no line, come after. Keyed once, then the
            // first 50 picked (ties in the order found): a file of 100k unknown keys has as many.
            std::vector<std::tuple<uint64_t, uint64_t, size_t>> keys;
            keys.reserve(l.errors.size());
            for (size_t i = 0; i < l.errors.size(); ++i)
                keys.emplace_back(l.errors[i].line, l.errors[i].column, i);
            std::partial_sort(keys.begin(), keys.begin() + max_errors, keys.end());
            r.errors.reserve(max_errors + 1);
            for (size_t i = 0; i < max_errors; ++i)
                r.errors.push_back(std::move(l.errors[std::get<2>(keys[i])].text));
            r.errors.push_back(fmt::format("... and {} more errors", l.errors.size() - max_errors));
        } else {
            for (found_error& e : l.errors)
                r.errors.push_back(std::move(e.text));
        }
        return r;
    }
    cfg.shards = resolve_shards(cfg.shards);
    r.cfg = std::move(cfg);
    return r;
}

} // namespace

std::vector<int> allowed_cpus() {
    std::vector<int> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
    for (int i = 0; i < CPU_SETSIZE; ++i)
        if (CPU_ISSET(i, &set)) cpus.push_back(i);
    return cpus;
}

unsigned resolve_shards(unsigned configured) {
    if (configured != 0) return configured;
    const size_t allowed = allowed_cpus().size();
    const unsigned n = allowed != 0 ? static_cast<unsigned>(allowed) : std::thread::hardware_concurrency();
    return std::clamp(n, 1u, max_shards);
}

bool parse_endpoint(std::string_view s, endpoint& out, std::string& why) {
    std::string host;
    std::string_view port;
    if (!s.empty() && s.front() == '[') {
        auto close = s.find(']');
        if (close == std::string_view::npos) {
            why = "missing ']' after the IPv6 address";
            return false;
        }
        host = s.substr(1, close - 1);
        std::string_view rest = s.substr(close + 1);
        if (rest.empty() || rest.front() != ':') {
            why = "expected :PORT after ']'";
            return false;
        }
        port = rest.substr(1);
        in6_addr a6;
        if (inet_pton(AF_INET6, host.c_str(), &a6) != 1) {
            why = fmt::format("'{}' is not an IPv6 address", host);
            return false;
        }
    } else {
        auto colon = s.rfind(':');
        if (colon == std::string_view::npos) {
            why = "expected HOST:PORT";
            return false;
        }
        host = s.substr(0, colon);
        port = s.substr(colon + 1);
        in_addr a4;
        if (host.find(':') != std::string::npos) {
            why = "an IPv6 address must be in brackets, like [::1]:1883";
            return false;
        }
        if (host.empty()) {
            host = "0.0.0.0";
        } else if (inet_pton(AF_INET, host.c_str(), &a4) != 1) {
            // Names are refused rather than resolved: a listener should not depend on DNS at start-up.
            why = fmt::format("host '{}' is not a numeric IPv4 address (IPv6 goes in brackets)", host);
            return false;
        }
    }
    bool digits = !port.empty() && std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits) {
        why = fmt::format("port '{}' is not a number", port);
        return false;
    }
    uint64_t p = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc{} || p > 65535) {
        why = fmt::format("port must be between 0 and 65535, got {}", port);
        return false;
    }
    out.host = std::move(host);
    out.port = static_cast<uint16_t>(p);
    return true;
}

std::string to_string(const endpoint& e) {
    if (e.host.find(':') != std::string::npos) return fmt::format("[{}]:{}", e.host, e.port);
    return fmt::format("{}:{}", e.host, e.port);
}

bool parse_kernel_release(std::string_view s, int& major, int& minor, std::string& why) {
    major = minor = 0;
    why.clear();
    if (s == "auto") return false;
    // A number as a release prints it: one to three digits, no sign, no leading zero ("6.010" is not 6.10).
    const auto number = [](std::string_view d, int& out) {
        if (d.empty() || d.size() > 3 || d[0] < '0' || d[0] > '9' || (d.size() > 1 && d[0] == '0')) return false;
        const auto [end, ec] = std::from_chars(d.data(), d.data() + d.size(), out);
        return ec == std::errc{} && end == d.data() + d.size();
    };
    const auto dot = s.find('.');
    int ma = 0, mi = 0;
    if (dot == std::string_view::npos || !number(s.substr(0, dot), ma) || !number(s.substr(dot + 1), mi)) {
        why = fmt::format("must be \"auto\" or a Linux release as major.minor (\"6.1\"), got '{}'", s);
        return false;
    }
    if (ma < 6) {
        why = fmt::format("must be 6.0 or newer (ringmq needs Linux 6.0's io_uring), got '{}'", s);
        return false;
    }
    major = ma;
    minor = mi;
    return true;
}

std::string describe(const config& c) {
    const auto& m = c.limits;
    return fmt::format("node={} shards={} log={} mqtt={} admin={} sys={} max_connections={} max_packet_size={} "
                       "max_inflight={} max_queued_messages={} allow_anonymous={} config={}",
                       c.node_name, c.shards, level_name(c.log_level), to_string(c.mqtt_listen),
                       c.admin.enabled ? to_string(c.admin.listen) : "off",
                       c.sys.enabled ? fmt::format("{}ms", c.sys.interval_ms) : "off", m.max_connections,
                       m.max_packet_size, m.max_inflight, m.max_queued_messages, m.allow_anonymous,
                       c.config_path.empty() ? "(none)" : c.config_path);
}

load_result load_from_string(std::string_view toml_text, std::string_view origin) {
    layers l;
    parsed_toml p = parse_toml(toml_text, origin);
    if (p.table)
        add_file(l, *p.table, origin);
    else
        l.errors.push_back(std::move(p.error));
    return finish(l, config{});
}

load_result load(int argc, const char* const* argv) { return load(argc, argv, std::cout); }

load_result load(int argc, const char* const* argv, std::ostream& out) {
    static const char* const k_no_args[] = {"ringmq", nullptr};
    if (argc <= 0 || argv == nullptr) {
        argc = 1;
        argv = k_no_args;
    }

    CLI::App app{"ringmq: an MQTT broker", "ringmq"};
    std::string config_file, listen, shards, node_name, log_level, admin_listen;
    std::vector<std::string> sets;
    bool no_admin = false;
    auto* o_config = app.add_option("-c,--config", config_file, "TOML configuration file")->type_name("FILE");
    auto* o_listen =
        app.add_option("--listen", listen, "MQTT listener (overrides mqtt.listen)")->type_name("HOST:PORT");
    auto* o_shards = app.add_option("--shards", shards, "MQTT shard threads, 0..63; 0 = one per core")->type_name("N");
    auto* o_name = app.add_option("--node-name", node_name, "node name, name@host")->type_name("NAME");
    auto* o_level =
        app.add_option("--log-level", log_level, "debug, info, warn (or warning), error or off")->type_name("LEVEL");
    auto* o_admin = app.add_option("--admin-listen", admin_listen, "admin HTTP listener")->type_name("HOST:PORT");
    app.add_flag("--no-admin", no_admin, "disable the admin HTTP listener")->excludes(o_admin);
    app.add_option("--set", sets, "dotted key and TOML value, e.g. mqtt.max_inflight=10 (repeatable)")
        ->type_name("KEY=VALUE")
        ->allow_extra_args(false);
    app.set_version_flag("--version", "ringmq " RINGMQ_VERSION);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        load_result r;
        if (e.get_exit_code() == 0) { // --help or --version
            std::ostringstream err;
            r.exit_code = app.exit(e, out, err);
            return r;
        }
        r.exit_code = k_exit_usage;
        r.errors.push_back(fmt::format("command line: {} (see --help)", log::escaped(e.what())));
        return r;
    }

    layers l;
    config cfg;
    if (o_config->count() > 0) {
        cfg.config_path = config_file;
        const std::string file_origin = config_file.empty() ? std::string("''") : log::escaped(config_file);
        std::string text;
        if (const util::file_read rd = util::read_regular_file(config_file, max_config_bytes, text); !rd.ok) {
            l.errors.push_back({fmt::format("{}: cannot read config file: {}", file_origin, log::escaped(rd.why))});
        } else {
            parsed_toml p = parse_toml(text, file_origin);
            if (p.table) {
                // Keep the file's nodes alive with the overrides; entries point into it.
                auto& t = l.override_storage.emplace_back(std::move(*p.table));
                add_file(l, t, file_origin);
            } else {
                l.errors.push_back(std::move(p.error));
            }
        }
    }

    // The dedicated flags come after --set so `--listen` wins over `--set mqtt.listen=...`.
    for (const auto& s : sets)
        add_set(l, s);
    if (o_listen->count() > 0) l.set_value("mqtt.listen", listen, "--listen");
    if (o_shards->count() > 0) {
        int64_t n = 0;
        auto [end, ec] = std::from_chars(shards.data(), shards.data() + shards.size(), n);
        if (ec == std::errc{} && end == shards.data() + shards.size()) {
            l.set_value("node.shards", n, "--shards");
        } else { // still replaces the file's value, which is checked as a shadowed one
            l.error("--shards", "node.shards", fmt::format("expected an integer, got '{}'", shards));
            l.shadow("node.shards");
        }
    }
    if (o_name->count() > 0) l.set_value("node.name", node_name, "--node-name");
    if (o_level->count() > 0) l.set_value("log.level", log_level, "--log-level");
    if (o_admin->count() > 0) l.set_value("admin.listen", admin_listen, "--admin-listen");
    if (no_admin) l.set_value("admin.enabled", false, "--no-admin");

    return finish(l, std::move(cfg));
}

} // namespace ringmq::config
