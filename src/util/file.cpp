#include "util/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace ringmq::util {

file_read read_regular_file(const std::string& path, size_t max_bytes, std::string& out) {
    file_read r;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        r.error = errno;
        r.why = std::strerror(r.error);
        return r;
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        r.error = errno;
        r.why = std::strerror(r.error);
    } else if (S_ISDIR(st.st_mode)) {
        r.error = EISDIR;
        r.why = std::strerror(EISDIR);
    } else if (!S_ISREG(st.st_mode)) {
        r.why = "not a regular file";
    } else if (static_cast<uint64_t>(st.st_size) > max_bytes) {
        r.why = fmt::format("larger than {} bytes", max_bytes);
    } else {
        r.mode = st.st_mode & 07777;
        // Read to the end even if the file grew since fstat, but never past the limit.
        const size_t start = out.size();
        char buf[65536];
        for (;;) {
            const ssize_t n = ::read(fd, buf, sizeof buf);
            if (n < 0) {
                if (errno == EINTR) continue;
                r.error = errno;
                r.why = std::strerror(r.error);
                break;
            }
            if (n == 0) {
                r.ok = true;
                break;
            }
            out.append(buf, static_cast<size_t>(n));
            if (out.size() - start > max_bytes) {
                r.why = fmt::format("larger than {} bytes", max_bytes);
                break;
            }
        }
    }
    ::close(fd);
    return r;
}

bool fits_record_field(std::string_view s) {
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == ':' || u < 0x20 || u == 0x7f) return false;
    }
    return true;
}

} // namespace ringmq::util
