#pragma once
// HTTP/1.1 for the admin listener: an incremental request parser on llhttp, the parsed request, response
// serialization and Basic authentication. No I/O here: the connection coroutine feeds received bytes in and writes
// serialized responses out.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ringmq::admin {

// One parsed request. Produced by http_parser::take() and owned by the connection coroutine that serves it, on the
// admin shard thread.
struct http_request {
    std::string method; // "GET", "POST", ...
    std::string target; // request-target exactly as received
    std::string path;   // raw (not decoded) path, without query and fragment
    // Path less one leading and one trailing '/', split on every other '/' (so "a//b" has an empty segment: ids and
    // topics may hold raw slashes and empty levels), THEN each segment percent-decoded, so "%2F" stays inside it.
    std::vector<std::string> segments;
    // Query pairs in order, decoded ('+' is a space); "a" without '=' has an empty value, "&&" is skipped.
    std::vector<std::pair<std::string, std::string>> query;
    // Header names lower-cased, values with surrounding whitespace trimmed, in order; trailers are dropped.
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body; // de-chunked
    bool keep_alive = true;
    // A segment or a query key or value had an invalid %-escape; that item is kept undecoded.
    bool bad_encoding = false;

    // First header with that (lower-case) name, or nullptr.
    const std::string* header(std::string_view lower_name) const;
    // First query parameter with that name, or nullptr.
    const std::string* query_param(std::string_view name) const;
};

// Incremental request parser for one connection. Owned by the connection coroutine on the admin shard thread, lives
// as long as the connection. Bytes of a request split anywhere across reads are accepted, several pipelined
// requests in one read are handed out one at a time, and the header and body limits are enforced while streaming:
// llhttp never buffers, and this class never holds more than max_header_bytes + 1 header bytes or max_body_bytes
// body bytes of a request.
class http_parser {
public:
    http_parser(size_t max_header_bytes, size_t max_body_bytes);
    ~http_parser();
    http_parser(const http_parser&) = delete; // llhttp keeps a pointer back to this object
    http_parser& operator=(const http_parser&) = delete;

    enum class status { need_more, request_ready, error };

    // Parses at most ONE request per call. request_ready as soon as a request completes, with `consumed` = bytes
    // used, so the caller feeds the rest again after take() (pipelining). need_more when all n bytes were consumed
    // without completing a request. error on a parse error or a limit; the parser then stays in error (the
    // connection should answer error_status() and close). Until take() is called, further feeds consume nothing and
    // return request_ready again.
    status feed(const char* data, size_t n, size_t& consumed);
    // Moves the completed request out and resets for the next one on the same connection.
    http_request take();
    // 400 for a parse error, 413 body too large, 431 headers too large; 0 while there is no error.
    int error_status() const { return error_status_; }
    const std::string& error_reason() const { return error_reason_; }

    // True once per request when its headers are complete, it carries "Expect: 100-continue" and its body has not
    // been received: the server should then write "HTTP/1.1 100 Continue\r\n\r\n", or clients such as curl wait a
    // second before sending a body. Not raised when the body is already known to be too large (that is an error).
    bool take_expect_continue();

    // A request has begun and is not complete yet: what serve() times with admin.request_timeout. Blank lines between
    // requests, which llhttp skips, begin none.
    bool in_message() const { return in_message_; }

    // Total header bytes counted for the request in progress (request line, headers, final CRLF). For tests.
    size_t header_bytes() const { return head_bytes_; }

private:
    struct callbacks;
    friend struct callbacks;
    struct engine; // the llhttp state, kept out of this header so only admin sources see llhttp.h

    status fail(int http_status, std::string reason);
    status head_too_large(); // 414 while the request line is still coming, 431 after
    bool push_header();
    int count_trailer(size_t n);

    std::unique_ptr<engine> ll_;
    size_t max_header_;
    size_t max_body_;
    http_request req_;
    std::string field_;
    std::string value_;
    bool in_value_ = false;
    size_t head_bytes_ = 0;
    size_t trailer_bytes_ = 0;
    bool fields_begun_ = false; // a header field began: a head past its limit before that is a URI too long (414)
    bool headers_done_ = false;
    bool ready_ = false;
    bool in_message_ = false; // llhttp began a request that has not completed (bytes between requests are not one)
    bool failed_ = false;
    bool expect_continue_ = false;
    int cb_status_ = 0;               // set by a callback that stopped parsing (a limit, a bad header name)
    const char* cb_reason_ = nullptr; // a 400's own reason, where it is not a bad header name
    int error_status_ = 0;
    std::string error_reason_;
};

// A response to serialize. Filled by a handler on the admin shard thread.
struct http_response {
    int status = 200;
    std::string content_type = "application/json"; // empty: no Content-Type header
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers; // extra headers, written as given
    bool head = false; // the answer to HEAD: headers as for GET (Content-Length of the body), the body left out
};

// HTTP/1.1 status line with the standard reason phrase, Content-Type, Content-Length, Connection: keep-alive|close,
// the extra headers, then the body. 1xx, 204 and 304 responses carry no body (and 1xx/204 no Content-Length), as
// RFC 9110 requires. CR, LF and NUL inside extra headers are replaced by spaces so a value can never split the
// response.
std::string serialize(const http_response& r, bool keep_alive);
// An HTTP-level error (where EMQ X had no API code): status `status`, body {"code":status,"message":message}.
void json_error(http_response& r, int status, std::string_view message);
// RFC 9110 reason phrase ("Not Found"); "" for a code without a standard phrase (the status line stays valid).
const char* reason_phrase(int status);

// "Basic <base64(user:password)>", scheme case-insensitive. False on anything malformed: another scheme, bad
// base64 or padding, no ':' in the decoded credentials. The password may contain ':'.
bool parse_basic_auth(std::string_view authorization_header, std::string& user, std::string& password);

// Percent-decodes `in` into `out` ('+' becomes a space when plus_is_space). False on an invalid escape ('%' not
// followed by two hex digits); `out` is then `in` unchanged.
bool percent_decode(std::string_view in, bool plus_is_space, std::string& out);

} // namespace ringmq::admin
