#pragma once
// The admin user store: EMQ X dashboard users (username, password, tags) kept in a small text file, one user per
// line "username:iterations:salt_hex:key_hex:tags". Passwords are stored only as PBKDF2-HMAC-SHA256 keys with a
// random per-user salt; the iteration count is stored per user so the default can be raised without invalidating
// existing users.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ringmq::admin {

// A user as the API lists it (never the key material). A plain value returned to the caller on the admin shard.
struct admin_user {
    std::string username;
    std::string tags;
};

// A token bucket for the password checks that cost a PBKDF2 run (a few ms each): at most `per_second` of them, in
// bursts of as many. Passwords recognised from the cache (verify_cached) do not take from it, so an operator who
// logged in before keeps working while wrong passwords are refused with 429. Owned by the admin shard.
class password_check_budget {
public:
    explicit password_check_budget(uint32_t per_second) : rate_(per_second), tokens_(per_second) {}
    bool take(int64_t now_ms) {
        if (now_ms > last_ms_) {
            tokens_ = std::min<double>(rate_, tokens_ + static_cast<double>(now_ms - last_ms_) * rate_ / 1000.0);
            last_ms_ = now_ms;
        }
        if (tokens_ < 1.0) return false;
        tokens_ -= 1.0;
        return true;
    }

private:
    double rate_;
    double tokens_;
    int64_t last_ms_ = 0;
};

// Owned by the admin server and used only on the admin shard thread (not thread-safe). Created before the admin
// listener starts (open()), lives until the server is destroyed. Every change is written to the file atomically
// before it becomes visible in memory; if the write fails, memory is left as it was.
class user_store {
public:
    static constexpr unsigned default_iterations = 10000;
    static constexpr size_t salt_bytes = 16;
    static constexpr size_t key_bytes = 32;

    // Loads the file; when it does not exist, creates it with default_user/default_password (tags "administrator")
    // and sets *created = true (created may be null). False with a reason naming the path on I/O or format errors.
    bool open(const std::string& path, const std::string& default_user, const std::string& default_password,
              bool* created, std::string& why);
    // Constant-time compare of the derived key. A password that verified before is recognized with one SHA-256
    // instead of a fresh PBKDF2 run (the admin API authenticates every request); a wrong one always costs PBKDF2.
    bool verify(std::string_view user, std::string_view password) const;
    // True when password is the user's last verified one: the one-SHA-256 part of verify(), no PBKDF2.
    bool verify_cached(std::string_view user, std::string_view password) const;
    // True when verify() refused this user and password lately (the last refused_kept distinct pairs, forgotten at
    // every change of the users): a client repeating a wrong password (a script after a password change, a flood of
    // one guess) is answered without a PBKDF2 run, and takes nothing from the password-check budget.
    bool known_wrong(std::string_view user, std::string_view password) const;
    static constexpr size_t refused_kept = 256;
    bool exists(std::string_view user) const;
    std::vector<admin_user> list() const; // sorted by name
    std::optional<admin_user> get(std::string_view user) const;

    enum class result { ok, exists, not_found, invalid, io_error };
    // invalid: empty username or password, a NUL in the password, or a control character (newline included) or ':'
    // in username or tags.
    result add(std::string_view user, std::string_view password, std::string_view tags);
    // nullopt leaves that field unchanged.
    result update(std::string_view user, std::optional<std::string_view> password,
                  std::optional<std::string_view> tags);
    result remove(std::string_view user);
    // Why the last invalid or io_error result happened (names the file on I/O errors).
    const std::string& last_error() const { return last_error_; }
    // Whether the last check refused an empty username or password (the API's 104) rather than its characters.
    bool last_error_empty() const { return last_empty_; }

    // Iteration count for passwords set from now on (existing users keep theirs until their password changes).
    void set_iterations(unsigned n) { iterations_ = n; }
    const std::string& path() const { return path_; }
    // Permission bits of the file open() read (0 when it created it, 0600): the server warns when others may read it,
    // as the keys in it can be attacked offline. The first change of the users rewrites it 0600.
    uint32_t file_mode() const { return file_mode_; }

private:
    struct entry {
        unsigned iterations = 0;
        std::vector<unsigned char> salt;
        std::vector<unsigned char> key;
        std::string tags;
        // SHA-256(salt || password) of the last password that verified; see verify().
        mutable bool fast_valid = false;
        mutable std::array<unsigned char, 32> fast{};
    };
    using map_t = std::map<std::string, entry, std::less<>>;

    bool make_entry(std::string_view password, std::string_view tags, entry& e);
    // SHA-256(refused_key_ || user || NUL || password): what known_wrong compares, never the password itself.
    bool refused_digest(std::string_view user, std::string_view password, std::array<unsigned char, 32>& out) const;
    void note_refused(std::string_view user, std::string_view password) const;
    bool save(const map_t& users);
    result check(std::string_view what, std::string_view s, bool allow_empty);
    result check_password(std::string_view password);

    std::string path_;
    uint32_t file_mode_ = 0;
    bool last_empty_ = false;
    map_t users_;
    unsigned iterations_ = default_iterations;
    std::string last_error_;
    std::vector<unsigned char> refused_key_; // random, per process
    mutable std::vector<std::array<unsigned char, 32>> refused_;
    mutable size_t refused_next_ = 0; // where the next refused pair goes once refused_ is full
};

} // namespace ringmq::admin
