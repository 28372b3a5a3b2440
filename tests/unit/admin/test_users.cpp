#include "admin/users.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace ringmq::admin {
namespace {

using result = user_store::result;

// A fresh directory per test, removed with everything in it afterwards.
class users_test : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/ringmq_users_test.XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        path_ = dir_ + "/admin_users";
    }
    void TearDown() override {
        for (const std::string& f : files())
            ::unlink((dir_ + "/" + f).c_str());
        ::rmdir(dir_.c_str());
    }

    std::vector<std::string> files() const {
        std::vector<std::string> out;
        if (DIR* d = ::opendir(dir_.c_str())) {
            while (dirent* e = ::readdir(d)) {
                const std::string n = e->d_name;
                if (n != "." && n != "..") out.push_back(n);
            }
            ::closedir(d);
        }
        return out;
    }
    std::string read_file() const {
        std::ifstream in(path_);
        std::stringstream ss;
        ss << in.rdbuf();
        return ss.str();
    }
    void write_file(const std::string& text) const {
        std::ofstream out(path_, std::ios::trunc);
        out << text;
    }
    unsigned mode() const {
        struct stat st {};
        EXPECT_EQ(::stat(path_.c_str(), &st), 0);
        return st.st_mode & 07777;
    }
    void open_default(user_store& s, bool* created = nullptr) {
        std::string why;
        ASSERT_TRUE(s.open(path_, "admin", "public", created, why)) << why;
    }

    std::string dir_;
    std::string path_;
};

std::string hex(const unsigned char* p, size_t n) {
    std::string s;
    char b[3];
    for (size_t i = 0; i < n; ++i) {
        std::snprintf(b, sizeof b, "%02x", p[i]);
        s += b;
    }
    return s;
}

std::vector<unsigned char> unhex(const std::string& h) {
    std::vector<unsigned char> out;
    for (size_t i = 0; i + 1 < h.size(); i += 2)
        out.push_back(static_cast<unsigned char>(std::stoi(h.substr(i, 2), nullptr, 16)));
    return out;
}

