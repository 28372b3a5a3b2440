// The REST API v2 endpoints: routing on decoded path segments and one handler per resource group. Runs on the
// admin shard; every piece of broker state comes from the MQTT shards through on_shards()/on_all().
#include "admin/server.hpp"
#include "admin/sysinfo.hpp"
#include "mqtt/codec.hpp"
#include "mqtt/validate.hpp"
#include "util/clock.hpp"
#include "util/hash.hpp"
#include "util/log.hpp"

#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>

namespace ringmq::admin {

namespace {

using seg_t = std::vector<std::string>;

void set_json(http_response& r, int status, std::string body) {
    r.status = status;
    r.content_type = "application/json";
    r.body = std::move(body);
}

// {"code":0,"result":<result>}
void ok(http_response& r, std::string_view result_json) {
    json_writer w;
    w.begin_object().key("code").value(0).key("result").raw(result_json).end_object();
    set_json(r, 200, w.take());
}

void ok_empty(http_response& r) { ok(r, "[]"); }

// An API error: HTTP 200 with {"code":N,"message":...} as EMQ X answered.
void api_error(http_response& r, int code, std::string_view message) {
    json_writer w;
    w.begin_object().key("code").value(code);
    if (!message.empty()) w.key("message").value(message);
    w.end_object();
    set_json(r, 200, w.take());
}

// Where EMQ X answered an empty 404 or dropped the connection: a 404 with a JSON body saying why.
void not_found(http_response& r, std::string_view message) { json_error(r, 404, message); }

// A decimal integer as Erlang's list_to_integer read it: an optional sign, digits, any size (saturated to 64 bits: a
// page past the end is empty, a page size past the table gives all of it).
bool parse_int(const std::string& s, int64_t& out) {
    const char* b = s.data();
    const char* e = b + s.size();
    const bool negative = b != e && *b == '-';
    if (b != e && (*b == '+' || *b == '-')) ++b;
    if (b == e) return false;
    uint64_t v = 0;
    auto [p, ec] = std::from_chars(b, e, v);
    if (p != e) return false;
    if (ec == std::errc::result_out_of_range)
        v = UINT64_MAX;
    else if (ec != std::errc())
        return false;
    if (negative)
        out = v > uint64_t{INT64_MAX} ? INT64_MIN : -static_cast<int64_t>(v);
    else
        out = v > uint64_t{INT64_MAX} ? INT64_MAX : static_cast<int64_t>(v);
    return true;
}

// curr_page / page_size as EMQ X read them: decimal integers (anything else -> 404), defaults 1 and 20. A list needs
// page_size >= 1 (EMQ X divided by it and answered 404); curr_page <= 1 is the first page and is echoed as given. A
// lookup (`list` false) parses both and ignores them.
bool paging(const http_request& req, bool list, int64_t& page, int64_t& size, std::string& why) {
    page = 1;
    size = 20;
    if (const std::string* p = req.query_param("curr_page")) {
        if (!parse_int(*p, page)) {
            why = "curr_page must be an integer";
            return false;
        }
    }
    if (const std::string* p = req.query_param("page_size")) {
        if (!parse_int(*p, size) || (list && size < 1)) {
            why = list ? "page_size must be an integer >= 1" : "page_size must be an integer";
            return false;
        }
    }
    return true;
}

// The index of a page's first row (size >= 1); past the end of any table when it does not fit in 64 bits.
uint64_t page_offset(int64_t page, int64_t size) {
    if (page <= 1) return 0;
    uint64_t offset = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(page - 1), static_cast<uint64_t>(size), &offset))
        return UINT64_MAX;
    return offset;
}

std::string join(const seg_t& s, size_t from) {
    std::string out;
    for (size_t i = from; i < s.size(); ++i) {
        if (i > from) out += '/';
        out += s[i];
    }
    return out;
}

void client_json(json_writer& w, const broker::client_row& c) {
    w.begin_object();
    w.key("client_id").value(c.client_id);
    w.key("username").value(c.username);
    w.key("ipaddress").value(c.ipaddress);
    w.key("port").value(static_cast<unsigned>(c.port));
    w.key("clean_sess").value(c.clean_sess);
    w.key("proto_ver").value(c.proto_ver);
    w.key("keepalive").value(static_cast<unsigned>(c.keepalive));
    w.key("connected_at").value(format_datetime(c.connected_at));
    w.end_object();
}

void session_json(json_writer& w, const broker::session_row& s) {
    w.begin_object();
    w.key("client_id").value(s.client_id);
    w.key("clean_sess").value(s.clean_sess);
    w.key("max_inflight").value(static_cast<unsigned long long>(s.max_inflight));
    w.key("inflight_queue").value(static_cast<unsigned long long>(s.inflight_queue));
    w.key("message_queue").value(static_cast<unsigned long long>(s.message_queue));
    w.key("message_dropped").value(static_cast<unsigned long long>(s.message_dropped));
    w.key("awaiting_rel").value(static_cast<unsigned long long>(s.awaiting_rel));
    w.key("awaiting_ack").value(static_cast<unsigned long long>(s.awaiting_ack));
    w.key("awaiting_comp").value(static_cast<unsigned long long>(s.awaiting_comp));
    w.key("created_at").value(format_datetime(s.created_at));
    w.end_object();
}

void subscription_json(json_writer& w, const broker::subscription_row& s) {
    w.begin_object();
    w.key("client_id").value(s.client_id);
    w.key("topic").value(s.topic);
    w.key("qos").value(static_cast<unsigned>(s.qos));
    w.end_object();
}

// The body of a POST/PUT as a JSON object. Returns false after filling resp with 109/107.
struct body_params {
    simdjson::dom::parser parser;
    simdjson::dom::object obj;
    bool has = false;
};

