#include "admin/http.hpp"

#include "admin/json.hpp"

#include <llhttp.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace ringmq::admin {

namespace {

char lower_ascii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (lower_ascii(a[i]) != lower_ascii(b[i])) return false;
    return true;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// RFC 9110 5.6.2 tchar. llhttp's loose mode lets spaces and an empty name through; a header name that is not a
// token is a smuggling hazard behind proxies, so such requests are refused.
bool is_token(std::string_view s) {
    if (s.empty()) return false;
    for (const char c : s) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                        std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
        if (!ok) return false;
    }
    return true;
}

std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

// Fills path, segments and query from target.
void split_target(http_request& r) {
    std::string_view t = r.target;
    // absolute-form ("http://host/api/v2/..."): RFC 9112 says servers must accept it; the authority is not needed.
    if (t.size() > 8 && (iequals(t.substr(0, 7), "http://") || iequals(t.substr(0, 8), "https://"))) {
        t.remove_prefix(t[4] == ':' ? 7 : 8);
        const size_t slash = t.find_first_of("/?#");
        t = slash == std::string_view::npos ? std::string_view("/") : t.substr(slash);
    }
    if (const size_t hash = t.find('#'); hash != std::string_view::npos) t = t.substr(0, hash);
    std::string_view query;
    if (const size_t q = t.find('?'); q != std::string_view::npos) {
        query = t.substr(q + 1);
        t = t.substr(0, q);
    }
    r.path.assign(t);

    // One leading and one trailing slash go; every other slash separates two segments, empty ones included: an id or
    // topic captured from the path may hold raw slashes and empty levels ("routes//devices/1" is the topic
    // "/devices/1", as EMQ X's "^routes/(.+?)/?$" captured it), and collapsing "//" looked up another topic.
    std::string_view p = t;
    if (!p.empty() && p.front() == '/') p.remove_prefix(1);
    if (!p.empty() && p.back() == '/') p.remove_suffix(1);
    while (!p.empty() || !r.segments.empty()) {
        const size_t slash = p.find('/');
        std::string& out = r.segments.emplace_back();
        if (!percent_decode(p.substr(0, slash), false, out)) r.bad_encoding = true;
        if (slash == std::string_view::npos) break;
        p.remove_prefix(slash + 1); // may leave nothing: then one more, empty, segment ("a//" -> "a", "")
    }

    while (!query.empty()) {
        const size_t amp = query.find('&');
        const std::string_view item = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
        if (item.empty()) continue;
        const size_t eq = item.find('=');
        auto& [k, v] = r.query.emplace_back();
        if (!percent_decode(item.substr(0, eq), true, k)) r.bad_encoding = true;
        if (eq != std::string_view::npos && !percent_decode(item.substr(eq + 1), true, v)) r.bad_encoding = true;
    }
}

} // namespace