// PBKDF2-HMAC-SHA256 computed here, independently of the store, to pin the file format.
std::string pbkdf2_hex(const std::string& password, const std::vector<unsigned char>& salt, int iterations) {
    unsigned char key[32];
    EXPECT_EQ(PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(),
                                static_cast<int>(salt.size()), iterations, EVP_sha256(), sizeof key, key),
              1);
    return hex(key, sizeof key);
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::string cur;
    for (const char c : s) {
        if (c == sep) {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    return out;
}

TEST_F(users_test, creates_default_user_when_missing) {
    user_store s;
    bool created = false;
    open_default(s, &created);
    EXPECT_TRUE(created);
    EXPECT_TRUE(s.exists("admin"));
    EXPECT_TRUE(s.verify("admin", "public"));
    EXPECT_FALSE(s.verify("admin", "Public"));
    const auto u = s.get("admin");
    ASSERT_TRUE(u);
    EXPECT_EQ(u->username, "admin");
    EXPECT_EQ(u->tags, "administrator");
    EXPECT_EQ(mode(), 0600u);

    const std::string text = read_file();
    EXPECT_TRUE(std::regex_match(text, std::regex("admin:10000:[0-9A-Fa-f]{32}:[0-9A-Fa-f]{64}:administrator\n")))
        << text;
    EXPECT_EQ(text.find("public"), std::string::npos) << "no clear-text password in the file";
    EXPECT_EQ(files(), std::vector<std::string>{"admin_users"}) << "no temporary file left behind";
}

TEST_F(users_test, file_holds_pbkdf2_sha256_of_the_password) {
    user_store s;
    open_default(s);
    std::string line = read_file();
    line.pop_back();
    const auto f = split(line, ':');
    ASSERT_EQ(f.size(), 5u);
    EXPECT_EQ(f[1], "10000");
    const auto salt = unhex(f[2]);
    ASSERT_EQ(salt.size(), 16u);
    std::string key = f[3];
    for (char& c : key)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_EQ(key, pbkdf2_hex("public", salt, 10000));
}

TEST_F(users_test, reopen_keeps_users_and_does_not_recreate) {
    {
        user_store s;
        open_default(s);
        ASSERT_EQ(s.add("bob", "bob-pass", "viewer"), result::ok);
    }
    user_store s;
    bool created = true;
    std::string why;
    ASSERT_TRUE(s.open(path_, "admin", "other-default", &created, why)) << why;
    EXPECT_FALSE(created);
    EXPECT_TRUE(s.verify("admin", "public")) << "an existing file wins over the configured default password";
    EXPECT_FALSE(s.verify("admin", "other-default"));
    EXPECT_TRUE(s.verify("bob", "bob-pass"));
    EXPECT_EQ(s.get("bob")->tags, "viewer");
}

TEST_F(users_test, created_may_be_null) {
    user_store s;
    std::string why;
    ASSERT_TRUE(s.open(path_, "admin", "public", nullptr, why)) << why;
    EXPECT_TRUE(s.exists("admin"));
}

TEST_F(users_test, wrong_passwords_and_users) {
    user_store s;
    open_default(s);
    EXPECT_FALSE(s.verify("admin", ""));
    EXPECT_FALSE(s.verify("admin", "publi"));
    EXPECT_FALSE(s.verify("admin", "public "));
    EXPECT_FALSE(s.verify("admin", std::string("public\0", 7))) << "HMAC would zero-pad this to 'public'";
    EXPECT_FALSE(s.verify("nobody", "public"));
    EXPECT_FALSE(s.verify("Admin", "public")) << "usernames are case-sensitive";
    EXPECT_FALSE(s.verify("", ""));
    EXPECT_TRUE(s.verify("admin", "public"));
    EXPECT_TRUE(s.verify("admin", "public")) << "second time via the cached digest";
    EXPECT_FALSE(s.verify("admin", "wrong")) << "the cache does not make other passwords pass";
}

TEST_F(users_test, verify_cached_knows_only_the_last_verified_password) {
    user_store s;
    open_default(s);
    EXPECT_FALSE(s.verify_cached("admin", "public")) << "nothing verified yet";
    EXPECT_TRUE(s.verify("admin", "public"));
    EXPECT_TRUE(s.verify_cached("admin", "public"));
    EXPECT_FALSE(s.verify_cached("admin", "wrong"));
    EXPECT_FALSE(s.verify_cached("nobody", "public"));
    ASSERT_EQ(s.update("admin", std::string_view("changed"), std::nullopt), user_store::result::ok);
    EXPECT_FALSE(s.verify_cached("admin", "public")) << "a password change forgets the old one";
    EXPECT_FALSE(s.verify_cached("admin", "changed")) << "the new one is known only once it has verified";
}

TEST_F(users_test, known_wrong_remembers_refused_pairs_until_the_users_change) {
    user_store s;
    open_default(s);
    EXPECT_FALSE(s.known_wrong("admin", "guess")) << "nothing refused yet";
    EXPECT_FALSE(s.verify("admin", "guess"));
    EXPECT_TRUE(s.known_wrong("admin", "guess"));
    EXPECT_FALSE(s.known_wrong("admin", "guess2"));
    EXPECT_FALSE(s.known_wrong("bob", "guess")) << "the pair, not the password alone";
    EXPECT_FALSE(s.known_wrong("admin", "public"));
    EXPECT_FALSE(s.verify("nobody", "x"));
    EXPECT_TRUE(s.known_wrong("nobody", "x")) << "unknown users too";
    EXPECT_TRUE(s.verify("admin", "public"));
    EXPECT_TRUE(s.known_wrong("admin", "guess")) << "a right password does not clear the wrong ones";
    // A change of the users (here the very password refused before) forgets every refused pair.
    ASSERT_EQ(s.update("admin", std::string_view("guess"), std::nullopt), user_store::result::ok);
    EXPECT_FALSE(s.known_wrong("admin", "guess"));
    EXPECT_FALSE(s.known_wrong("nobody", "x"));
    EXPECT_TRUE(s.verify("admin", "guess"));
    // Only the last refused_kept pairs are kept.
    for (size_t i = 0; i <= user_store::refused_kept; ++i)
        EXPECT_FALSE(s.verify("nobody", "p" + std::to_string(i)));
    EXPECT_FALSE(s.known_wrong("nobody", "p0")) << "the oldest was dropped";
    EXPECT_TRUE(s.known_wrong("nobody", "p1"));
    EXPECT_TRUE(s.known_wrong("nobody", "p" + std::to_string(user_store::refused_kept)));
}

TEST(password_check_budget, bursts_then_refills_at_the_rate) {
    password_check_budget b(5);
    int64_t t = 1000000;
    for (int i = 0; i < 5; ++i)
        EXPECT_TRUE(b.take(t)) << i;
    EXPECT_FALSE(b.take(t)) << "a burst of `per_second`, no more";
    EXPECT_FALSE(b.take(t + 150)) << "0.75 of a check after 150 ms";
    EXPECT_TRUE(b.take(t + 200)) << "one check per 200 ms at 5 per second";
    EXPECT_FALSE(b.take(t + 200));
    EXPECT_TRUE(b.take(t + 60000));
    for (int i = 0; i < 4; ++i)
        EXPECT_TRUE(b.take(t + 60000)) << "refilled to the burst, not beyond: " << i;
    EXPECT_FALSE(b.take(t + 60000));
    EXPECT_FALSE(b.take(t + 50000)) << "a clock that goes back adds nothing";
}

TEST_F(users_test, add_list_get) {
    user_store s;
    open_default(s);
    EXPECT_EQ(s.add("zed", "p1", "t1"), result::ok);
    EXPECT_EQ(s.add("bob", "p:2\nx", ""), result::ok) << "any byte is fine in a password";
    EXPECT_EQ(s.add("mallory", "p3", "a b,c"), result::ok);
    EXPECT_EQ(s.add("bob", "other", "t"), result::exists);
    EXPECT_TRUE(s.verify("bob", "p:2\nx")) << "the first add stands";

    const auto all = s.list();
    ASSERT_EQ(all.size(), 4u);
    EXPECT_EQ(all[0].username, "admin");
    EXPECT_EQ(all[1].username, "bob");
    EXPECT_EQ(all[1].tags, "");
    EXPECT_EQ(all[2].username, "mallory");
    EXPECT_EQ(all[2].tags, "a b,c");
    EXPECT_EQ(all[3].username, "zed");
    EXPECT_FALSE(s.get("nobody"));

    user_store again;
    open_default(again);
    EXPECT_EQ(again.list().size(), 4u);
    EXPECT_TRUE(again.verify("bob", "p:2\nx"));
    EXPECT_TRUE(again.verify("zed", "p1"));
    EXPECT_EQ(mode(), 0600u);
}

TEST_F(users_test, add_rejects_invalid_input) {
    user_store s;
    open_default(s);
    const std::string before = read_file();
    EXPECT_EQ(s.add("", "p", "t"), result::invalid);
    EXPECT_FALSE(s.last_error().empty());
    EXPECT_EQ(s.add("u", "", "t"), result::invalid);
    EXPECT_EQ(s.add("a:b", "p", "t"), result::invalid);
    EXPECT_EQ(s.add("a\nb", "p", "t"), result::invalid);
    EXPECT_EQ(s.add("a\rb", "p", "t"), result::invalid);
    EXPECT_EQ(s.add(std::string("a\0b", 3), "p", "t"), result::invalid);
    EXPECT_EQ(s.add("u", std::string("p\0", 2), "t"), result::invalid);
    EXPECT_EQ(s.add("u", "p", "a:b"), result::invalid);
    EXPECT_EQ(s.add("u", "p", "a\nb"), result::invalid);
    EXPECT_EQ(s.list().size(), 1u);
    EXPECT_EQ(read_file(), before) << "nothing written";
    EXPECT_EQ(s.add("\xC3\xA9l\xC3\xA8ve", "p", "t\xC3\xA9"), result::ok) << "UTF-8 is fine";
}

TEST_F(users_test, update_password_and_tags) {
    user_store s;
    open_default(s);
    ASSERT_EQ(s.add("bob", "old", "t1"), result::ok);
    ASSERT_TRUE(s.verify("bob", "old")); // primes the verify cache

    EXPECT_EQ(s.update("bob", std::string_view("new"), std::nullopt), result::ok);
    EXPECT_FALSE(s.verify("bob", "old")) << "old password (and its cached digest) no longer valid";
    EXPECT_TRUE(s.verify("bob", "new"));
    EXPECT_EQ(s.get("bob")->tags, "t1") << "tags untouched";

    EXPECT_EQ(s.update("bob", std::nullopt, std::string_view("t2")), result::ok);
    EXPECT_EQ(s.get("bob")->tags, "t2");
    EXPECT_TRUE(s.verify("bob", "new")) << "password untouched";

    EXPECT_EQ(s.update("bob", std::string_view("newer"), std::string_view("")), result::ok);
    EXPECT_EQ(s.get("bob")->tags, "");
    EXPECT_EQ(s.update("bob", std::nullopt, std::nullopt), result::ok);

    EXPECT_EQ(s.update("nobody", std::string_view("x"), std::nullopt), result::not_found);
    EXPECT_EQ(s.update("bob", std::string_view(""), std::nullopt), result::invalid);
    EXPECT_EQ(s.update("bob", std::string_view("a\0", 2), std::nullopt), result::invalid);
    EXPECT_EQ(s.update("bob", std::nullopt, std::string_view("a:b")), result::invalid);
    EXPECT_EQ(s.update("bob", std::nullopt, std::string_view("a\nb")), result::invalid);

    user_store again;
    open_default(again);
    EXPECT_TRUE(again.verify("bob", "newer"));
    EXPECT_FALSE(again.verify("bob", "new"));
    EXPECT_EQ(again.get("bob")->tags, "");
    EXPECT_EQ(mode(), 0600u);
}

TEST_F(users_test, password_change_uses_a_new_salt) {
    user_store s;
    open_default(s);
    const std::string before = read_file();
    ASSERT_EQ(s.update("admin", std::string_view("public"), std::nullopt), result::ok);
    const std::string after = read_file();
    EXPECT_NE(split(before, ':')[2], split(after, ':')[2]);
    EXPECT_NE(split(before, ':')[3], split(after, ':')[3]);
    EXPECT_TRUE(s.verify("admin", "public"));
}

TEST_F(users_test, same_password_different_salt_and_key) {
    user_store s;
    open_default(s);
    ASSERT_EQ(s.add("a", "same", ""), result::ok);
    ASSERT_EQ(s.add("b", "same", ""), result::ok);
    const auto lines = split(read_file(), '\n');
    ASSERT_EQ(lines.size(), 4u); // a, admin, b, and the empty string after the last newline
    EXPECT_NE(split(lines[0], ':')[2], split(lines[2], ':')[2]);
    EXPECT_NE(split(lines[0], ':')[3], split(lines[2], ':')[3]);
}

TEST_F(users_test, remove) {
    user_store s;
    open_default(s);
    ASSERT_EQ(s.add("bob", "p", "t"), result::ok);
    EXPECT_EQ(s.remove("bob"), result::ok);
    EXPECT_FALSE(s.exists("bob"));
    EXPECT_FALSE(s.verify("bob", "p"));
    EXPECT_EQ(s.remove("bob"), result::not_found);
    user_store again;
    open_default(again);
    EXPECT_FALSE(again.exists("bob"));
    EXPECT_TRUE(again.exists("admin"));
    EXPECT_EQ(s.add("bob", "p2", "t"), result::ok) << "a removed name can be added again";
}

TEST_F(users_test, changes_tighten_a_loose_file_mode) {
    user_store s;
    open_default(s);
    ASSERT_EQ(::chmod(path_.c_str(), 0644), 0);
    ASSERT_EQ(s.add("bob", "p", ""), result::ok);
    EXPECT_EQ(mode(), 0600u);
}

TEST_F(users_test, open_tells_the_file_mode) {
    user_store s;
    open_default(s); // created: nothing to warn about
    EXPECT_EQ(s.file_mode(), 0u);
    ASSERT_EQ(::chmod(path_.c_str(), 0644), 0);
    user_store again;
    open_default(again);
    EXPECT_EQ(again.file_mode(), 0644u);
    ASSERT_EQ(::chmod(path_.c_str(), 0600), 0);
    open_default(again);
    EXPECT_EQ(again.file_mode(), 0600u);
}

TEST_F(users_test, per_user_iteration_count) {
    // A line written with 1000 iterations (as an older or tuned install would) still verifies.
    const std::vector<unsigned char> salt = unhex("00112233445566778899aabbccddeeff");
    write_file("old:1000:00112233445566778899AABBCCDDEEFF:" + pbkdf2_hex("pw", salt, 1000) + ":legacy\n");
    user_store s;
    bool created = true;
    std::string why;
    ASSERT_TRUE(s.open(path_, "admin", "public", &created, why)) << why;
    EXPECT_FALSE(created);
    EXPECT_FALSE(s.exists("admin")) << "no default user added to an existing file";
    EXPECT_TRUE(s.verify("old", "pw"));
    EXPECT_FALSE(s.verify("old", "pw2"));

    s.set_iterations(2000);
    ASSERT_EQ(s.add("new", "pw", ""), result::ok);
    const std::string text = read_file();
    EXPECT_NE(text.find("old:1000:"), std::string::npos) << "untouched users keep their count";
    EXPECT_NE(text.find("new:2000:"), std::string::npos);
    user_store again;
    ASSERT_TRUE(again.open(path_, "admin", "public", nullptr, why)) << why;
    EXPECT_TRUE(again.verify("new", "pw"));
    EXPECT_TRUE(again.verify("old", "pw"));
}

TEST_F(users_test, tolerates_blank_lines_and_crlf) {
    const std::vector<unsigned char> salt = unhex("0102030405060708");
    write_file("\nu1:5:0102030405060708:" + pbkdf2_hex("a", salt, 5) + ":x\r\n\n");
    user_store s;
    std::string why;
    ASSERT_TRUE(s.open(path_, "admin", "public", nullptr, why)) << why;
    EXPECT_TRUE(s.verify("u1", "a"));
    EXPECT_EQ(s.get("u1")->tags, "x");
}

TEST_F(users_test, empty_file_has_no_users) {
    write_file("");
    user_store s;
    bool created = true;
    std::string why;
    ASSERT_TRUE(s.open(path_, "admin", "public", &created, why)) << why;
    EXPECT_FALSE(created);
    EXPECT_TRUE(s.list().empty());
}

TEST_F(users_test, format_errors_name_the_file_and_line) {
    const std::string key = std::string(64, 'a');
    const std::string salt = std::string(32, 'b');
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"admin\n", "line 1"},
        {"admin:10000:" + salt + ":" + key + "\n", "line 1"},           // 4 fields
        {"\nadmin:10000:" + salt + ":" + key + ":t:extra\n", "line 2"}, // ':' in tags
        {"admin:abc:" + salt + ":" + key + ":t\n", "iteration"},
        {"admin:0:" + salt + ":" + key + ":t\n", "bad iteration count '0' (1..10000000)"},
        {"admin:-1:" + salt + ":" + key + ":t\n", "iteration"},
        {"admin:99999999999:" + salt + ":" + key + ":t\n", "iteration"},
        {"admin:10:" + salt + "x:" + key + ":t\n", "salt"},
        {"admin:10::" + key + ":t\n", "salt"},
        {"admin:10:" + salt + ":zz" + key + ":t\n", "key"},
        {"admin:10:" + salt + ":" + key + ":t\nadmin:10:" + salt + ":" + key + ":t\n", "duplicate"},
        {":10:" + salt + ":" + key + ":t\n", "username"},
    };
    for (const auto& [text, what] : bad) {
        write_file(text);
        user_store s;
        std::string why;
        EXPECT_FALSE(s.open(path_, "admin", "public", nullptr, why)) << text;
        EXPECT_NE(why.find(path_), std::string::npos) << why;
        EXPECT_NE(why.find(what), std::string::npos) << why;
        EXPECT_TRUE(s.list().empty()) << "nothing half-loaded";
    }
}