// simdjson refuses a number past 64 bits (or a double's range) as it refuses a malformed one (NUMBER_ERROR), and
// stops there. Each number of t written as JSON writes one, between the characters that may surround one, is replaced
// by 0 in a copy, which is parsed again: where that parses, t is JSON with numbers the API takes for no parameter.
// Returns whether the copy's root is an object, or nullopt where t is not JSON either.
std::optional<bool> json_but_for_large_numbers(std::string_view t) {
    const auto digit = [&](size_t k) { return k < t.size() && t[k] >= '0' && t[k] <= '9'; };
    const auto digits = [&](size_t k) {
        while (digit(k))
            ++k;
        return k;
    };
    const auto around = [&](size_t k, const char* chars) {
        return t[k] != '\0' && std::strchr(chars, t[k]) != nullptr;
    };
    std::string copy;
    copy.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
        if (t[i] == '"') { // a string, copied whole
            size_t k = i + 1;
            while (k < t.size() && t[k] != '"')
                k += t[k] == '\\' ? 2 : 1;
            k = std::min(k + 1, t.size());
            copy.append(t.substr(i, k - i));
            i = k;
            continue;
        }
        if (t[i] != '-' && !digit(i)) {
            copy.push_back(t[i++]);
            continue;
        }
        size_t k = i + (t[i] == '-');
        if (!digit(k)) return std::nullopt;
        k = t[k] == '0' ? k + 1 : digits(k);
        if (k < t.size() && t[k] == '.' && digit(k + 1)) k = digits(k + 1);
        if (k < t.size() && (t[k] == 'e' || t[k] == 'E')) {
            const size_t sign = k + 1 < t.size() && (t[k + 1] == '+' || t[k + 1] == '-') ? k + 2 : k + 1;
            if (digit(sign)) k = digits(sign);
        }
        // What may come before and after a number in JSON (else "--1" or "1e5e3" would pass as "-0" or "0e0").
        if ((i > 0 && !around(i - 1, " \t\r\n:[,")) || (k < t.size() && !around(k, " \t\r\n,]}"))) return std::nullopt;
        copy.push_back('0');
        i = k;
    }
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    if (parser.parse(copy).get(root) != simdjson::SUCCESS) return std::nullopt;
    return root.is_object();
}

bool parse_body(const http_request& req, body_params& b, http_response& resp) {
    if (req.body.empty()) {
        b.has = false;
        return true;
    }
    simdjson::dom::element root;
    if (const auto err = b.parser.parse(req.body).get(root); err != simdjson::SUCCESS) {
        // A number too large for 64 bits is JSON, and was answered "Body not json".
        const auto json = err == simdjson::NUMBER_ERROR ? json_but_for_large_numbers(req.body) : std::nullopt;
        if (!json)
            api_error(resp, 109, "Body not json");
        else if (*json)
            api_error(resp, 108, "params type error");
        else
            api_error(resp, 107, "params error"); // as for any body that is JSON but not an object
        return false;
    }
    if (root.get_object().get(b.obj) != simdjson::SUCCESS) {
        api_error(resp, 107, "params error"); // EMQ X's very words for a body that is not an object
        return false;
    }
    b.has = true;
    return true;
}

// The body of a route that takes no parameters (the DELETEs): EMQ X's dispatcher still checked that a body was
// JSON before the handler ran, so one that is not gets 109 and nothing is done.
bool body_json_or_empty(const http_request& req, http_response& resp) {
    if (req.body.empty()) return true;
    simdjson::dom::parser parser;
    simdjson::dom::element root;
    const auto err = parser.parse(req.body).get(root);
    if (err == simdjson::SUCCESS || (err == simdjson::NUMBER_ERROR && json_but_for_large_numbers(req.body)))
        return true;
    api_error(resp, 109, "Body not json");
    return false;
}

enum class pstat { ok, missing, wrong_type };

// Looks a key up in the body: missing when there is no body or no such key.
pstat find_param(const body_params& b, const char* key, simdjson::dom::element& e) {
    if (!b.has || b.obj.at_key(key).get(e) != simdjson::SUCCESS) return pstat::missing;
    return pstat::ok;
}

pstat get_string(const body_params& b, const char* key, std::string& out) {
    simdjson::dom::element e;
    if (find_param(b, key, e) != pstat::ok) return pstat::missing;
    std::string_view v;
    if (e.get_string().get(v) != simdjson::SUCCESS) return pstat::wrong_type;
    out = std::string(v);
    return pstat::ok;
}

pstat get_bool(const body_params& b, const char* key, bool& out) {
    simdjson::dom::element e;
    if (find_param(b, key, e) != pstat::ok) return pstat::missing;
    return e.get_bool().get(out) == simdjson::SUCCESS ? pstat::ok : pstat::wrong_type;
}

// An integer past int64's range (up to 2^64 - 1) is taken as INT64_MAX: an integer, out of every range the API
// takes (a qos of 2^63 was "wrong type" where 2^63 - 1 was "qos must be 0, 1 or 2").
pstat get_int(const body_params& b, const char* key, int64_t& out) {
    simdjson::dom::element e;
    if (find_param(b, key, e) != pstat::ok) return pstat::missing;
    if (e.get_int64().get(out) == simdjson::SUCCESS) return pstat::ok;
    if (!e.is_uint64()) return pstat::wrong_type;
    out = INT64_MAX;
    return pstat::ok;
}

// Checks mandatory parameters in order: any missing -> 107, then any of the wrong type -> 108. Variadic rather than
// an initializer_list: GCC 12 miscompiles initializer_list temporaries inside coroutines.
template <class... P> bool require(http_response& resp, P... args) {
    const pstat st[] = {args...};
    for (pstat s : st)
        if (s == pstat::missing) {
            api_error(resp, 107, "params error");
            return false;
        }
    for (pstat s : st)
        if (s == pstat::wrong_type) {
            api_error(resp, 108, "params type error");
            return false;
        }
    return true;
}

struct plugin_def {
    const char* name;
    const char* description;
};
const plugin_def plugin_defs[] = {
    {"ringmq_admin", "ringmq management REST API v2 (this API)"},
    {"ringmq_retainer", "ringmq retained messages"},
    {"ringmq_sys", "ringmq $SYS topic publisher"},
};

} // namespace