bool percent_decode(std::string_view in, bool plus_is_space, std::string& out) {
    out.clear();
    out.reserve(in.size());
    for (size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c == '%') {
            if (i + 2 >= in.size()) {
                out.assign(in);
                return false;
            }
            const int h = hex_digit(in[i + 1]);
            const int l = hex_digit(in[i + 2]);
            if (h < 0 || l < 0) {
                out.assign(in);
                return false;
            }
            out += static_cast<char>(h * 16 + l);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return true;
}

const std::string* http_request::header(std::string_view lower_name) const {
    for (const auto& [k, v] : headers)
        if (k == lower_name) return &v;
    return nullptr;
}

const std::string* http_request::query_param(std::string_view name) const {
    for (const auto& [k, v] : query)
        if (k == name) return &v;
    return nullptr;
}

// --- parser ------------------------------------------------------------------------------------------------------

// The llhttp state of one http_parser, owned by it (same thread, same lifetime).
struct http_parser::engine {
    llhttp_t ll;
};

// llhttp's C callbacks, stateless: each finds its http_parser through llhttp_t::data. They run inside feed(), on the
// admin shard thread.
struct http_parser::callbacks {
    static http_parser& self(llhttp_t* p) { return *static_cast<http_parser*>(p->data); }

    static int on_message_begin(llhttp_t* p) {
        self(p).in_message_ = true;
        return 0;
    }

    static int on_url(llhttp_t* p, const char* at, size_t n) {
        self(p).req_.target.append(at, n);
        return 0;
    }

    static int on_header_field(llhttp_t* p, const char* at, size_t n) {
        http_parser& s = self(p);
        if (s.headers_done_) return s.count_trailer(n);
        s.fields_begun_ = true;
        if (s.in_value_ && !s.push_header()) return -1;
        s.field_.append(at, n);
        return 0;
    }

    static int on_header_value(llhttp_t* p, const char* at, size_t n) {
        http_parser& s = self(p);
        if (s.headers_done_) return s.count_trailer(n);
        s.in_value_ = true;
        s.value_.append(at, n);
        return 0;
    }

    static int on_headers_complete(llhttp_t* p) {
        http_parser& s = self(p);
        if ((!s.field_.empty() || s.in_value_) && !s.push_header()) return -1;
        s.headers_done_ = true;
        // HTTP/1.x only: an HTTP/2.0 request line, or one without a version (0.9), was answered as 1.1.
        if (p->http_major != 1) {
            s.cb_status_ = 505;
            return -1;
        }
        // A transfer coding besides chunked (gzip, chunked) would be read as if it were not there (RFC 9112 6.1).
        if (const std::string* te = s.req_.header("transfer-encoding"); te && !iequals(*te, "chunked")) {
            s.cb_status_ = 501;
            return -1;
        }
        s.req_.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
        split_target(s.req_);
        // Refuse a declared body that cannot fit before any of it arrives (also answers Expect: 100-continue).
        if ((p->flags & F_CONTENT_LENGTH) && p->content_length > s.max_body_) {
            s.cb_status_ = 413;
            return -1;
        }
        if (const std::string* e = s.req_.header("expect"); e && iequals(*e, "100-continue") && p->http_major == 1 &&
                                                            p->http_minor >= 1 &&
                                                            ((p->flags & F_CHUNKED) || p->content_length > 0))
            s.expect_continue_ = true;
        // Stop here so feed() knows exactly how many bytes the head took.
        return HPE_PAUSED;
    }

    static int on_chunk_header(llhttp_t* p) {
        http_parser& s = self(p);
        // content_length is this chunk's size: refuse it before its data streams in.
        if (p->content_length > s.max_body_ - s.req_.body.size()) {
            s.cb_status_ = 413;
            return -1;
        }
        return 0;
    }

    static int on_body(llhttp_t* p, const char* at, size_t n) {
        http_parser& s = self(p);
        if (n > s.max_body_ - s.req_.body.size()) {
            s.cb_status_ = 413;
            return -1;
        }
        s.expect_continue_ = false;
        s.req_.body.append(at, n);
        return 0;
    }

    static int on_message_complete(llhttp_t* p) {
        http_parser& s = self(p);
        s.req_.keep_alive = llhttp_should_keep_alive(p) != 0 && p->upgrade == 0;
        s.ready_ = true;
        s.in_message_ = false;
        s.expect_continue_ = false;
        // One request per feed(): the next pipelined one must not overwrite this one before take().
        return HPE_PAUSED;
    }

    // A function-local static: llhttp keeps a pointer to it for the parser's lifetime, and this way it exists
    // before any parser does, whatever the static initialization order.
    static const llhttp_settings_t* settings() {
        static const llhttp_settings_t s = [] {
            llhttp_settings_t t;
            llhttp_settings_init(&t);
            t.on_message_begin = on_message_begin;
            t.on_url = on_url;
            t.on_header_field = on_header_field;
            t.on_header_value = on_header_value;
            t.on_headers_complete = on_headers_complete;
            t.on_chunk_header = on_chunk_header;
            t.on_body = on_body;
            t.on_message_complete = on_message_complete;
            return t;
        }();
        return &s;
    }
};

http_parser::http_parser(size_t max_header_bytes, size_t max_body_bytes)
    : ll_(std::make_unique<engine>()), max_header_(max_header_bytes), max_body_(max_body_bytes) {
    llhttp_init(&ll_->ll, HTTP_REQUEST, callbacks::settings());
    ll_->ll.data = this;
}

http_parser::~http_parser() = default;

bool http_parser::push_header() {
    if (!is_token(field_)) {
        cb_status_ = 400;
        return false;
    }
    std::string name = std::move(field_);
    std::transform(name.begin(), name.end(), name.begin(), lower_ascii);
    // Two credentials: a proxy that checks the last and this server, the first, would not agree on who asks.
    if (name == "authorization" && req_.header("authorization")) {
        cb_status_ = 400;
        cb_reason_ = "bad request: more than one Authorization header field";
        return false;
    }
    req_.headers.emplace_back(std::move(name), std::string(trim_ows(value_)));
    field_.clear();
    value_.clear();
    in_value_ = false;
    return true;
}

int http_parser::count_trailer(size_t n) {
    // Trailers are dropped (a trailer must not add an Authorization the head did not have), but still bounded.
    trailer_bytes_ += n;
    if (trailer_bytes_ > max_header_) {
        cb_status_ = 431;
        return -1;
    }
    return 0;
}

http_parser::status http_parser::fail(int http_status, std::string reason) {
    failed_ = true;
    error_status_ = http_status;
    error_reason_ = std::move(reason);
    return status::error;
}

http_parser::status http_parser::head_too_large() {
    // RFC 9110 15.5.15: a target longer than the server will read is 414, not a header field problem: so is a
    // request line that passes the limit before any header field has begun (its URL is what made it that long).
    if (!fields_begun_ && !headers_done_)
        return fail(414, "URI longer than the limit of " + std::to_string(max_header_) + " bytes");
    return fail(431, "request header fields larger than the limit");
}

http_parser::status http_parser::feed(const char* data, size_t n, size_t& consumed) {
    consumed = 0;
    if (failed_) return status::error;
    if (ready_) return status::request_ready;
    llhttp_t* ll = &ll_->ll;
    for (;;) {
        const char* p = data + consumed;
        size_t len = n - consumed;
        const bool in_head = !headers_done_;
        if (in_head) {
            if (len == 0) return status::need_more;
            // Never hand llhttp more than one byte past the header budget: it reports header bytes through
            // callbacks as it goes, so this bounds what we buffer and detects the overflow at limit + 1.
            const size_t budget = max_header_ - head_bytes_;
            if (len > budget) len = budget + 1;
        }
        const llhttp_errno_t e = llhttp_execute(ll, p, len);
        size_t used = len;
        if (e == HPE_PAUSED) {
            used = static_cast<size_t>(llhttp_get_error_pos(ll) - p);
            llhttp_resume(ll);
        } else if (e == HPE_PAUSED_UPGRADE) {
            // CONNECT or "Connection: upgrade" was handed out as a plain request with keep_alive false; llhttp
            // treats whatever follows as another protocol, which we do not speak.
            return fail(400, "bad request: protocol upgrade is not supported");
        } else if (e != HPE_OK) {
            const char* pos = llhttp_get_error_pos(ll);
            if (pos >= p && pos <= p + len) consumed += static_cast<size_t>(pos - p);
            if (cb_status_ == 400) return fail(400, cb_reason_ ? cb_reason_ : "bad request: invalid header name");
            if (cb_status_ == 413) return fail(413, "request body larger than the limit");
            if (cb_status_ == 431) return head_too_large();
            if (cb_status_ == 505) return fail(505, "HTTP version not supported: HTTP/1.0 and 1.1 only");
            if (cb_status_ == 501) return fail(501, "transfer coding not supported: chunked only");
            const char* why = llhttp_get_error_reason(ll);
            return fail(400, std::string("bad request: ") + llhttp_errno_name(e) + ": " + (why ? why : "?"));
        }
        consumed += used;
        if (in_head) {
            head_bytes_ += used;
            if (head_bytes_ > max_header_) return head_too_large();
        }
        if (ready_) return status::request_ready;
        // Headers just completed: continue into the body, even with no bytes left, so that a request without a
        // body completes in this call.
        if (in_head && headers_done_) continue;
        if (consumed == n) return status::need_more;
    }
}

http_request http_parser::take() {
    http_request r = std::move(req_);
    req_ = http_request{};
    field_.clear();
    value_.clear();
    in_value_ = false;
    head_bytes_ = 0;
    trailer_bytes_ = 0;
    fields_begun_ = false;
    headers_done_ = false;
    ready_ = false;
    expect_continue_ = false;
    return r;
}

bool http_parser::take_expect_continue() {
    const bool e = expect_continue_;
    expect_continue_ = false;
    return e;
}

// --- responses ---------------------------------------------------------------------------------------------------

const char* reason_phrase(int status) {
    // llhttp_status_name() gives enum names ("NOT_FOUND") and aborts on unknown codes, so keep the RFC 9110 table.
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "";
    }
}

