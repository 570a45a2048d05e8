"""Who may do what: per-key permissions for the SSH door, read from an authorized_keys file.

The file is OpenSSH's authorized_keys format; srepo-server reads two options of its own in
front of a key (OpenSSH's options such as `no-pty` or `from=` are accepted and ignored;
options may be separated by commas, as OpenSSH writes them, or by spaces):

    # team CI: may push and pull team/* images, nothing else
    srepo-perms="read,write" srepo-prefixes="team/*" ssh-ed25519 AAAAC3Nza... ci@team
    # an administrator: everything, including deleting refs and garbage collection
    srepo-perms="all" ssh-ed25519 AAAAC3Nza... admin@host
    # no options: read (pull, list, search) everything
    ssh-ed25519 AAAAC3Nza... reader@laptop

`srepo-perms` is a comma-separated list of
    read    list, search, resolve and download images
    write   upload blobs and create or move refs (a push); also the look-ups a push needs
            (get-ref, missing, blob-size), but not listing or downloading
    delete  delete refs
    gc      run garbage collection (only for a key without a prefix limit)
    all     all of the above
and defaults to `read`. `srepo-prefixes` is a comma-separated list of name patterns the key is
limited to: a name matches `team/*` when it starts with `team/` (`*` spans `/`), or an exact
name such as `tools`; without it the key may touch every name. Blobs are content-addressed
and shared between images, but a key limited to some names downloads only the blobs those
names have (their manifests reach them): knowing a digest is not enough.

The file is re-read when it changes, so keys are handed out or revoked without a restart.
A line that does not parse stops the server at start-up (and is logged and skipped on a
reload) rather than being half understood.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import os
import re
import threading
from dataclasses import dataclass, field

from common.errors import UsageError
from registry.oci import reference as refmod

OPS = ("read", "write", "delete", "gc")


@dataclass(frozen=True)
class Access:
    """Permissions of one caller. `prefixes=None` means every name."""

    read: bool = True
    write: bool = False
    delete: bool = False
    prefixes: tuple[str, ...] | None = None
    gc: bool = False

    @classmethod
    def full(cls) -> Access:
        return cls(read=True, write=True, delete=True, prefixes=None, gc=True)

    @classmethod
    def parse(cls, perms: str | None = None, prefixes: str | None = None) -> Access:
        """From the option texts: perms "read,write", prefixes "team/*,tools"."""
        words = [w.strip() for w in (perms if perms is not None else "read").split(",")
                 if w.strip()]
        bad = [w for w in words if w not in OPS + ("all",)]
        if bad:
            raise UsageError(f"unknown permission {bad[0]!r}: use read, write, delete, gc or all")
        flags = {op: ("all" in words or op in words) for op in OPS}
        pfx = None
        if prefixes is not None:
            pfx = tuple(p.strip() for p in prefixes.split(",") if p.strip())
            for p in pfx:
                # NAME, NAME/* or NAME* (a trailing star only), NAME an image name
                stem = p[:-2] if p.endswith("/*") else p[:-1] if p.endswith("*") else p
                if p != "*" and not refmod.NAME_RE.match(stem):
                    raise UsageError(f"bad name prefix pattern {p!r}: use NAME, NAME/* or NAME*")
        return cls(read=flags["read"], write=flags["write"], delete=flags["delete"],
                   prefixes=pfx, gc=flags["gc"])

    def allows_name(self, name: str) -> bool:
        if self.prefixes is None:
            return True
        return any(fnmatch.fnmatchcase(name, p) for p in self.prefixes)

    def can(self, op: str, name: str | None = None) -> bool:
        """May the caller do `op` ("read"|"write"|"delete"|"gc") on `name`?

        `name=None` asks about name-less operations (blobs; gc), which a prefix limit
        does not restrict except for gc, which touches every name's garbage."""
        if op not in OPS or not getattr(self, op):
            return False
        if name is None:
            return not (op == "gc" and self.prefixes is not None)
        return self.allows_name(name)

    def summary(self) -> dict:
        return {"read": self.read, "write": self.write, "delete": self.delete, "gc": self.gc,
                "prefixes": list(self.prefixes) if self.prefixes is not None else None}

    def __str__(self) -> str:
        ops = ",".join(op for op in OPS if getattr(self, op)) or "none"
        return ops + (f" on {','.join(self.prefixes)}" if self.prefixes is not None else "")


@dataclass(frozen=True)
class AuthorizedKey:
    key_type: str
    blob: bytes
    comment: str
    access: Access
    line: int = 0

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")


_KEY_TYPE = re.compile(r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-[a-z0-9@.-]+)$")
_TOKEN = re.compile(r'(?:[^\s,"]|"(?:[^"\\]|\\.)*")+')
_SEP = re.compile(r"[\s,]*")


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        v = v[1:-1]
    return re.sub(r"\\(.)", r"\1", v)


def parse_line(line: str, lineno: int = 0) -> AuthorizedKey | None:
    """One authorized_keys line; None for blanks and comments; UsageError when malformed."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    opts: dict[str, str] = {}
    pos = 0
    while True:
        pos = _SEP.match(text, pos).end()  # type: ignore[union-attr]
        m = _TOKEN.match(text, pos)
        if not m:
            raise UsageError(f"authorized_keys line {lineno}: no key found")
        tok = m.group(0)
        if _KEY_TYPE.match(tok):
            parts = text[m.start():].split(None, 2)
            break
        name, eq, value = tok.partition("=")
        opts[name.lower()] = _unquote(value) if eq else ""
        pos = m.end()
    if len(parts) < 2:
        raise UsageError(f"authorized_keys line {lineno}: key data missing")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"authorized_keys line {lineno}: key data is not base64") from None
    try:
        access = Access.parse(opts.get("srepo-perms"), opts.get("srepo-prefixes"))
    except UsageError as e:
        raise UsageError(f"authorized_keys line {lineno}: {e}") from None
    return AuthorizedKey(parts[0], blob, parts[2] if len(parts) > 2 else "", access, lineno)


def parse_authorized_keys(text: str, *, strict: bool = True,
                          warn=None) -> dict[bytes, AuthorizedKey]:
    """Keys by their wire blob (which encodes the type); the first line for a key wins."""
    out: dict[bytes, AuthorizedKey] = {}
    for n, line in enumerate(text.splitlines(), 1):
        try:
            k = parse_line(line, n)
        except UsageError as e:
            if strict:
                raise
            if warn:
                warn(str(e))
            continue
        if k is not None:
            out.setdefault(k.blob, k)
    return out


@dataclass
class KeyFile:
    """An authorized_keys file, re-read when its mtime or size changes."""

    path: str
    warn: object = None
    _keys: dict[bytes, AuthorizedKey] = field(default_factory=dict)
    _stamp: tuple = ()
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            if strict:
                raise UsageError(f"cannot read authorized keys {self.path}: {e.strerror}") from None
            return
        self._keys = parse_authorized_keys(text, strict=strict, warn=self.warn)
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)

    def lookup(self, blob: bytes) -> AuthorizedKey | None:
        with self._lock:
            try:
                st = os.stat(self.path)
                if (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp:
                    self._load(strict=False)
            except OSError:
                pass  # keep the keys we know rather than locking everyone out
            return self._keys.get(blob)