reactor::task<void> server::handle(const http_request& req, http_response& resp) {
    const seg_t& seg = req.segments;
    if (req.bad_encoding) {
        json_error(resp, 400, "bad percent-encoding in the request target");
        co_return;
    }
    if (seg.empty() && (req.method == "GET" || req.method == "HEAD")) {
        // EMQ X's index of its API: no auth, no code wrapper.
        static constexpr const char* paths[] = {
            "api/v2/management/nodes",
            "api/v2/management/nodes/{node_name}",
            "api/v2/monitoring/nodes",
            "api/v2/monitoring/nodes/{node_name}",
            "api/v2/nodes/{node_name}/clients",
            "api/v2/nodes/{node_name}/clients/{client_id}",
            "api/v2/clients/{client_id}",
            "api/v2/nodes/{node_name}/sessions",
            "api/v2/nodes/{node_name}/sessions/{client_id}",
            "api/v2/sessions/{client_id}",
            "api/v2/nodes/{node_name}/subscriptions",
            "api/v2/nodes/{node_name}/subscriptions/{client_id}",
            "api/v2/subscriptions/{client_id}",
            "api/v2/routes",
            "api/v2/routes/{topic}",
            "api/v2/mqtt/publish",
            "api/v2/mqtt/subscribe",
            "api/v2/mqtt/unsubscribe",
            "api/v2/nodes/{node_name}/plugins",
            "api/v2/nodes/{node_name}/plugins/{plugin_name}",
            "api/v2/monitoring/listeners",
            "api/v2/monitoring/listeners/{node_name}",
            "api/v2/monitoring/metrics",
            "api/v2/monitoring/metrics/{node_name}",
            "api/v2/monitoring/stats",
            "api/v2/monitoring/stats/{node_name}",
            "api/v2/auth",
            "api/v2/users",
            "api/v2/users/{username}",
            "api/v2/change_pwd/{username}",
        };
        json_writer w;
        w.begin_object().key("paths").begin_array();
        for (const char* p : paths)
            w.value(p);
        w.end_array().end_object();
        set_json(resp, 200, w.take());
        co_return;
    }
    if (seg.size() == 1 && seg[0] == "status" && (req.method == "GET" || req.method == "HEAD")) {
        resp.status = 200;
        resp.content_type = "text/plain";
        resp.body = "Node " + cfg_.node_name + " is started\nringmq is running";
        co_return;
    }
    if (seg.size() < 2 || seg[0] != "api" || seg[1] != "v2") {
        not_found(resp, "unknown path: " + req.path);
        co_return;
    }
    const seg_t rest(seg.begin() + 2, seg.end());
    if (rest.size() == 1 && rest[0] == "auth") {
        // EMQ X asked no credentials on this path, whatever the method: another method is just not there.
        if (req.method == "POST")
            auth_api(req, resp);
        else
            not_found(resp, fmt::format("no endpoint {} {}", req.method, req.path));
        co_return;
    }
    std::string user, password;
    const std::string* authz = req.header("authorization");
    const bool parsed = authz && parse_basic_auth(*authz, user, password);
    const login l = parsed ? check_password(user, password) : login::wrong;
    if (l == login::busy) {
        too_many_checks(resp);
        co_return;
    }
    if (l != login::ok) {
        json_error(resp, 401, authz ? "wrong username or password" : "authentication required");
        resp.headers.emplace_back("WWW-Authenticate", "Basic realm=\"ringmq\"");
        co_return;
    }
    co_await dispatch(req, rest, resp);
}

reactor::task<void> server::dispatch(const http_request& req, const seg_t& s, http_response& resp) {
    const std::string& m = req.method;
    const size_t n = s.size();
    auto is = [&](size_t i, const char* lit) { return i < n && s[i] == lit; };
    const bool get = m == "GET";
    // An id or topic captured from segment `from` on, as EMQ X's "(.+?)/?$" did: one trailing slash is dropped
    // unless that leaves nothing ("routes//" is the topic "/").
    auto captured = [&](size_t from) {
        std::string c = join(s, from);
        if (c.empty() && !req.path.empty() && req.path.back() == '/') c = "/";
        return c;
    };
    auto node_known = [&](const std::string& node) {
        if (node == cfg_.node_name) return true;
        not_found(resp, "unknown node: " + node);
        return false;
    };

    // nodes
    if (get && is(0, "management") && is(1, "nodes") && n == 2) {
        json_writer w;
        w.begin_array();
        nodes_management(w, true);
        w.end_array();
        ok(resp, w.str());
        co_return;
    }
    if (get && is(0, "management") && is(1, "nodes") && n >= 3) {
        if (!node_known(join(s, 2))) co_return;
        json_writer w;
        nodes_management(w, false);
        ok(resp, w.str());
        co_return;
    }
    if (get && is(0, "monitoring") && is(1, "nodes") && n == 2) {
        json_writer w;
        w.begin_array();
        co_await nodes_monitoring(w);
        w.end_array();
        ok(resp, w.str());
        co_return;
    }
    if (get && is(0, "monitoring") && is(1, "nodes") && n >= 3) {
        if (!node_known(join(s, 2))) co_return;
        json_writer w;
        co_await nodes_monitoring(w);
        ok(resp, w.str());
        co_return;
    }
    // clients, sessions, subscriptions on a node
    if (get && (is(0, "nodes") || is(0, "node")) && n >= 3) {
        const bool typo = s[0] == "node";
        const std::string& node = s[1];
        const std::string& what = s[2];
        list_kind kind;
        if (what == "clients" && !typo)
            kind = list_kind::clients;
        else if (what == "sessions")
            kind = list_kind::sessions;
        else if (what == "subscriptions" && !typo)
            kind = list_kind::subscriptions;
        else if (what == "plugins" && !typo && n == 3) {
            if (!node_known(node)) co_return;
            plugins_list(resp);
            co_return;
        } else {
            not_found(resp, "unknown path: " + req.path);
            co_return;
        }
        if (!node_known(node)) co_return;
        if (n == 3)
            co_await paged_list(kind, req, resp);
        else if (!typo) {
            const std::string id_arg = captured(3);
            co_await lookup(kind, id_arg, req, resp);
        } else
            not_found(resp, "unknown path: " + req.path);
        co_return;
    }
    if (m == "PUT" && is(0, "nodes") && n == 4 && is(2, "plugins")) {
        plugin_set(s[1], s[3], req, resp); // an unknown node is EMQ X's 102 here, not a 404
        co_return;
    }
    if (is(0, "clients") && n >= 2) {
        if (get) {
            const std::string id_arg = captured(1);
            co_await lookup(list_kind::clients, id_arg, req, resp);
            co_return;
        }
        if (m == "DELETE") {
            if (!body_json_or_empty(req, resp)) co_return;
            const std::string id_arg = captured(1);
            co_await kick(id_arg, resp);
            co_return;
        }
    }
    if (get && is(0, "sessions") && n >= 2) {
        const std::string id_arg = captured(1);
        co_await lookup(list_kind::sessions, id_arg, req, resp);
        co_return;
    }
    if (get && is(0, "subscriptions") && n >= 2) {
        const std::string id_arg = captured(1);
        co_await lookup(list_kind::subscriptions, id_arg, req, resp);
        co_return;
    }
    if (get && is(0, "routes")) {
        if (n == 1) {
            co_await routes(req, nullptr, resp);
            co_return;
        }
        const std::string topic = captured(1);
        co_await routes(req, &topic, resp);
        co_return;
    }
    if (m == "POST" && is(0, "mqtt") && n == 2) {
        const int action = s[1] == "publish" ? 0 : s[1] == "subscribe" ? 1 : s[1] == "unsubscribe" ? 2 : -1;
        if (action >= 0) {
            co_await mqtt_action(action, req, resp);
            co_return;
        }
    }
    if (get && is(0, "monitoring") && n >= 2 && n <= 3) {
        const bool all = n == 2;
        if (!all && !node_known(s[2])) co_return;
        if (s[1] == "listeners") {
            co_await listeners(all, resp);
            co_return;
        }
        if (s[1] == "metrics") {
            co_await metrics(all, resp);
            co_return;
        }
        if (s[1] == "stats") {
            co_await stats(all, resp);
            co_return;
        }
    }
    if (is(0, "users") || is(0, "change_pwd")) {
        users_api(req, s, resp);
        co_return;
    }
    not_found(resp, fmt::format("no endpoint {} {}", m, req.path));
}