TEST_F(users_test, io_error_on_open_names_the_path) {
    user_store s;
    std::string why;
    bool created = true;
    const std::string missing_dir = dir_ + "/no/such/dir/users";
    EXPECT_FALSE(s.open(missing_dir, "admin", "public", &created, why));
    EXPECT_NE(why.find(missing_dir), std::string::npos) << why;
    EXPECT_FALSE(created);

    why.clear();
    EXPECT_FALSE(s.open(dir_, "admin", "public", &created, why)) << "a directory is not a users file";
    EXPECT_NE(why.find(dir_), std::string::npos) << why;
}

TEST_F(users_test, fifo_is_refused_not_waited_on) {
    // Opening a FIFO for reading would block start-up until something writes to it.
    const std::string fifo = dir_ + "/users.fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    user_store s;
    std::string why;
    EXPECT_FALSE(s.open(fifo, "admin", "public", nullptr, why));
    EXPECT_EQ(why, "cannot read users file " + fifo + ": not a regular file");
}

TEST_F(users_test, invalid_default_user_is_refused) {
    user_store s;
    std::string why;
    EXPECT_FALSE(s.open(path_, "ad:min", "public", nullptr, why));
    EXPECT_NE(why.find(path_), std::string::npos) << why;
    EXPECT_FALSE(s.open(path_, "admin", "", nullptr, why));
    EXPECT_TRUE(files().empty()) << "no file created";
}

TEST_F(users_test, failed_write_leaves_memory_unchanged) {
    user_store s;
    open_default(s);
    ASSERT_EQ(s.add("bob", "p", "t"), result::ok);
    // Take the directory away: the temp file cannot be created, so every change must fail cleanly.
    ASSERT_EQ(::unlink(path_.c_str()), 0);
    ASSERT_EQ(::rmdir(dir_.c_str()), 0);

    EXPECT_EQ(s.add("carol", "p", "t"), result::io_error);
    EXPECT_NE(s.last_error().find(path_), std::string::npos) << s.last_error();
    EXPECT_FALSE(s.exists("carol"));

    EXPECT_EQ(s.update("bob", std::string_view("p2"), std::string_view("t2")), result::io_error);
    EXPECT_TRUE(s.verify("bob", "p"));
    EXPECT_FALSE(s.verify("bob", "p2"));
    EXPECT_EQ(s.get("bob")->tags, "t");

    EXPECT_EQ(s.remove("bob"), result::io_error);
    EXPECT_TRUE(s.exists("bob"));

    ASSERT_EQ(::mkdir(dir_.c_str(), 0700), 0); // for TearDown
}

} // namespace
} // namespace ringmq::admin
