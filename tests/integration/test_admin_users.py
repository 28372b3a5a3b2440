"""Admin REST API v2 users (EMQ X 2.3 dashboard users, notes section 3.2): GET/POST users, GET/PUT/DELETE
users/{name}, PUT change_pwd/{name}, and POST /api/v2/auth (the one API path without Basic auth). Codes: 103 bad
credentials on /auth, 105 unknown user, 106 admin cannot be deleted, 113 user exists, 114 wrong old password.
Users live in admin.users_file and survive a restart."""

import os
import shutil
import tempfile

from admin_client import USER_KEYS, AdminTest


class UsersTest(AdminTest):
    def users(self, **kw):
        rows = self.ok("GET", "users", **kw)
        self.assertIsInstance(rows, list)
        for row in rows:
            self.assert_keys(row, USER_KEYS)
            self.assertIsInstance(row["username"], str)
            self.assertIsInstance(row["tags"], str)
        return {r["username"]: r["tags"] for r in rows}

    def test_default_user(self):
        self.assertEqual(self.users(), {"admin": "administrator"})
        one = self.get("users/admin")
        self.assert_keys(one, USER_KEYS)
        self.assertEqual(one, {"username": "admin", "tags": "administrator"})
        self.assertEqual(self.get("users/nobody"), [], "unknown user: code 0 with an empty result")

    def test_user_lifecycle(self):
        pw = "pw:with:colons"  # Basic credentials split at the first ':'
        self.action("POST", "users", {"username": "bob", "password": pw, "tags": "viewer"})
        self.assertEqual(self.users(), {"admin": "administrator", "bob": "viewer"})
        self.assertEqual(self.get("users/bob"), {"username": "bob", "tags": "viewer"})
        self.assertEqual(self.ok("GET", "management/nodes", auth=("bob", pw))[0]["name"], self.NODE)
        self.err("POST", "users", {"username": "bob", "password": "other", "tags": "x"}, 113)
        self.err("POST", "users", {"username": "admin", "password": "other", "tags": "x"}, 113)

        self.action("PUT", "users/bob", {"tags": "ops"})
        self.assertEqual(self.get("users/bob"), {"username": "bob", "tags": "ops"})
        self.ok("GET", "users", auth=("bob", pw))  # the password did not change
        # Tags only, as EMQ X: a password in the body is ignored, so that no user can reset another's (admin's)
        # password without knowing it; change_pwd asks for the old one.
        self.action("PUT", "users/admin", {"tags": "administrator", "password": "taken-over"}, auth=("bob", pw))
        self.ok("GET", "users")  # admin:public still works
        self.assert_unauthorized(self.api("GET", "users", auth=("admin", "taken-over")), "password set by PUT")

        self.action("POST", "/api/v2/auth", {"username": "bob", "password": pw}, auth=None)
        self.err("POST", "/api/v2/auth", {"username": "bob", "password": "pw"}, 103, auth=None)
        self.err("POST", "/api/v2/auth", {"username": "nobody", "password": pw}, 103, auth=None)

        # A DELETE with a body that is not JSON is refused before anything is done, as EMQ X's dispatcher did.
        for body in ("nope", '{"x": 1'):
            self.err("DELETE", "users/bob", body, 109)
        self.assertIn("bob", self.users())
        self.action("DELETE", "users/bob", '{"ignored": true}')
        self.assertEqual(self.users(), {"admin": "administrator"})
        self.assert_unauthorized(self.api("GET", "management/nodes", auth=("bob", pw)), "deleted user")
        self.err("POST", "/api/v2/auth", {"username": "bob", "password": pw}, 103, auth=None)
        self.err("DELETE", "users/bob", None, 105)
        self.err("PUT", "users/bob", {"tags": "x"}, 105)
        self.err("DELETE", "users/admin", None, 106)
        self.assertEqual(self.users(), {"admin": "administrator"})

    def test_change_password(self):
        self.action("PUT", "change_pwd/admin", {"old_pwd": "public", "new_pwd": "s3cret"})
        self.assert_unauthorized(self.api("GET", "users"), "old password")
        new = ("admin", "s3cret")
        self.assertEqual(self.users(auth=new), {"admin": "administrator"})
        self.err("PUT", "change_pwd/admin", {"old_pwd": "public", "new_pwd": "x"}, 114, auth=new)
        self.err("PUT", "change_pwd/nobody", {"old_pwd": "a", "new_pwd": "b"}, 105, auth=new)
        self.err("PUT", "change_pwd/admin", {"old_pwd": "s3cret"}, 107, auth=new)
        self.err("PUT", "change_pwd/admin", {"old_pwd": "s3cret", "new_pwd": 5}, 108, auth=new)
        self.action("POST", "/api/v2/auth", {"username": "admin", "password": "s3cret"}, auth=None)
        self.err("POST", "/api/v2/auth", {"username": "admin", "password": "public"}, 103, auth=None)

    def test_users_parameter_errors(self):
        full = {"username": "carl", "password": "pw", "tags": "t"}
        cases = [({"username": "carl", "password": "pw"}, 107), ({"username": "carl", "tags": "t"}, 107),
                 ({"password": "pw", "tags": "t"}, 107), ({}, 107), (b"", 107), ("123", 107), ('"carl"', 107),
                 ("[]", 107),
                 (dict(full, username=1), 108), (dict(full, password=2), 108), (dict(full, tags=["a"]), 108),
                 (dict(full, tags=None), 108),
                 ("nope", 109), ('{"username": "carl",', 109)]
        for body, code in cases:
            with self.subTest(body=body):
                self.err("POST", "users", body, code)
        for body, code in [({}, 107), ({"tags": 1}, 108), ("x", 109), ("7", 107)]:
            with self.subTest(put=body):
                self.err("PUT", "users/admin", body, code)
        for body, code in [({"username": "admin"}, 107), ({"username": 1, "password": "x"}, 108), ("x", 109),
                           ("[1]", 107)]:
            with self.subTest(auth=body):
                self.err("POST", "/api/v2/auth", body, code, auth=None)
        # Right types, values the users file cannot hold.
        for body, code, message in [
                (dict(full, username=""), 104, "empty username or password"),
                (dict(full, password=""), 104, "empty username or password"),
                (dict(full, username="a:b"), 107, "params error: username contains ':' or a control character"),
                (dict(full, tags="x\ny"), 107, "params error: tags contains ':' or a control character")]:
            with self.subTest(value=body):
                self.assertEqual(self.err("POST", "users", body, code)["message"], message)
        self.assertEqual(self.err("PUT", "change_pwd/admin", {"old_pwd": "public", "new_pwd": ""}, 104)["message"],
                         "empty username or password")
        self.assertEqual(self.err("POST", "users", "[]", 107)["message"], "params error")  # EMQ X's words
        self.assertEqual(self.users(), {"admin": "administrator"}, "nothing changed")

    def test_auth_endpoint_ignores_basic_auth(self):
        body = {"username": "admin", "password": "public"}
        self.action("POST", "/api/v2/auth", body, auth=None)
        self.action("POST", "/api/v2/auth", body, auth=("admin", "wrong"))
        self.action("POST", "/api/v2/auth", body, auth="Bearer whatever")
        self.not_found("GET", "/api/v2/auth")  # only POST is the auth endpoint