// --- nodes -------------------------------------------------------------------------------------------------------

void server::nodes_management(json_writer& w, bool with_name) {
    const int64_t now = static_cast<int64_t>(::time(nullptr));
    w.begin_object();
    if (with_name) w.key("name").value(cfg_.node_name);
    w.key("version").value(RINGMQ_VERSION);
    w.key("sysdescr").value("ringmq MQTT broker");
    w.key("uptime").value(format_uptime(now - node_.started_at));
    w.key("datetime").value(format_datetime(now));
    w.key("otp_release").value("C++20/" __VERSION__);
    w.key("node_status").value("Running");
    w.end_object();
}

reactor::task<void> server::nodes_monitoring(json_writer& w) {
    std::vector<broker::shard_snapshot> snaps;
    co_await collect(snaps);
    uint64_t clients = 0, connections = 0;
    for (const auto& s : snaps) {
        clients += s.s.clients.count;
        connections += s.connections;
    }
    const process_memory mem = read_memory();
    std::string l1, l5, l15;
    read_loadavg(l1, l5, l15);
    auto mem_value = [&](uint64_t b) {
        const std::string t = format_kmg(b);
        if (t.empty())
            w.value(static_cast<unsigned long long>(b));
        else
            w.value(t);
    };
    w.begin_object();
    w.key("name").value(cfg_.node_name);
    w.key("otp_release").value("C++20/" __VERSION__);
    w.key("memory_total");
    mem_value(mem.rss);
    w.key("memory_used");
    mem_value(mem.anon);
    w.key("process_available").value(static_cast<unsigned long long>(cfg_.limits.max_connections));
    w.key("process_used").value(static_cast<unsigned long long>(connections));
    w.key("max_fds").value(static_cast<unsigned long long>(max_fds()));
    w.key("clients").value(static_cast<unsigned long long>(clients));
    w.key("node_status").value("Running");
    w.key("load1").value(l1);
    w.key("load5").value(l5);
    w.key("load15").value(l15);
    w.end_object();
}

// --- clients, sessions, subscriptions ----------------------------------------------------------------------------

reactor::task<void> server::paged_list(list_kind kind, const http_request& req, http_response& resp) {
    int64_t page = 0, size = 0;
    std::string why;
    if (!paging(req, true, page, size, why)) {
        not_found(resp, why);
        co_return;
    }
    // Count on every shard, then fetch only the rows of the requested page from the shards that hold them.
    const unsigned shards = node_.mqtt_shards;
    std::vector<size_t> counts(shards, 0);
    const shard_fn fn1 = [&counts, kind](broker::shard_control& c) {
        counts[c.shard_id()] = kind == list_kind::clients    ? c.client_count()
                               : kind == list_kind::sessions ? c.session_count()
                                                             : c.subscription_count();
    };
    co_await on_all(fn1);
    uint64_t total = 0;
    for (size_t c : counts)
        total += c;
    const uint64_t offset = page_offset(page, size);
    std::vector<unsigned> targets;
    std::vector<std::pair<size_t, size_t>> slice(shards, {0, 0});
    uint64_t before = 0, want = static_cast<uint64_t>(size);
    for (unsigned i = 0; i < shards && want > 0; ++i) {
        const uint64_t lo = before, hi = before + counts[i];
        before = hi;
        if (offset >= hi) continue;
        const uint64_t start = offset > lo ? offset - lo : 0;
        const uint64_t take = std::min<uint64_t>(want, counts[i] - start);
        slice[i] = {start, take};
        want -= take;
        targets.push_back(i);
    }
    std::vector<std::vector<broker::client_row>> crow(shards);
    std::vector<std::vector<broker::session_row>> srow(shards);
    std::vector<std::vector<broker::subscription_row>> brow(shards);
    // Rows are fetched in chunks of about broker::list_chunk_rows per shard and round, each call also bounded in the
    // entries it passes, so a huge or deep page never holds an MQTT shard for long: between two rounds it serves its
    // clients. Each shard's walk goes on from where this request's previous chunk left it.
    const auto first_slice = slice;
    std::vector<broker::list_cursor> cursors(shards);
    std::vector<unsigned> restarts(shards, 0);
    while (!targets.empty()) {
        std::vector<size_t> got(shards, 0);
        std::vector<broker::list_chunk> walk(shards);
        const shard_fn fn2 = [&, kind](broker::shard_control& c) {
            const unsigned i = c.shard_id();
            const size_t before = crow[i].size() + srow[i].size() + brow[i].size();
            if (kind == list_kind::clients)
                walk[i] = c.clients(cursors[i], slice[i].first, slice[i].second, crow[i]);
            else if (kind == list_kind::sessions)
                walk[i] = c.sessions(cursors[i], slice[i].first, slice[i].second, srow[i]);
            else
                walk[i] = c.subscriptions(cursors[i], slice[i].first, slice[i].second, brow[i]);
            got[i] = crow[i].size() + srow[i].size() + brow[i].size() - before;
        };
        co_await on_shards(targets, fn2);
        std::vector<unsigned> next;
        for (unsigned i : targets) {
            // The shard's table was rehashed since its last chunk, so its walk began again in another order: the
            // rows taken in the old order go, and its part of the page is read anew (a table rehashes a handful of
            // times as it grows; past a few dozen, what was taken stays).
            if (walk[i].restarted && ++restarts[i] <= 32) {
                crow[i].clear();
                srow[i].clear();
                brow[i].clear();
                slice[i] = first_slice[i];
                cursors[i] = {};
                next.push_back(i);
                continue;
            }
            slice[i].first += got[i];
            slice[i].second -= got[i];
            if (!walk[i].ended && slice[i].second > 0) next.push_back(i); // (an ended walk: its table shrank meanwhile)
        }
        targets.swap(next);
    }
    // The counts came a round before the rows: a client that left between them leaves the page a row short of what
    // its count promised (a total of 4 over 3 rows, in 2% of pages read while clients came and went), so each row
    // missing is one fewer in all. (One that came meanwhile is not in the page, nor in the count.)
    const uint64_t planned = static_cast<uint64_t>(size) - want;
    uint64_t got = 0;
    for (unsigned i = 0; i < shards; ++i)
        got += crow[i].size() + srow[i].size() + brow[i].size();
    if (got < planned) total -= planned - got;
    json_writer w;
    w.begin_object();
    w.key("current_page").value(static_cast<long long>(page));
    w.key("page_size").value(static_cast<long long>(size));
    w.key("total_num").value(static_cast<unsigned long long>(total));
    w.key("total_page").value(static_cast<unsigned long long>((total + size - 1) / size));
    w.key("objects").begin_array();
    for (unsigned i = 0; i < shards; ++i) {
        for (const auto& r : crow[i])
            client_json(w, r);
        for (const auto& r : srow[i])
            session_json(w, r);
        for (const auto& r : brow[i])
            subscription_json(w, r);
    }
    w.end_array().end_object();
    ok(resp, w.str());
}

