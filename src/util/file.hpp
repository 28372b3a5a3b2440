#pragma once
// Reading a whole configuration-sized file (the TOML file, the admin users file) on the main thread at start-up,
// refusing what is not a regular file or is larger than the caller allows: a FIFO would block start-up for good and
// /dev/zero would grow without end, where the operator wants an error naming the path.
#include <cstddef>
#include <string>
#include <string_view>

namespace ringmq::util {

struct file_read {
    bool ok = false;
    int error = 0;     // errno of the failed open or read; 0 when refused for its kind or size
    std::string why;   // the reason, without the path, when !ok
    unsigned mode = 0; // the permission bits of the file read (st_mode & 07777), when ok
};

// Appends the file's bytes to `out`. Opens without blocking (a FIFO is refused, not waited on).
file_read read_regular_file(const std::string& path, size_t max_bytes, std::string& out);

// Whether s can be one field of a record file whose fields are separated by ':' and records by newlines (the admin
// users file): no ':' and no control character, which would also make the file misleading to read.
bool fits_record_field(std::string_view s);

} // namespace ringmq::util
