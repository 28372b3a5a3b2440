#pragma once
// JSON output for the admin API: a streaming writer that appends to one string, places commas and colons itself and
// escapes strings so the result is always valid JSON, even when a client id or topic carries invalid UTF-8.
#include <string>
#include <string_view>
#include <vector>

namespace ringmq::admin {

// Appends `s` to `out` as a quoted JSON string (RFC 8259): '"', '\\' and control characters escaped (\b \f \n \r \t
// in short form, the rest as \u00XX), valid UTF-8 copied as is, each maximal ill-formed UTF-8 subsequence replaced
// by U+FFFD.
void json_escape(std::string& out, std::string_view s);

// Builds one JSON document. Owned by whoever renders a response (a local in a handler) on the admin shard thread.
// It tracks only what is needed to place separators; calls in an order that is not valid JSON (a value directly in
// an object without key()) are the caller's bug and produce invalid output rather than a check per call.
class json_writer {
public:
    json_writer& begin_object();
    json_writer& end_object();
    json_writer& begin_array();
    json_writer& end_array();
    json_writer& key(std::string_view k);
    json_writer& value(std::string_view s);
    json_writer& value(const char* s); // nullptr writes null
    json_writer& value(bool b);
    json_writer& value(int v);
    json_writer& value(unsigned v);
    json_writer& value(long v);
    json_writer& value(unsigned long v);
    json_writer& value(long long v);
    json_writer& value(unsigned long long v);
    json_writer& value(double v); // NaN and infinities have no JSON form: written as null
    json_writer& null();
    // Inserts an already serialized JSON value verbatim (e.g. a cached fragment); it must be valid JSON itself.
    json_writer& raw(std::string_view json);

    const std::string& str() const { return out_; }
    // Moves the document out and leaves the writer empty, ready for a new document.
    std::string take();

private:
    void separate();
    template <typename T> json_writer& integer(T v);

    std::string out_;
    // One entry per open container: true until its first member or element is written.
    std::vector<bool> first_;
    bool after_key_ = false;
};

} // namespace ringmq::admin