reactor::task<void> server::lookup(list_kind kind, const std::string& id, const http_request& req,
                                   http_response& resp) {
    int64_t page = 0, size = 0;
    std::string why;
    if (!paging(req, false, page, size, why)) { // parsed, then ignored, as EMQ X did
        not_found(resp, why);
        co_return;
    }
    // A client's session and connection live on its home shard only.
    const unsigned home = home_shard(id, node_.mqtt_shards);
    broker::client_row crow;
    broker::session_row srow;
    std::vector<broker::subscription_row> subs;
    bool found = false;
    const shard_fn fn3 = [&](broker::shard_control& c) {
        if (kind == list_kind::clients)
            found = c.client(id, crow);
        else if (kind == list_kind::sessions)
            found = c.session(id, srow);
        else
            c.client_subscriptions(id, subs);
    };
    co_await on_shard(home, fn3);
    json_writer w;
    w.begin_object().key("objects").begin_array();
    if (kind == list_kind::clients && found) client_json(w, crow);
    if (kind == list_kind::sessions && found) session_json(w, srow);
    if (kind == list_kind::subscriptions) {
        std::sort(subs.begin(), subs.end(), [](const auto& a, const auto& b) { return a.topic < b.topic; });
        for (const auto& r : subs)
            subscription_json(w, r);
    }
    w.end_array().end_object();
    ok(resp, w.str());
}

reactor::task<void> server::kick(const std::string& id, http_response& resp) {
    bool kicked = false;
    const shard_fn fn4 = [&](broker::shard_control& c) { kicked = c.kick(id); };
    co_await on_shard(home_shard(id, node_.mqtt_shards), fn4);
    if (kicked)
        ok_empty(resp);
    else
        api_error(resp, 112, ""); // {"code":112} only, as EMQ X answered
}

// --- routes ------------------------------------------------------------------------------------------------------

// A route is a filter with a subscriber on some shard; the node's table is the sorted union of the shards'. A page
// of it is merged from the shards' sorted lists, read in chunks from the start, each chunk after the last route the
// previous one gave: a request holds a few chunks, never the table, no MQTT shard works long for one chunk, and a
// route subscribed throughout is listed once whatever changes meanwhile (a deep page costs a read of the routes
// before it, in chunks).
reactor::task<void> server::routes_page(uint64_t offset, uint64_t size, std::vector<std::string>& out) {
    struct source {
        std::vector<std::string> rows;
        size_t next = 0; // rows[next] is this shard's smallest route not yet merged
        bool ended = false;
        std::string after; // the last route this shard gave
    };
    std::vector<source> src(node_.mqtt_shards);
    constexpr size_t rows_per_call = 1000;
    std::string last; // the last route merged: a route on several shards comes once from each, one after another
    for (uint64_t index = 0; index < offset + size;) {
        std::vector<unsigned> empty;
        for (unsigned i = 0; i < src.size(); ++i)
            if (src[i].next == src[i].rows.size() && !src[i].ended) empty.push_back(i);
        if (!empty.empty()) {
            // No shard can give more of the rows still wanted than they number: a small page copies little.
            const size_t ask = static_cast<size_t>(std::min<uint64_t>(rows_per_call, offset + size - index));
            const shard_fn fn = [&src, ask](broker::shard_control& c) {
                source& s = src[c.shard_id()];
                s.rows.clear();
                s.next = 0;
                s.ended = c.routes_after(s.after, ask, s.rows);
            };
            co_await on_shards(empty, fn);
            for (unsigned i : empty)
                if (!src[i].rows.empty()) src[i].after = src[i].rows.back();
        }
        source* min = nullptr;
        for (source& s : src)
            if (s.next < s.rows.size() && (!min || s.rows[s.next] < min->rows[min->next])) min = &s;
        if (!min) break; // every shard's list is read
        std::string& route = min->rows[min->next++];
        if (route == last && index > 0) continue;
        last = route;
        if (index++ >= offset) out.push_back(std::move(route));
    }
}

