"""Who may do what through the HTTP door: bearer tokens and htpasswd users, with grants.

Token file (``--token-file``), one token per line, ``#`` starts a comment::

    TOKEN [PERMS [PREFIX ...]]
    s3cr3t-ci     read,write        team/*  tools/builder
    s3cr3t-admin  all
    s3cr3t-ro     read

Password file (``--htpasswd``), one user per line::

    USER:HASH[:PERMS[:PREFIX,PREFIX...]]

HASH is a bcrypt hash (``htpasswd -nbB USER PW``, as docker-registry uses), ``{SHA}`` +
base64(sha1) (``htpasswd -s``), ``$pbkdf2-sha256$ITER$SALT$HASH`` (``srepo-server passwd``)
or ``{PLAIN}password`` for tests. PERMS is a comma list of read, write, delete or ``all``
(default all). A PREFIX is an exact name or ``team/*`` (everything below team/); default
every name. A token also works as the password of Basic auth, under any user name, so
clients that only know Basic (``skopeo --creds x:TOKEN``) can use tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass

from common.errors import UsageError

OPS = ("read", "write", "delete")


@dataclass(frozen=True)
class Grant:
    """What one credential may do: `ops` on names matching `prefixes` (empty: every name)."""

    who: str
    ops: frozenset[str]
    prefixes: tuple[str, ...] = ()

    def describe(self) -> str:
        ops = ",".join(o for o in OPS if o in self.ops) or "nothing"
        return ops + (f" on {' '.join(self.prefixes)}" if self.prefixes else "")

    def can(self, op: str, name: str | None = None) -> bool:
        if op not in self.ops:
            return False
        if name is None or not self.prefixes:
            return True
        return any(_matches(p, name) for p in self.prefixes)


ANONYMOUS_READ = Grant("-", frozenset({"read"}))
NOBODY = Grant("-", frozenset())


def _matches(prefix: str, name: str) -> bool:
    if prefix in ("*", "/*"):
        return True
    if prefix.endswith("/*"):
        return name.startswith(prefix[:-1])
    return name == prefix


def _parse_ops(text: str, where: str) -> frozenset[str]:
    ops = {o.strip() for o in text.split(",") if o.strip()}
    if "all" in ops:
        return frozenset(OPS)
    bad = ops - set(OPS)
    if bad or not ops:
        raise UsageError(f"{where}: unknown permission(s) {', '.join(sorted(bad)) or '(none)'}; "
                         "use read, write, delete or all")
    return frozenset(ops)


def parse_token_file(text: str, path: str = "token file") -> dict[str, Grant]:
    tokens: dict[str, Grant] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{path}:{n}"
        if len(parts[0]) < 8:
            raise UsageError(f"{where}: token is too short (at least 8 characters)")
        ops = _parse_ops(parts[1], where) if len(parts) > 1 else frozenset(OPS)
        tokens[parts[0]] = Grant(token_id(parts[0]), ops, tuple(parts[2:]))
    return tokens


def token_id(token: str) -> str:
    """A stable name for a token in logs and as the owner of upload sessions (which
    survive restarts and edits of the file), revealing nothing of the token."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class _User:
    hash: str
    grant: Grant


def parse_htpasswd(text: str, path: str = "htpasswd") -> dict[str, _User]:
    users: dict[str, _User] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        parts = line.split(":")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise UsageError(f"{where}: expected USER:HASH[:PERMS[:PREFIXES]]")
        user, h = parts[0], parts[1]
        ops = _parse_ops(parts[2], where) if len(parts) > 2 and parts[2] else frozenset(OPS)
        prefixes = tuple(p for p in parts[3].split(",") if p) if len(parts) > 3 else ()
        if not h.startswith(("$2a$", "$2b$", "$2y$", "{SHA}", "$pbkdf2-sha256$", "{PLAIN}")):
            raise UsageError(f"{where}: unsupported password hash for {user!r} "
                             "(use bcrypt, {SHA}, $pbkdf2-sha256$ or {PLAIN})")
        users[user] = _User(h, Grant(user, ops, prefixes))
    return users


