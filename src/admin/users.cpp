#include "admin/users.hpp"

#include "util/file.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ringmq::admin {

namespace {

constexpr std::string_view default_tags = "administrator";
// A file edited by hand must not make one login cost minutes.
constexpr unsigned max_iterations = 10'000'000;
constexpr size_t max_key_bytes = 64;

std::string errno_text(int e) { return std::strerror(e); }

// About 200 bytes a user: 16 MiB is some 80000 users, and a wrong path (/dev/zero, a log file) is refused.
constexpr size_t max_file_bytes = size_t{16} << 20;

bool derive(std::string_view password, const std::vector<unsigned char>& salt, unsigned iterations, size_t key_len,
            unsigned char* out) {
    if (password.size() > INT_MAX || iterations == 0 || iterations > INT_MAX) return false;
    return PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(),
                             static_cast<int>(salt.size()), static_cast<int>(iterations), EVP_sha256(),
                             static_cast<int>(key_len), out) == 1;
}

bool fast_digest(const std::vector<unsigned char>& salt, std::string_view password,
                 std::array<unsigned char, 32>& out) {
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (!ctx) return false;
    unsigned int len = 0;
    const bool ok = EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
                    EVP_DigestUpdate(ctx, salt.data(), salt.size()) == 1 &&
                    EVP_DigestUpdate(ctx, password.data(), password.size()) == 1 &&
                    EVP_DigestFinal_ex(ctx, out.data(), &len) == 1 && len == out.size();
    EVP_MD_CTX_free(ctx);
    return ok;
}

std::string to_hex(const std::vector<unsigned char>& b) {
    std::string s(b.size() * 2 + 1, '\0');
    size_t len = 0;
    if (OPENSSL_buf2hexstr_ex(s.data(), s.size(), &len, b.data(), b.size(), '\0') != 1) return {};
    s.resize(len > 0 ? len - 1 : 0); // len counts the terminating NUL
    return s;
}

bool from_hex(std::string_view hex, std::vector<unsigned char>& out) {
    if (hex.empty() || hex.size() % 2 != 0) return false;
    const std::string z(hex); // OpenSSL wants a NUL-terminated string
    out.assign(hex.size() / 2, 0);
    size_t len = 0;
    return OPENSSL_hexstr2buf_ex(out.data(), out.size(), &len, z.c_str(), '\0') == 1 && len == out.size();
}

bool write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        const ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

std::string directory_of(const std::string& path) {
    const size_t slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

} // namespace

user_store::result user_store::check(std::string_view what, std::string_view s, bool allow_empty) {
    last_empty_ = s.empty() && !allow_empty;
    if (last_empty_) {
        last_error_ = fmt::format("empty {}", what);
        return result::invalid;
    }
    if (!util::fits_record_field(s)) { // the API's listing would be misleading too
        last_error_ = fmt::format("{} contains ':' or a control character", what);
        return result::invalid;
    }
    return result::ok;
}

user_store::result user_store::check_password(std::string_view password) {
    last_empty_ = password.empty();
    if (last_empty_) {
        last_error_ = "empty password";
        return result::invalid;
    }
    // HMAC zero-pads its key, so "pw" and "pw\0" would derive the same key; NUL is refused here and in verify().
    // Any other byte is fine: only the derived key is stored.
    if (password.find('\0') != std::string_view::npos) {
        last_error_ = "password contains a NUL byte";
        return result::invalid;
    }
    return result::ok;
}

bool user_store::make_entry(std::string_view password, std::string_view tags, entry& e) {
    e.iterations = iterations_;
    e.salt.assign(salt_bytes, 0);
    e.key.assign(key_bytes, 0);
    e.tags.assign(tags);
    e.fast_valid = false;
    if (RAND_bytes(e.salt.data(), static_cast<int>(e.salt.size())) != 1 ||
        !derive(password, e.salt, e.iterations, e.key.size(), e.key.data())) {
        last_error_ = "cannot derive the password key (OpenSSL RAND_bytes or PBKDF2 failed)";
        return false;
    }
    return true;
}