class UsersRestartTest(AdminTest):
    AUTO_START = False

    def test_users_survive_restart(self):
        d = tempfile.mkdtemp(prefix="ringmq-it-users-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "users")
        b1 = self.start_broker(users_file=path)
        self.assert_success(self.api("POST", "users", {"username": "carol", "password": "c-pw", "tags": "ops"},
                                     port=b1.admin_port))
        self.assert_success(self.api("PUT", "change_pwd/admin", {"old_pwd": "public", "new_pwd": "changed"},
                                     port=b1.admin_port))
        b1.stop()
        self.assertTrue(os.path.exists(path), "the users file was written")
        b2 = self.start_broker(users_file=path)
        rows = self.assert_success(self.api("GET", "users", auth=("admin", "changed"), port=b2.admin_port))
        self.assertEqual({r["username"]: r["tags"] for r in rows}, {"admin": "administrator", "carol": "ops"})
        self.assert_unauthorized(self.api("GET", "users", port=b2.admin_port), "admin/public after the change")
        self.assert_success(self.api("GET", "management/nodes", auth=("carol", "c-pw"), port=b2.admin_port))
        self.assertNotIn(b"accessible to other users", b2.log())
        # A file others may read (edited by hand, copied with a loose umask) is warned about at start-up.
        b2.stop()
        os.chmod(path, 0o644)
        b3 = self.start_broker(users_file=path)
        self.assertIn(f"admin: {path} is accessible to other users (mode 0644)".encode(), b3.log())