namespace {

void append_header_text(std::string& out, std::string_view s) {
    for (const char c : s)
        out += (c == '\r' || c == '\n' || c == '\0') ? ' ' : c;
}

} // namespace

std::string serialize(const http_response& r, bool keep_alive) {
    const bool informational = r.status >= 100 && r.status < 200;
    const bool no_length = informational || r.status == 204;
    const bool no_body = no_length || r.status == 304;
    std::string out;
    out.reserve(128 + (r.head ? 0 : r.body.size()));
    out += "HTTP/1.1 ";
    out += std::to_string(r.status);
    out += ' ';
    out += reason_phrase(r.status);
    out += "\r\n";
    if (!r.content_type.empty() && !no_body) {
        out += "Content-Type: ";
        append_header_text(out, r.content_type);
        out += "\r\n";
    }
    if (!no_length) {
        out += "Content-Length: ";
        out += std::to_string(no_body ? 0 : r.body.size());
        out += "\r\n";
    }
    out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
    for (const auto& [k, v] : r.headers) {
        append_header_text(out, k);
        out += ": ";
        append_header_text(out, v);
        out += "\r\n";
    }
    out += "\r\n";
    if (!no_body && !r.head) out += r.body;
    return out;
}

// --- Basic auth ----------------------------------------------------------------------------------------------------