def pbkdf2_hash(password: str, iterations: int = 200_000) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"$pbkdf2-sha256${iterations}${b64(salt)}${b64(dk)}"


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def check_password(h: str, password: str) -> bool:
    pw = password.encode()
    try:
        if h.startswith(("$2a$", "$2b$", "$2y$")):
            import bcrypt  # paramiko already depends on it
            return bcrypt.checkpw(pw, h.replace("$2y$", "$2b$", 1).encode())
        if h.startswith("{SHA}"):
            return hmac.compare_digest(base64.b64encode(hashlib.sha1(pw).digest()).decode(), h[5:])
        if h.startswith("$pbkdf2-sha256$"):
            _, _, it, salt, dk = h.split("$")
            got = hashlib.pbkdf2_hmac("sha256", pw, _unb64(salt), int(it))
            return hmac.compare_digest(got, _unb64(dk))
        if h.startswith("{PLAIN}"):
            return hmac.compare_digest(h[7:].encode(), pw)
    except (ValueError, TypeError):
        return False
    return False


class _Watched:
    """A file re-read when its mtime changes, so tokens can be handed out without a restart."""

    def __init__(self, path: str | None, parse) -> None:
        self.path, self.parse = path, parse
        self.value: dict = {}
        self.mtime: int | None = None
        self.checked = 0.0
        self.lock = threading.Lock()
        if path:
            self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read {self.path}: {e.strerror}") from None
        self.value, self.mtime = self.parse(text, self.path), st.st_mtime_ns

    def get(self) -> dict:
        if not self.path:
            return self.value
        now = time.monotonic()
        if now - self.checked > 2:
            with self.lock:
                self.checked = now
                try:
                    if os.stat(self.path).st_mtime_ns != self.mtime:
                        self._load()
                except (OSError, UsageError):
                    pass  # keep the last good version rather than locking everyone out
        return self.value


class Authenticator:
    """Turns an Authorization header into a Grant (or None: bad credentials)."""

    def __init__(self, token_file: str | None = None, htpasswd: str | None = None,
                 anonymous_read: bool = False, realm: str = "srepo-server") -> None:
        self.tokens = _Watched(token_file, parse_token_file)
        self.users = _Watched(htpasswd, parse_htpasswd)
        self.anonymous_read = anonymous_read
        self.realm = realm
        self.has_credentials = bool(token_file or htpasswd)
        self._ok_cache: dict[tuple[str, str, str], float] = {}

    @property
    def anonymous(self) -> Grant:
        return ANONYMOUS_READ if self.anonymous_read else NOBODY

    def challenge(self) -> str:
        return f'Basic realm="{self.realm}", charset="UTF-8"'

    def authenticate(self, header: str | None) -> Grant | None:
        """The caller's grant; `anonymous` without (or with empty) credentials; None if wrong."""
        if not header:
            return self.anonymous
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            return self._token(value)
        if scheme == "basic":
            try:
                user, _, pw = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            if not user and not pw:
                return self.anonymous  # what containers/image sends when it has no creds
            return self._basic(user, pw)
        return None

    @staticmethod
    def refusal(header: str) -> str:
        """Why `authenticate` refused this header, in words a user can act on."""
        scheme = header.strip().partition(" ")[0].lower()
        if scheme == "bearer":
            return "the token was not accepted (unknown, mistyped or revoked)"
        if scheme == "basic":
            return "the user name and password (or token) were not accepted"
        return f"unsupported Authorization scheme {scheme!r}: use Bearer TOKEN or Basic"

    def _token(self, token: str) -> Grant | None:
        tokens = self.tokens.get()
        for t, g in tokens.items():
            if hmac.compare_digest(t.encode(), token.encode()):
                return g
        return None

    def _basic(self, user: str, pw: str) -> Grant | None:
        u = self.users.get().get(user)
        if u is not None:
            # bcrypt costs ~0.1 s a check; remember good pairs (hashed) for a while.
            key = (user, u.hash, hashlib.sha256(pw.encode()).hexdigest())
            t = self._ok_cache.get(key)
            if t is not None and time.monotonic() - t < 300:
                return u.grant
            if check_password(u.hash, pw):
                if len(self._ok_cache) > 10000:
                    self._ok_cache.clear()
                self._ok_cache[key] = time.monotonic()
                return u.grant
            return None
        return self._token(pw)