reactor::task<void> server::routes(const http_request& req, const std::string* topic, http_response& resp) {
    int64_t page = 0, size = 0;
    std::string why;
    if (!paging(req, topic == nullptr, page, size, why)) { // a topic's lookup parses and ignores them
        not_found(resp, why);
        co_return;
    }
    json_writer w;
    w.begin_object();
    if (topic) {
        // One exact lookup per shard: the whole table is never copied for one route.
        std::vector<char> held(node_.mqtt_shards, 0);
        const shard_fn fn = [&held, topic](broker::shard_control& c) { held[c.shard_id()] = c.has_route(*topic); };
        co_await on_all(fn);
        w.key("objects").begin_array();
        if (std::find(held.begin(), held.end(), 1) != held.end())
            w.begin_object().key("topic").value(*topic).key("node").value(cfg_.node_name).end_object();
        w.end_array().end_object();
        ok(resp, w.str());
        co_return;
    }
    // The count of the routes that no lower-numbered shard has, as the stats' routes/count.
    std::vector<size_t> counts(node_.mqtt_shards, 0);
    const shard_fn count = [&counts](broker::shard_control& c) { counts[c.shard_id()] = c.route_count(); };
    co_await on_all(count);
    uint64_t total = 0;
    for (size_t n : counts)
        total += n;
    std::vector<std::string> rows;
    const uint64_t offset = page_offset(page, size);
    co_await routes_page(offset, static_cast<uint64_t>(size), rows);
    // The count came a round before the rows: routes that came or went between would leave the page at odds with it
    // (a count of 2 over an empty first page, as the last subscriber left). A short page is the table's end, a full
    // one says there are at least as many.
    if (rows.size() < static_cast<uint64_t>(size))
        total = rows.empty() && offset > 0 ? std::min(total, offset) : offset + rows.size();
    else
        total = std::max<uint64_t>(total, offset + rows.size());
    w.key("current_page").value(static_cast<long long>(page));
    w.key("page_size").value(static_cast<long long>(size));
    w.key("total_num").value(static_cast<unsigned long long>(total));
    w.key("total_page").value(static_cast<unsigned long long>((total + size - 1) / size));
    w.key("objects").begin_array();
    for (const std::string& route : rows)
        w.begin_object().key("topic").value(route).key("node").value(cfg_.node_name).end_object();
    w.end_array().end_object();
    ok(resp, w.str());
}

// --- mqtt/publish, subscribe, unsubscribe ------------------------------------------------------------------------

// The limits an MQTT client's topic or filter meets: valid, at most 65535 bytes (no packet carries more), at most
// mqtt.max_topic_levels levels (the shards refuse deeper ones from clients). Answers 102 as EMQ X when not.
bool server::api_topic_ok(const std::string& topic, bool filter, http_response& resp) const {
    const bool valid = filter ? mqtt::valid_topic_filter(topic) : mqtt::valid_topic_name(topic);
    if (valid && topic.size() <= mqtt::max_string_length && mqtt::topic_levels(topic) <= cfg_.limits.max_topic_levels)
        return true;
    api_error(resp, 102, "validate topic: " + topic + " fail");
    return false;
}

reactor::task<void> server::mqtt_action(int action, const http_request& req, http_response& resp) {
    body_params b;
    if (!parse_body(req, b, resp)) co_return;
    std::string topic, client_id = "http", payload;
    int64_t qos = 0;
    bool retain = false;
    const pstat t = get_string(b, "topic", topic);
    if (action == 0) {
        if (!require(resp, t)) co_return;
        const pstat p = get_string(b, "payload", payload);
        const pstat q = get_int(b, "qos", qos);
        const pstat r = get_bool(b, "retain", retain);
        const pstat c = get_string(b, "client_id", client_id);
        if (p == pstat::wrong_type || q == pstat::wrong_type || r == pstat::wrong_type || c == pstat::wrong_type) {
            api_error(resp, 108, "params type error");
            co_return;
        }
        if (qos < 0 || qos > 2) {
            api_error(resp, 102, "qos must be 0, 1 or 2");
            co_return;
        }
        if (!api_topic_ok(topic, false, resp)) co_return;
        // No larger than an MQTT client may publish: subscribers sized for mqtt.max_packet_size would otherwise get
        // a bigger packet (admin.max_body_bytes can be set past it).
        const uint64_t whole = mqtt::publish_packet_size(topic.size(), static_cast<uint8_t>(qos), payload.size());
        if (whole > cfg_.limits.max_packet_size) {
            api_error(resp, 102,
                      fmt::format("a PUBLISH of {} bytes exceeds mqtt.max_packet_size = {}", whole,
                                  cfg_.limits.max_packet_size));
            co_return;
        }
        // Published from the client id's home shard, so messages from one API "client" keep their order.
        const shard_fn fn6 = [&](broker::shard_control& c) {
            c.publish(topic, {reinterpret_cast<const uint8_t*>(payload.data()), payload.size()},
                      static_cast<uint8_t>(qos), retain);
        };
        co_await on_shard(home_shard(client_id, node_.mqtt_shards), fn6);
        ok_empty(resp);
        co_return;
    }
    const pstat c = get_string(b, "client_id", client_id);
    if (!require(resp, c, t)) co_return;
    if (action == 1) {
        const pstat q = get_int(b, "qos", qos);
        if (q == pstat::wrong_type) {
            api_error(resp, 108, "params type error");
            co_return;
        }
        if (qos < 0 || qos > 2) {
            api_error(resp, 102, "qos must be 0, 1 or 2");
            co_return;
        }
    }
    if (!api_topic_ok(topic, true, resp)) co_return;
    using sub_result = broker::shard_control::subscribe_result;
    sub_result r = sub_result::done;
    bool found = true;
    const shard_fn fn7 = [&](broker::shard_control& sc) {
        if (action == 1)
            r = sc.subscribe(client_id, topic, static_cast<uint8_t>(qos));
        else
            found = sc.unsubscribe(client_id, topic);
    };
    co_await on_shard(home_shard(client_id, node_.mqtt_shards), fn7);
    if (!found || r == sub_result::no_session) {
        api_error(resp, 102, "Clientid: " + client_id + " not found");
        co_return;
    }
    if (r == sub_result::too_many) {
        api_error(resp, 102,
                  fmt::format("Clientid: {} has mqtt.max_subscriptions = {} subscriptions", client_id,
                              cfg_.limits.max_subscriptions));
        co_return;
    }
    ok_empty(resp);
}

// --- plugins -----------------------------------------------------------------------------------------------------

void server::plugins_list(http_response& resp) {
    json_writer w;
    w.begin_array();
    for (const plugin_def& p : plugin_defs) {
        bool active = true;
        if (std::string_view(p.name) == "ringmq_retainer") active = node_.retainer_active.load();
        if (std::string_view(p.name) == "ringmq_sys") active = sys_active_;
        w.begin_object().key("name").value(p.name).key("version").value(RINGMQ_VERSION);
        w.key("description").value(p.description).key("active").value(active).end_object();
    }
    w.end_array();
    ok(resp, w.str());
}