bool parse_basic_auth(std::string_view h, std::string& user, std::string& password) {
    h = trim_ows(h);
    if (h.size() < 6 || !iequals(h.substr(0, 5), "basic") || (h[5] != ' ' && h[5] != '\t')) return false;
    const std::string_view b64 = trim_ows(h.substr(6));
    // EVP_DecodeBlock skips surrounding whitespace, accepts '=' anywhere it decodes to zero bits and does not
    // report the padding it decoded, so check the token68 shape first and subtract the padding ourselves.
    if (b64.empty() || b64.size() % 4 != 0) return false;
    size_t pad = 0;
    while (pad < 2 && b64[b64.size() - 1 - pad] == '=')
        ++pad;
    for (size_t i = 0; i < b64.size() - pad; ++i) {
        const char c = b64[i];
        const bool ok =
            (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
        if (!ok) return false;
    }
    std::string decoded(b64.size() / 4 * 3, '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(decoded.data()),
                                  reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
    if (n < 0 || static_cast<size_t>(n) != decoded.size()) return false;
    decoded.resize(decoded.size() - pad);
    const size_t colon = decoded.find(':');
    if (colon == std::string::npos) return false;
    user.assign(decoded, 0, colon);
    password.assign(decoded, colon + 1);
    return true;
}

void json_error(http_response& r, int status, std::string_view message) {
    json_writer w;
    w.begin_object().key("code").value(status).key("message").value(message).end_object();
    r.status = status;
    r.content_type = "application/json";
    r.body = w.take();
}

} // namespace ringmq::admin
