"""Upload sessions of the HTTP door: who owns each, how long it lives, how much one user holds.

    tmp/http-uploads/<uuid>        the bytes received so far (flock'd while the door holds it)
    tmp/http-uploads/<uuid>.json   {"name": repository, "owner": credential id}

A session belongs to the credential that opened it: any other caller is told it does not
exist (404 BLOB_UPLOAD_UNKNOWN), as if it guessed a random id. A session untouched for `ttl`
seconds is removed with its file, also across restarts (the file's mtime is its last
activity), and its descriptor is let go long before that. Each owner may hold at most
`max_sessions` sessions and `max_bytes` unfinished bytes, so one key cannot fill the disk or
the descriptor table for everyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid as uuidmod
from dataclasses import dataclass, field

from common.fsutil import atomic_write, disk_error
from registry.repo import layout_paths as lp
from registry.repo.layout import LayoutRepo
from srepo_server.http_store import ApiError

UPLOAD_TTL = 24 * 3600.0
FD_IDLE = 300.0  # an idle session's descriptor is closed (the file stays, resumable)
MAX_SESSIONS_PER_OWNER = 100
MAX_BYTES_PER_OWNER = 32 << 30
_UUID_LEN = 32
_UNKNOWN = "unknown upload session"


@dataclass
class Session:
    uuid: str
    name: str
    owner: str
    path: str
    fd: int = -1
    offset: int = 0
    hasher: hashlib._Hash | None = None  # None until the file is open and hashed
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Limits:
    ttl: float = UPLOAD_TTL
    max_sessions: int = MAX_SESSIONS_PER_OWNER
    max_bytes: int = MAX_BYTES_PER_OWNER
    fd_idle: float = FD_IDLE


class Uploads:
    """Every session of one door, on disk and in memory; thread-safe."""

    def __init__(self, repo: LayoutRepo, limits: Limits | None = None) -> None:
        self.repo = repo
        self.limits = limits or Limits()
        self.dir = os.path.join(repo.root, lp.HTTP_UPLOADS)
        os.makedirs(self.dir, exist_ok=True)
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()
        self._load()

    # bookkeeping -------------------------------------------------------------------------
    def _meta_path(self, uid: str) -> str:
        return os.path.join(self.dir, uid + ".json")

    def _load(self) -> None:
        """Know the sessions a previous run left (without opening them), drop the rest."""
        for fn in os.listdir(self.dir):
            uid = fn[:-5] if fn.endswith(".json") else fn
            if uid in self.sessions or not _valid_uuid(uid):
                if not _valid_uuid(uid):
                    _unlink(os.path.join(self.dir, fn))  # older formats, strays
                continue
            path = os.path.join(self.dir, uid)
            try:
                with open(self._meta_path(uid), encoding="utf-8") as f:
                    meta = json.load(f)
                st = os.stat(path)
                s = Session(uid, str(meta["name"]), str(meta["owner"]), path,
                            offset=st.st_size, used=st.st_mtime)
            except (OSError, ValueError, KeyError, TypeError):
                _unlink(path)
                _unlink(self._meta_path(uid))
                continue
            self.sessions[uid] = s
        self.expire()

    def owned_by(self, owner: str) -> list[Session]:
        with self.lock:
            return [s for s in self.sessions.values() if s.owner == owner]

    def _check_caps(self, owner: str, more_bytes: int = 0, session: Session | None = None) -> None:
        mine = [s for s in self.sessions.values() if s.owner == owner]
        lim = self.limits
        if session is None and len(mine) >= lim.max_sessions:
            raise ApiError(429, "TOOMANYREQUESTS",
                           f"{owner} already has {len(mine)} unfinished uploads (at most "
                           f"{lim.max_sessions}); finish or cancel some first")
        held = sum(s.offset for s in mine)
        if more_bytes and held + more_bytes > lim.max_bytes:
            raise ApiError(413, "SIZE_INVALID",
                           f"{owner} would hold {held + more_bytes} bytes in unfinished uploads "
                           f"(at most {lim.max_bytes})")

    # the session life cycle ----------------------------------------------------------------
    def create(self, name: str, owner: str) -> Session:
        with self.lock:
            self._check_caps(owner)
            uid = uuidmod.uuid4().hex
            path = os.path.join(self.dir, uid)
            s = Session(uid, name, owner, path)
            try:
                atomic_write(self._meta_path(uid),
                             json.dumps({"name": name, "owner": owner}).encode())
                self._open(s, create=True)
            except OSError as e:
                _unlink(self._meta_path(uid))
                raise disk_error(e, self.dir) from e
            self.sessions[uid] = s
            return s

    def _open(self, s: Session, create: bool) -> None:
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(s.path, flags, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)  # gc (in any process) never sweeps a held session
        s.hasher = hashlib.sha256()
        s.offset = _rehash(fd, s.hasher)  # after a restart or a closed descriptor
        s.fd = fd

    def get(self, uid: str, name: str, owner: str) -> Session:
        """The open session `uid` of `name`, if `owner` opened it; 404 otherwise."""
        if not _valid_uuid(uid):
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", _UNKNOWN)
        with self.lock:
            s = self.sessions.get(uid)
            if s is None or s.name != name or s.owner != owner:
                raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", _UNKNOWN)
            s.used = time.time()
            return s

    def ensure_open(self, s: Session) -> None:
        """Open (and re-hash) a session whose descriptor was let go; callers hold s.lock."""
        if s.fd >= 0:
            return
        with self.lock:
            if self.sessions.get(s.uuid) is not s:
                raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", _UNKNOWN)
        try:
            self._open(s, create=False)
        except OSError:
            self.drop(s)
            raise ApiError(404, "BLOB_UPLOAD_UNKNOWN", _UNKNOWN) from None

    def write(self, s: Session, data: bytes) -> None:
        """Append at the session's offset (callers hold s.lock)."""
        with self.lock:
            self._check_caps(s.owner, len(data), s)
        assert s.hasher is not None
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(s.fd, view, s.offset)
                s.hasher.update(view[:n])
                s.offset += n
                view = view[n:]
        except OSError as e:
            os.ftruncate(s.fd, s.offset)
            raise disk_error(e, s.path) from e
        s.used = time.time()

    def finish(self, s: Session, digest: str) -> None:
        """Verify and move into the blob pool (durable before it returns), or refuse."""
        assert s.hasher is not None
        got = "sha256:" + s.hasher.hexdigest()
        if got != digest:
            self.drop(s)
            raise ApiError(400, "DIGEST_INVALID", "uploaded content does not match the digest",
                           {"expected": digest, "got": got, "size": s.offset})
        self.repo.ingest(s.path, digest)  # the layout's one way into the blob pool
        self._forget(s)

    def drop(self, s: Session) -> None:
        _unlink(s.path)
        self._forget(s)

    def _forget(self, s: Session) -> None:
        _unlink(self._meta_path(s.uuid))
        with self.lock:
            self.sessions.pop(s.uuid, None)
        self._close_fd(s)

    @staticmethod
    def _close_fd(s: Session) -> None:
        if s.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(s.fd)
        s.fd = -1
        s.hasher = None

    # expiry ------------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int:
        """Remove sessions idle past the TTL, let idle descriptors go; returns removed count.

        A session a request is using right now (its lock is held) is left alone."""
        now = time.time() if now is None else now
        removed = 0
        with self.lock:
            candidates = list(self.sessions.values())
        for s in candidates:
            idle = now - s.used
            if idle < min(self.limits.fd_idle, self.limits.ttl) \
                    or not s.lock.acquire(blocking=False):
                continue
            try:
                if idle >= self.limits.ttl:
                    self.drop(s)
                    removed += 1
                else:
                    self._close_fd(s)
            finally:
                s.lock.release()
        return removed

    def close(self) -> None:
        with self.lock:
            held = list(self.sessions.values())
        for s in held:
            self._close_fd(s)


def _valid_uuid(uid: str) -> bool:
    return len(uid) == _UUID_LEN and all(c in "0123456789abcdef" for c in uid)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _rehash(fd: int, h: hashlib._Hash) -> int:
    off = 0
    while chunk := os.pread(fd, 1 << 20, off):
        h.update(chunk)
        off += len(chunk)
    return off