void server::plugin_set(const std::string& node, const std::string& name, const http_request& req,
                        http_response& resp) {
    body_params b;
    if (!parse_body(req, b, resp)) return;
    bool active = false;
    if (!require(resp, get_bool(b, "active", active))) return;
    // EMQ X answered an unknown node with 102 "unknown" for either value; an unknown plugin too when started.
    if (node != cfg_.node_name) {
        api_error(resp, 102, "unknown");
        return;
    }
    bool* state = nullptr;
    bool retainer = false;
    if (name == "ringmq_retainer") {
        retainer = node_.retainer_active.load();
        state = &retainer;
    } else if (name == "ringmq_sys") {
        state = &sys_active_;
    } else if (name == "ringmq_admin") {
        if (active) {
            api_error(resp, 110, "already_started");
        } else {
            api_error(resp, 102, "ringmq_admin cannot be stopped through its own API");
        }
        return;
    } else {
        // Stopping what is not running is EMQ X's 111 before it asks whether the name is a plugin at all.
        api_error(resp, active ? 102 : 111, active ? "unknown" : "not_started");
        return;
    }
    if (*state == active) {
        api_error(resp, active ? 110 : 111, active ? "already_started" : "not_started");
        return;
    }
    *state = active;
    if (name == "ringmq_retainer") node_.retainer_active.store(active);
    log::info("admin: plugin {} {}", name, active ? "started" : "stopped");
    ok_empty(resp);
}

// --- listeners, metrics, stats -----------------------------------------------------------------------------------

reactor::task<void> server::listeners(bool all_nodes, http_response& resp) {
    std::vector<broker::shard_snapshot> snaps;
    co_await collect(snaps);
    uint64_t mqtt_clients = 0;
    std::map<std::string, uint64_t> reasons;
    for (const auto& s : snaps) {
        mqtt_clients += s.connections;
        for (const auto& [r, c] : s.s.closed_by_reason)
            reasons[r] += c;
    }
    auto mqtt_row = [&](json_writer& w) {
        w.begin_object().key("protocol").value("mqtt:tcp").key("listen").value(li_.mqtt_listen);
        w.key("acceptors").value(node_.mqtt_shards);
        w.key("max_clients").value(static_cast<unsigned long long>(cfg_.limits.max_connections));
        w.key("current_clients").value(static_cast<unsigned long long>(mqtt_clients));
        w.key("shutdown_count");
        if (reasons.empty()) {
            w.begin_array().end_array();
        } else {
            w.begin_object();
            for (const auto& [r, c] : reasons)
                w.key(r).value(static_cast<unsigned long long>(c));
            w.end_object();
        }
        w.end_object();
    };
    auto api_row = [&](json_writer& w) {
        w.begin_object().key("protocol").value("mqtt:api").key("listen").value(li_.admin_listen);
        w.key("acceptors")
            .value(1)
            .key("max_clients")
            .value(static_cast<unsigned long long>(cfg_.admin.max_connections));
        w.key("current_clients").value(static_cast<unsigned long long>(open_fds_.size()));
        w.key("shutdown_count").begin_array().end_array().end_object();
    };
    json_writer w;
    if (all_nodes) {
        // EMQ X listed all nodes' listeners in reverse registration order (notes 13.1).
        w.begin_object().key(cfg_.node_name).begin_array();
        api_row(w);
        mqtt_row(w);
        w.end_array().end_object();
    } else {
        w.begin_array();
        mqtt_row(w);
        api_row(w);
        w.end_array();
    }
    ok(resp, w.str());
}

broker::metrics server::node_metrics(const std::vector<broker::shard_snapshot>& snaps) {
    broker::metrics sum;
    for (const auto& s : snaps)
        sum.add(s.m);
    // messages/retained is a per-node gauge every shard keeps a copy of: take it once, not summed.
    sum.messages_retained = snaps.empty() ? 0 : snaps[0].m.messages_retained;
    return sum;
}

reactor::task<void> server::metrics(bool all_nodes, http_response& resp) {
    std::vector<broker::shard_snapshot> snaps;
    co_await collect(snaps);
    const broker::metrics sum = node_metrics(snaps);
    json_writer w;
    if (all_nodes) w.begin_object().key(cfg_.node_name);
    w.begin_object();
    sum.for_each([&](std::string_view name, uint64_t v) { w.key(name).value(static_cast<unsigned long long>(v)); });
    w.end_object();
    if (all_nodes) w.end_object();
    ok(resp, w.str());
}

std::vector<std::pair<std::string, uint64_t>> server::stats_rows(const std::vector<broker::shard_snapshot>& snaps) {
    std::vector<std::pair<std::string, uint64_t>> rows;
    // The count is the shards' sum at the collect; the peak is the node's own high-water mark, which the shards
    // raise as a count grows (a peak between two requests counts, and shards that peak at different times do not
    // add up to more than was ever there). The count can be newer than the peak by a few operations: never below it.
    auto add = [&](const char* name, broker::gauge broker::stats::*g, const std::atomic<uint64_t>& peak) {
        uint64_t count = 0;
        for (const auto& s : snaps)
            count += (s.s.*g).count;
        rows.emplace_back(std::string(name) + "/count", count);
        rows.emplace_back(std::string(name) + "/max", std::max(count, peak.load(std::memory_order_relaxed)));
    };
    add("clients", &broker::stats::clients, node_.connected_peak);
    // Retained messages are replicated on every shard: the node's count is one shard's.
    const uint64_t rc = snaps.empty() ? 0 : snaps[0].s.retained.count;
    const uint64_t rm = snaps.empty() ? 0 : snaps[0].s.retained.max;
    rows.emplace_back("retained/count", rc);
    rows.emplace_back("retained/max", rm);
    // Routes: the union of the shards' filters, each counted by the lowest-numbered shard that has it (no listing).
    // Their peak is the highest that union was seen at (by a request, a $SYS round) or a shard's own filters peaked
    // at (never more than the union then): a high-water mark that never goes down (it was recomputed from the shards'
    // own peaks each time, so it fell below its last value once the routes went), though it can miss a peak between
    // two looks that no shard's own peak shows.
    uint64_t routes = 0;
    for (const auto& s : snaps)
        routes += s.first_routes;
    routes_peak_ = std::max(routes_peak_, routes);
    for (const auto& s : snaps)
        routes_peak_ = std::max(routes_peak_, s.s.routes.max);
    rows.emplace_back("routes/count", routes);
    rows.emplace_back("routes/max", routes_peak_);
    add("sessions", &broker::stats::sessions, node_.sessions_peak);
    add("subscribers", &broker::stats::subscribers, node_.subscriptions_peak);
    add("subscriptions", &broker::stats::subscriptions, node_.subscriptions_peak);
    rows.emplace_back("topics/count", routes);
    rows.emplace_back("topics/max", routes_peak_);
    std::sort(rows.begin(), rows.end()); // EMQ X printed the stats keys in alphabetical order
    return rows;
}