bool user_store::open(const std::string& path, const std::string& default_user, const std::string& default_password,
                      bool* created, std::string& why) {
    path_ = path;
    file_mode_ = 0;
    users_.clear();
    if (created) *created = false;
    refused_key_.assign(salt_bytes, 0);
    if (RAND_bytes(refused_key_.data(), static_cast<int>(refused_key_.size())) != 1) refused_key_.clear();

    std::string text;
    const util::file_read rd = util::read_regular_file(path, max_file_bytes, text);
    if (!rd.ok) {
        if (rd.error != ENOENT) {
            why = fmt::format("cannot read users file {}: {}", path, rd.why);
            return false;
        }
        if (check("default username", default_user, false) != result::ok ||
            check_password(default_password) != result::ok) {
            why = fmt::format("cannot create users file {}: default user: {}", path, last_error_);
            return false;
        }
        entry en;
        if (!make_entry(default_password, default_tags, en)) {
            why = fmt::format("cannot create users file {}: {}", path, last_error_);
            return false;
        }
        users_.emplace(default_user, std::move(en));
        if (!save(users_)) {
            users_.clear();
            why = last_error_;
            return false;
        }
        if (created) *created = true;
        return true;
    }

    file_mode_ = rd.mode;

    size_t line_no = 0;
    std::string_view rest = text;
    while (!rest.empty()) {
        ++line_no;
        const size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1); // tolerate a file edited on Windows
        if (line.empty()) continue;
        auto bad = [&](std::string_view what) {
            why = fmt::format("users file {} line {}: {}", path, line_no, what);
            users_.clear();
            return false;
        };
        std::string_view f[5];
        std::string_view l = line;
        for (int i = 0; i < 4; ++i) {
            const size_t c = l.find(':');
            if (c == std::string_view::npos) return bad("expected username:iterations:salt:key:tags");
            f[i] = l.substr(0, c);
            l = l.substr(c + 1);
        }
        f[4] = l;
        if (check("username", f[0], false) != result::ok) return bad(last_error_);
        if (check("tags", f[4], true) != result::ok) return bad(last_error_);
        entry en;
        const auto [end, ec] = std::from_chars(f[1].data(), f[1].data() + f[1].size(), en.iterations);
        if (ec != std::errc() || end != f[1].data() + f[1].size() || en.iterations == 0 ||
            en.iterations > max_iterations)
            return bad(fmt::format("bad iteration count '{}' (1..{})", f[1], max_iterations));
        if (!from_hex(f[2], en.salt)) return bad("bad salt (hex expected)");
        if (!from_hex(f[3], en.key) || en.key.size() > max_key_bytes) return bad("bad key (hex expected)");
        en.tags.assign(f[4]);
        if (!users_.emplace(std::string(f[0]), std::move(en)).second) return bad("duplicate username");
    }
    return true;
}

bool user_store::save(const map_t& users) {
    // A password refused before may be right after this change.
    refused_.clear();
    refused_next_ = 0;
    std::string text;
    for (const auto& [name, e] : users)
        text += fmt::format("{}:{}:{}:{}:{}\n", name, e.iterations, to_hex(e.salt), to_hex(e.key), e.tags);

    // Temp file in the same directory so rename() is atomic: a crash leaves either the old or the new file.
    std::string tmp = path_ + ".tmp.XXXXXX";
    const int fd = ::mkstemp(tmp.data());
    if (fd < 0) {
        last_error_ = fmt::format("cannot create a temporary file next to {}: {}", path_, errno_text(errno));
        return false;
    }
    auto failed = [&](std::string_view step) {
        const int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        last_error_ = fmt::format("cannot write users file {} ({} {}): {}", path_, step, tmp, errno_text(e));
        return false;
    };
    // mkstemp already creates 0600, but say so explicitly: the file holds password keys.
    if (::fchmod(fd, 0600) != 0) return failed("fchmod");
    if (!write_all(fd, text)) return failed("write");
    if (::fsync(fd) != 0) return failed("fsync");
    if (::close(fd) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        last_error_ = fmt::format("cannot write users file {} (close {}): {}", path_, tmp, errno_text(e));
        return false;
    }
    if (::rename(tmp.c_str(), path_.c_str()) != 0) {
        const int e = errno;
        ::unlink(tmp.c_str());
        last_error_ = fmt::format("cannot replace users file {}: {}", path_, errno_text(e));
        return false;
    }
    // Persist the rename itself; the data is already safe, so a failure here is not worth failing the change.
    const int dfd = ::open(directory_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)::fsync(dfd);
        ::close(dfd);
    }
    return true;
}

bool user_store::refused_digest(std::string_view user, std::string_view password,
                                std::array<unsigned char, 32>& out) const {
    std::string pair;
    pair.reserve(user.size() + 1 + password.size());
    pair.append(user).push_back('\0');
    pair.append(password);
    return !refused_key_.empty() && fast_digest(refused_key_, pair, out);
}