reactor::task<void> server::stats(bool all_nodes, http_response& resp) {
    std::vector<broker::shard_snapshot> snaps;
    co_await collect(snaps);
    const auto rows = stats_rows(snaps);
    json_writer w;
    if (all_nodes) w.begin_object().key(cfg_.node_name);
    w.begin_object();
    for (const auto& [k, v] : rows)
        w.key(k).value(static_cast<unsigned long long>(v));
    w.end_object();
    if (all_nodes) w.end_object();
    ok(resp, w.str());
}

// --- users and auth ----------------------------------------------------------------------------------------------

void server::auth_api(const http_request& req, http_response& resp) {
    body_params b;
    if (!parse_body(req, b, resp)) return;
    std::string user, password;
    if (!require(resp, get_string(b, "username", user), get_string(b, "password", password))) return;
    if (!users_.exists(user)) {
        api_error(resp, 103, "User not found");
        return;
    }
    const login l = check_password(user, password);
    if (l == login::busy) {
        too_many_checks(resp);
        return;
    }
    if (l != login::ok) {
        api_error(resp, 103, "Password error");
        return;
    }
    ok_empty(resp);
}

server::login server::check_password(std::string_view user, std::string_view password) {
    if (users_.verify_cached(user, password)) return login::ok;
    if (users_.known_wrong(user, password)) return login::wrong;
    if (!password_checks_.take(mono_ms())) {
        if (log::at_doubling(password_checks_refused_))
            log::warn("admin: over admin.password_checks_per_second = {}: answering 429 ({} so far)",
                      cfg_.admin.password_checks_per_second, password_checks_refused_);
        return login::busy;
    }
    return users_.verify(user, password) ? login::ok : login::wrong;
}

void server::too_many_checks(http_response& resp) {
    json_error(resp, 429, "too many password checks; try again shortly");
    resp.headers.emplace_back("Retry-After", "1");
}

void server::users_api(const http_request& req, const seg_t& s, http_response& resp) {
    const std::string& m = req.method;
    auto user_json = [](json_writer& w, const admin_user& u) {
        w.begin_object().key("username").value(u.username).key("tags").value(u.tags).end_object();
    };
    auto io_failed = [&](user_store::result r) {
        if (r == user_store::result::io_error) {
            log::error("admin: cannot save users: {}", users_.last_error());
            api_error(resp, 102, "cannot save the users file");
            return true;
        }
        if (r == user_store::result::invalid) {
            // The types were right: an empty name or password is the seed's 104 (EMQ X accepted it), anything else
            // the file cannot hold (':' or a control character) a parameter error saying which.
            if (users_.last_error_empty())
                api_error(resp, 104, "empty username or password");
            else
                api_error(resp, 107, "params error: " + users_.last_error());
            return true;
        }
        return false;
    };
    if (s[0] == "change_pwd") {
        if (m != "PUT" || s.size() != 2) {
            not_found(resp, "no endpoint " + m + " " + req.path);
            return;
        }
        body_params b;
        if (!parse_body(req, b, resp)) return;
        std::string old_pwd, new_pwd;
        if (!require(resp, get_string(b, "old_pwd", old_pwd), get_string(b, "new_pwd", new_pwd))) return;
        if (!users_.exists(s[1])) {
            api_error(resp, 105, "User not found");
            return;
        }
        const login l = check_password(s[1], old_pwd);
        if (l == login::busy) {
            too_many_checks(resp);
            return;
        }
        if (l != login::ok) {
            api_error(resp, 114, "OldPassword error");
            return;
        }
        const auto r = users_.update(s[1], std::string_view(new_pwd), std::nullopt);
        if (io_failed(r)) return;
        ok_empty(resp);
        return;
    }
    if (s.size() == 1 && m == "GET") {
        json_writer w;
        w.begin_array();
        for (const admin_user& u : users_.list())
            user_json(w, u);
        w.end_array();
        ok(resp, w.str());
        return;
    }
    if (s.size() == 1 && m == "POST") {
        body_params b;
        if (!parse_body(req, b, resp)) return;
        std::string user, password, tags;
        if (!require(resp, get_string(b, "username", user), get_string(b, "password", password),
                     get_string(b, "tags", tags)))
            return;
        const auto r = users_.add(user, password, tags);
        if (r == user_store::result::exists) {
            api_error(resp, 113, "User already exist");
            return;
        }
        if (io_failed(r)) return;
        log::info("admin: user {} added", user);
        ok_empty(resp);
        return;
    }
    if (s.size() == 2) {
        const std::string& name = s[1];
        if (m == "GET") {
            const auto u = users_.get(name);
            if (!u) {
                ok_empty(resp);
                return;
            }
            json_writer w;
            user_json(w, *u);
            ok(resp, w.str());
            return;
        }
        if (m == "PUT") {
            body_params b;
            if (!parse_body(req, b, resp)) return;
            // Tags only, as EMQ X: a "password" here is ignored like any other extra field. A password changes
            // through change_pwd, which asks for the old one, so one admin user cannot lock out another.
            std::string tags;
            if (!require(resp, get_string(b, "tags", tags))) return;
            if (!users_.exists(name)) {
                api_error(resp, 105, "User not found");
                return;
            }
            const auto r = users_.update(name, std::nullopt, std::string_view(tags));
            if (io_failed(r)) return;
            ok_empty(resp);
            return;
        }
        if (m == "DELETE") {
            if (!body_json_or_empty(req, resp)) return;
            if (name == cfg_.admin.default_user) {
                api_error(resp, 106, "admin cannot be deleted");
                return;
            }
            const auto r = users_.remove(name);
            if (r == user_store::result::not_found) {
                api_error(resp, 105, "User not found");
                return;
            }
            if (io_failed(r)) return;
            log::info("admin: user {} deleted", name);
            ok_empty(resp);
            return;
        }
    }
    not_found(resp, "no endpoint " + m + " " + req.path);
}

} // namespace ringmq::admin