void user_store::note_refused(std::string_view user, std::string_view password) const {
    std::array<unsigned char, 32> d{};
    if (!refused_digest(user, password, d) || known_wrong(user, password)) return;
    if (refused_.size() < refused_kept) {
        refused_.push_back(d);
        return;
    }
    refused_[refused_next_] = d;
    refused_next_ = (refused_next_ + 1) % refused_kept;
}

bool user_store::known_wrong(std::string_view user, std::string_view password) const {
    std::array<unsigned char, 32> d{};
    if (refused_.empty() || !refused_digest(user, password, d)) return false;
    bool found = false;
    for (const auto& r : refused_)
        found |= CRYPTO_memcmp(r.data(), d.data(), d.size()) == 0;
    return found;
}

bool user_store::verify(std::string_view user, std::string_view password) const {
    const auto it = users_.find(user);
    if (it == users_.end() || password.empty() || password.find('\0') != std::string_view::npos) {
        // Spend the same work as a real check so a missing user is not revealed by the response time.
        static const std::vector<unsigned char> dummy_salt(salt_bytes, 0x5a);
        unsigned char k[key_bytes];
        (void)derive(password.empty() ? std::string_view("-") : password, dummy_salt, default_iterations, sizeof k, k);
        note_refused(user, password);
        return false;
    }
    const entry& e = it->second;
    std::array<unsigned char, 32> fast{};
    const bool have_fast = fast_digest(e.salt, password, fast);
    if (have_fast && e.fast_valid && CRYPTO_memcmp(fast.data(), e.fast.data(), fast.size()) == 0) return true;

    std::vector<unsigned char> k(e.key.size());
    if (!derive(password, e.salt, e.iterations, k.size(), k.data())) return false;
    const bool ok = CRYPTO_memcmp(k.data(), e.key.data(), k.size()) == 0;
    if (ok && have_fast) {
        e.fast = fast;
        e.fast_valid = true;
    }
    if (!ok) note_refused(user, password);
    return ok;
}

bool user_store::verify_cached(std::string_view user, std::string_view password) const {
    const auto it = users_.find(user);
    if (it == users_.end() || !it->second.fast_valid) return false;
    std::array<unsigned char, 32> fast{};
    return fast_digest(it->second.salt, password, fast) &&
           CRYPTO_memcmp(fast.data(), it->second.fast.data(), fast.size()) == 0;
}

bool user_store::exists(std::string_view user) const { return users_.find(user) != users_.end(); }

std::vector<admin_user> user_store::list() const {
    std::vector<admin_user> out;
    out.reserve(users_.size());
    for (const auto& [name, e] : users_)
        out.push_back(admin_user{name, e.tags}); // std::map keeps them sorted
    return out;
}

std::optional<admin_user> user_store::get(std::string_view user) const {
    const auto it = users_.find(user);
    if (it == users_.end()) return std::nullopt;
    return admin_user{it->first, it->second.tags};
}

user_store::result user_store::add(std::string_view user, std::string_view password, std::string_view tags) {
    if (auto r = check("username", user, false); r != result::ok) return r;
    if (auto r = check_password(password); r != result::ok) return r;
    if (auto r = check("tags", tags, true); r != result::ok) return r;
    if (exists(user)) return result::exists;
    entry e;
    if (!make_entry(password, tags, e)) return result::io_error;
    const auto it = users_.emplace(std::string(user), std::move(e)).first;
    if (!save(users_)) {
        users_.erase(it);
        return result::io_error;
    }
    return result::ok;
}

user_store::result user_store::update(std::string_view user, std::optional<std::string_view> password,
                                      std::optional<std::string_view> tags) {
    if (password)
        if (auto r = check_password(*password); r != result::ok) return r;
    if (tags)
        if (auto r = check("tags", *tags, true); r != result::ok) return r;
    const auto it = users_.find(user);
    if (it == users_.end()) return result::not_found;
    if (!password && !tags) return result::ok;
    entry updated = it->second;
    if (password && !make_entry(*password, updated.tags, updated)) return result::io_error;
    if (tags) updated.tags.assign(*tags);
    std::swap(it->second, updated);
    if (!save(users_)) {
        std::swap(it->second, updated);
        return result::io_error;
    }
    return result::ok;
}

user_store::result user_store::remove(std::string_view user) {
    const auto it = users_.find(user);
    if (it == users_.end()) return result::not_found;
    auto node = users_.extract(it);
    if (!save(users_)) {
        users_.insert(std::move(node));
        return result::io_error;
    }
    return result::ok;
}

} // namespace ringmq::admin
