"""A repository on a remote directory reached over SFTP: nothing but sshd on the other side.

Same layout as `registry.repo.layout` (oci-layout, index.json, blobs/sha256, refs/<name>/@<version>,
tmp/uploads), so a directory written here is also a `LayoutRepo`/`srepo-server` root.

The server is not trusted and SFTP has no flock, so:
- uploads go to `tmp/uploads/<hex>.<random>.partial` (one file per writer, so concurrent
  pushes of one blob never interleave), are hashed on the client as they stream, and are
  renamed into `blobs/sha256/<hex>` only when the digest and size match. A cut-off upload
  is resumed by claiming its partial with an atomic rename and re-hashing its prefix.
- ref changes, compare-and-swap and index.json rewrites happen under a lock directory
  `refs/.lock` (mkdir is atomic on POSIX); a lock whose owner record has not changed for
  `STALE_LOCK` seconds is broken. Ref files are written tmp -> posix-rename.
- reads of blobs are verified by whoever consumes them (the copy routine's destination).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import posixpath
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, cast

import paramiko

from common.errors import (
    CockerError,
    Conflict,
    CorruptImage,
    DigestMismatch,
    LockBusy,
    NotARepository,
    NotFound,
    PermissionDenied,
    TransportError,
    UsageError,
)
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import gc as gcmod
from registry.repo import layout_paths as lp
from registry.repo import manifests
from registry.repo.layout import DIR_MODE, FILE_MODE, GC_GRACE, LAYOUT_VERSION
from registry.repo.layout_refs import VERSION_PREFIX, LayoutRefs
from registry.repo.repository import (
    ANY,
    LEASES,
    MOUNT,
    REFERRERS,
    RESUME,
    SERVER_GC,
    BlobWriter,
    RefRecord,
    Repository,
)

# registry.ssh first: it keeps paramiko from importing `invoke` (~140 ms of start-up).
from registry.transports.ssh import connect as _ssh  # noqa: F401
from registry.transports.ssh.sftp_fs import SftpFs

STALE_LOCK = float(os.environ.get("COCKER_SFTP_STALE_LOCK", "30"))
LOCK_TIMEOUT = float(os.environ.get("COCKER_LOCK_TIMEOUT", "120"))
# Partials untouched this long belong to a dead writer and may be claimed for a resume.
ABANDONED = float(os.environ.get("COCKER_SFTP_ABANDONED", "10"))
WATCH = 1.5  # how long a younger partial is watched for growth before it is claimed
TAKEOVER_WAIT = 60.0
# OpenSSH's sftp-server takes messages up to 256 KiB; bigger requests mean fewer Python
# round trips per MiB than paramiko's 32 KiB default.
REQUEST_SIZE = 128 * 1024
# Reads: sftp-server answers up to 255 KiB per request; 248 KiB halves the requests (and
# paramiko's per-request work) of 128 KiB ones: pulls measured 1.3-2x faster.
READ_REQUEST_SIZE = 248 * 1024
BUFSIZE = 1 << 20
PREFETCH_REQUESTS = 32
SFTP_WINDOW = 2 << 20
MAX_PACKET = 2 ** 17


def open_sftp(client: paramiko.SSHClient) -> paramiko.SFTPClient:
    """An SFTP session with a small receive window: paramiko's channel buffer deletes
    consumed bytes from the front of one array, so each of the many small reads SFTP
    makes costs O(buffered bytes); 2 MiB keeps that cheap (5x less CPU than 128 MiB on a
    pull) and the pipe still full."""
    transport = client.get_transport()
    sftp = None if transport is None else paramiko.SFTPClient.from_transport(
        transport, window_size=SFTP_WINDOW, max_packet_size=MAX_PACKET)
    if sftp is None:
        raise TransportError("the SSH connection closed before SFTP could start")
    return sftp


def _remote_errors(fn: Callable) -> Callable:
    """Turn paramiko/socket failures into the project's one-line errors."""

    @functools.wraps(fn)
    def wrapper(self, *a, **kw):
        try:
            return fn(self, *a, **kw)
        except CockerError:
            raise
        except (TimeoutError, paramiko.SSHException, EOFError, ConnectionError) as e:
            raise TransportError(f"{self.describe()}: connection lost ({e or type(e).__name__})"
                                 ) from None
        except OSError as e:  # an SFTP status: no such file, permission, failure
            raise self._os_error(e, "") from None
    return wrapper


class SftpRepo(Repository):
    def __init__(self, client: paramiko.SSHClient, root: str, *, url: str | None = None,
                 create: bool = False, own_client: bool = True) -> None:
        self.client = client
        self.root = root.rstrip("/") or "/"
        self.url = url or f"sftp:{self.root}"
        self.own_client = own_client
        self._owners: dict[threading.Thread, paramiko.SFTPClient] = {}
        self._sessions: list[paramiko.SFTPClient] = []
        self._slock = threading.Lock()
        self._clock_skew: float | None = None
        self._swept = False
        self.fs = SftpFs(self.root, self.sftp, self.remote_now)
        self.refs = LayoutRefs(self.fs, self, self.lock, self._assert_owner)
        self._open_layout(create)

    # sessions ------------------------------------------------------------------------
    def sftp(self) -> paramiko.SFTPClient:
        """One SFTP session per live thread, all on the same SSH connection; a session
        whose thread has ended is handed on, so a long run of copies (each with its own
        worker threads) never exceeds sshd's MaxSessions (10 by default)."""
        me = threading.current_thread()
        with self._slock:
            s = self._owners.get(me)
            if s is not None:
                return s
            for t, s in list(self._owners.items()):
                if not t.is_alive():
                    del self._owners[t]
                    self._owners[me] = s
                    return s
        try:
            s = open_sftp(self.client)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise TransportError(f"{self.describe()}: cannot start SFTP ({e})") from None
        with self._slock:
            self._owners[me] = s
            self._sessions.append(s)
        return s

    def close(self) -> None:
        with self._slock:
            sessions, self._sessions = self._sessions, []
        for s in sessions:
            with contextlib.suppress(Exception):
                s.close()
        if self.own_client:
            with contextlib.suppress(Exception):
                self.client.close()

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _os_error(self, e: OSError, path: str) -> CockerError:
        where = path or getattr(e, "filename", None) or self.describe()
        if e.errno == errno.ENOENT:
            return NotFound(f"{where}: not found on {self.describe()}")
        if e.errno == errno.EACCES:
            return PermissionDenied(f"{where}: permission denied on {self.describe()}")
        msg = str(e.args[-1] if e.args else e)
        if "Failure" in msg or e.errno == errno.ENOSPC:
            return CockerError(f"{self.describe()}: the remote refused a write of {where} "
                               f"({msg}); is its disk full?")
        return TransportError(f"{self.describe()}: {where}: {msg}")

    def _stat(self, path: str) -> paramiko.SFTPAttributes | None:
        try:
            return self.sftp().stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def _read_small(self, path: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with self.sftp().open(path, "rb") as f:
                return f.read(limit)
        except (OSError, FileNotFoundError) as e:
            if getattr(e, "errno", None) == errno.ENOENT:
                return None
            raise

    def _write_atomic(self, path: str, data: bytes) -> None:
        """tmp -> posix-rename, so a reader sees the old or the new content."""
        d, base = posixpath.split(path)
        tmp = posixpath.join(d, f".tmp.{base}.{secrets.token_hex(6)}")
        s = self.sftp()
        try:
            with s.open(tmp, "wb") as f:
                f.chmod(FILE_MODE)
                f.write(data)
            s.posix_rename(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                s.remove(tmp)
            raise

    def _makedirs(self, path: str) -> None:
        s = self.sftp()
        if self._stat(path) is not None:
            return
        parent = posixpath.dirname(path)
        if parent and parent != path:
            self._makedirs(parent)
        try:
            s.mkdir(path, DIR_MODE)
        except OSError:
            if self._stat(path) is None:
                raise

    @_remote_errors
    def _open_layout(self, create: bool) -> None:
        if self._stat(self.path("oci-layout")) is None:
            if not create:
                if self._stat(self.root) is None:
                    raise NotFound(f"{self.describe()}: {self.root} does not exist (use --init "
                                   "to create a new repository there)")
                raise NotARepository(f"{self.describe()}: {self.root} is not a cocker/OCI repository "
                               "(no oci-layout; use --init to create one)")
            self._makedirs(self.root)
            if self._stat(self.path("index.json")) is None:
                self._write_atomic(self.path("index.json"), oci.canonical_json(
                    {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": []}))
            for sub in ("blobs/sha256", "refs", "tmp/uploads"):
                self._makedirs(self.path(sub))
            self._write_atomic(self.path("oci-layout"), json.dumps(LAYOUT_VERSION).encode())
        for sub in ("refs", "tmp/uploads"):
            if self._stat(self.path(sub)) is None:
                self._makedirs(self.path(sub))

    def remote_now(self) -> float:
        """The remote clock (via a file's mtime), so age checks do not depend on skew."""
        if self._clock_skew is None:
            p = self.path("tmp", f".clock.{secrets.token_hex(6)}")
            s = self.sftp()
            with s.open(p, "wb") as f:
                f.write(b"")
            st = s.stat(p)
            with contextlib.suppress(IOError):
                s.remove(p)
            now = time.time()
            # a server that reports no mtime gets no correction
            self._clock_skew = (now if st.st_mtime is None else float(st.st_mtime)) - now
        return time.time() + self._clock_skew

    # paths ---------------------------------------------------------------------------
    def blob_path(self, digest: str) -> str:
        return self.path("blobs", "sha256", digestmod.hex_of(digest))

    def ref_path(self, name: str, version: str) -> str:
        refmod.validate_name(name)
        refmod.validate_version(version)
        return self.path("refs", *name.split("/"), VERSION_PREFIX + version)

    # refs (registry.repo.layout_refs, the same code as a local directory's) --------------
    @_remote_errors
    def list_refs(self, name: str | None = None) -> list[RefRecord]:
        return self.refs.list_refs(name)

    @_remote_errors
    def get_ref(self, name: str, version: str) -> str | None:
        return self.refs.get_ref(name, version)

    @_remote_errors
    def put_ref(self, name: str, version: str, digest: str, expect: object = ANY) -> None:
        self.refs.put_ref(name, version, digest, expect)

    @_remote_errors
    def delete_ref(self, name: str, version: str, expect: object = ANY) -> None:
        self.refs.delete_ref(name, version, expect)

    # the lock ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout: float | None = None):
        """mkdir `refs/.lock` (atomic); the owner record lets others spot a dead holder."""
        timeout = LOCK_TIMEOUT if timeout is None else timeout
        s = self.sftp()
        lockdir = self.path("refs", ".lock")
        token = f"{socket.gethostname()} {os.getpid()} {time.time():.3f} {secrets.token_hex(8)}"
        deadline = time.monotonic() + timeout
        seen: tuple[str, float] | None = None
        delay = 0.01
        while True:
            try:
                s.mkdir(lockdir)
                break
            except OSError:
                pass
            owner = self._read_small(posixpath.join(lockdir, "owner"), 4096)
            key = (owner or b"").decode(errors="replace")
            now = time.monotonic()
            if seen is None or seen[0] != key:
                seen = (key, now)
            elif now - seen[1] > STALE_LOCK:
                self._break_lock(lockdir, key)
                seen = None
                continue
            if now > deadline:
                raise LockBusy(f"{self.describe()} is locked by another client ({key or 'unknown'}); "
                               "try again later")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:
            with s.open(posixpath.join(lockdir, "owner"), "wb") as f:
                f.write(token.encode())
            yield token
        finally:
            with contextlib.suppress(Exception):
                if self._read_small(posixpath.join(lockdir, "owner"), 4096) == token.encode():
                    s.remove(posixpath.join(lockdir, "owner"))
                    s.rmdir(lockdir)

    def _break_lock(self, lockdir: str, key: str) -> None:
        # Rename first (only one breaker wins), then check that what we moved is the dead
        # owner's lock before deleting it.
        s = self.sftp()
        moved = f"{lockdir}.broken.{secrets.token_hex(6)}"
        try:
            s.rename(lockdir, moved)
        except OSError:
            return
        with contextlib.suppress(Exception):
            with contextlib.suppress(IOError):
                s.remove(posixpath.join(moved, "owner"))
            s.rmdir(moved)

    def _assert_owner(self, token: str) -> None:
        got = self._read_small(self.path("refs", ".lock", "owner"), 4096)
        if got != token.encode():
            raise Conflict(f"{self.describe()}: lost the repository lock (another client "
                           "judged it stale); retry")

    # blobs ---------------------------------------------------------------------------
    @_remote_errors
    def blob_size(self, digest: str) -> int | None:
        st = self._stat(self.blob_path(digest))
        return None if st is None else int(st.st_size or 0)

    @_remote_errors
    def open_blob(self, digest: str, offset: int = 0) -> BinaryIO:
        path = self.blob_path(digest)
        try:
            f = self.sftp().open(path, "rb", bufsize=BUFSIZE)
        except OSError as e:
            if getattr(e, "errno", None) == errno.ENOENT:
                raise NotFound(f"blob {digest} not found in {self.describe()}") from None
            raise
        f.MAX_REQUEST_SIZE = READ_REQUEST_SIZE
        size = f.stat().st_size
        if offset:
            f.seek(offset)
        if size and size - offset > READ_REQUEST_SIZE:
            f.prefetch(size, max_concurrent_requests=PREFETCH_REQUESTS)
        return cast(BinaryIO, _Reader(f, self))  # read/seek/close: all a blob reader needs

    @_remote_errors
    def upload(self, digest: str, size: int | None = None) -> BlobWriter:
        if not self._swept:
            self._swept = True
            self._sweep_uploads()
        return _SftpUpload(self, digestmod.validate(digest), size)

    def _sweep_uploads(self) -> None:
        """Partials a dead push left long ago go at the next push (not only at gc)."""
        s = self.sftp()
        try:
            entries = s.listdir_attr(self.path("tmp", "uploads"))
            if not entries:
                return
            now = self.remote_now()
        except OSError:
            return
        for a in entries:
            if now - float(a.st_mtime or 0) > GC_GRACE:
                with contextlib.suppress(IOError):
                    s.remove(self.path("tmp", "uploads", a.filename))

    def all_blobs(self) -> list[tuple[str, paramiko.SFTPAttributes]]:
        out = []
        for a in self.sftp().listdir_attr(self.path("blobs", "sha256")):
            d = "sha256:" + a.filename
            if digestmod.is_valid(d):
                out.append((d, a))
        return sorted(out, key=lambda x: x[0])

    # manifests beyond refs (registry.repo.manifests) --------------------------------------
    @_remote_errors
    def put_manifest(self, name: str, data: bytes, media_type: str | None = None) -> str:
        return manifests.put(self, self.fs, self.lock, name, data, media_type)

    @_remote_errors
    def referrers(self, subject: str, artifact_type: str | None = None) -> list[dict]:
        return manifests.referrers(self, self.fs, subject, artifact_type)

    # maintenance ---------------------------------------------------------------------
    def capabilities(self) -> frozenset[str]:
        return frozenset({RESUME, SERVER_GC, LEASES, MOUNT, REFERRERS})

    @contextlib.contextmanager
    def lease(self, digests: Iterable[str]) -> Iterator[None]:
        """A lease file, written under the lock; SFTP cannot hold an flock, so it counts for
        LEASE_TTL after it was written (registry.repo.gc)."""
        rel = f"{lp.LEASES}/{secrets.token_hex(12)}"
        with self.lock():
            self._makedirs(self.path(lp.LEASES))
            self.fs.write_atomic(rel, gcmod.lease_body(digests))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                self.fs.remove(rel)

    @_remote_errors
    def gc(self, grace: float = GC_GRACE, dry_run: bool = False) -> tuple[int, int]:
        """The one gc (registry.repo.gc) and stale partial uploads, under the lock, so a
        push cannot publish a ref whose blobs vanish (its put_ref re-checks)."""
        s = self.sftp()
        with self.lock() as token:
            now = self.remote_now()
            self._assert_owner(token)
            r = gcmod.collect(self, self.fs, grace=grace, dry_run=dry_run)
            for a in s.listdir_attr(self.path("tmp", "uploads")):
                if now - float(a.st_mtime or 0) >= grace and not dry_run:
                    with contextlib.suppress(IOError):
                        s.remove(self.path("tmp", "uploads", a.filename))
            if not dry_run:
                self.refs.rebuild_index()
        return r.removed, r.freed

    def blob_digests(self) -> list[str]:
        return [d for d, _ in self.all_blobs()]

    def describe(self) -> str:
        return self.url


def finish_pipelined(f: paramiko.SFTPFile) -> None:
    """Flush and wait for every pipelined write's status, raising on the first failure.

    paramiko's close() sends the last buffered writes and never reads their statuses,
    so a write the server refused (disk full) would pass silently."""
    f.flush()
    reqs = getattr(f, "_reqs", None)
    while reqs:
        # paramiko's private reply reader (absent from its stubs); raises IOError on a bad status
        t, _msg = f.sftp._read_response(reqs.popleft())  # type: ignore[attr-defined]
        if t != paramiko.sftp.CMD_STATUS:
            raise TransportError("SFTP server sent a malformed write reply")
    f.close()


class _Reader:
    """A blob read stream whose errors come out as CockerErrors."""

    def __init__(self, f: paramiko.SFTPFile, repo: SftpRepo) -> None:
        self.f, self.repo = f, repo

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise TransportError(f"{self.repo.describe()}: connection lost while reading "
                                 f"({e or type(e).__name__})") from None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SftpUpload(BlobWriter):
    """One writer's upload: its own partial file, hashed locally, renamed when verified."""

    def __init__(self, repo: SftpRepo, digest: str, size: int | None) -> None:
        self.repo, self.digest, self.size = repo, digest, size
        self.s = repo.sftp()
        self.dest = repo.blob_path(digest)
        self.hex = digestmod.hex_of(digest)
        self.uploads = repo.path("tmp", "uploads")
        self.partial = posixpath.join(self.uploads,
                                      f"{self.hex}.{secrets.token_hex(6)}.partial")
        self._h = hashlib.sha256()
        self.count = 0
        self.done = False
        self.f: paramiko.SFTPFile | None = None
        st = repo._stat(self.dest)
        if st is not None:
            self.done = True
            self.offset = int(st.st_size or 0) if size is None else size
            return
        self.offset = self._claim_partial()
        mode = "r+b" if self.offset else "wb"
        self.f = self.s.open(self.partial, mode, bufsize=BUFSIZE)
        if not self.offset:
            self.f.chmod(FILE_MODE)
        self.f.MAX_REQUEST_SIZE = REQUEST_SIZE
        self.f.set_pipelined(True)
        if self.offset:
            self.f.seek(self.offset)

    def _claim_partial(self) -> int:
        """Take over an abandoned partial of this blob (rename = exclusive claim) and
        re-hash its bytes, so the final check covers them. Returns the resume offset."""
        try:
            entries = self.s.listdir_attr(self.uploads)
        except OSError:
            return 0
        cands = [a for a in entries if a.filename.startswith(self.hex + ".")
                 and a.filename.endswith(".partial")]
        if not cands:
            return 0
        now = self.repo.remote_now()
        for a in sorted(cands, key=lambda a: -(a.st_size or 0)):
            src = posixpath.join(self.uploads, a.filename)
            if not a.st_size:
                continue
            if now - float(a.st_mtime or 0) < ABANDONED and self._growing(src, a.st_size):
                continue  # a live writer
            try:
                self.s.posix_rename(src, self.partial)
            except OSError:
                continue  # someone else claimed it
            have = int(self.s.stat(self.partial).st_size or 0)
            if self.size is not None and have > self.size:
                self.s.remove(self.partial)
                return 0
            with self.s.open(self.partial, "rb", bufsize=BUFSIZE) as f:
                f.MAX_REQUEST_SIZE = READ_REQUEST_SIZE
                if have > READ_REQUEST_SIZE:
                    f.prefetch(have, max_concurrent_requests=PREFETCH_REQUESTS)
                left = have
                while left:
                    chunk = f.read(min(left, BUFSIZE))
                    if not chunk:
                        break
                    self._h.update(chunk)
                    left -= len(chunk)
            self.count = have - left
            return self.count
        return 0

    def _growing(self, path: str, size: int) -> bool:
        # A live writer streams continuously; a dead one's file stands still.
        time.sleep(WATCH)
        st = self.repo._stat(path)
        return st is not None and st.st_size != size

    def write(self, data: bytes) -> None:
        if self.done:
            return
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise CorruptImage(f"blob {digestmod.short(self.digest)} is larger than its stated size")
        if self.f is None:
            raise UsageError("write after commit")
        self._h.update(data)
        try:
            self.f.write(data)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._error(e) from None

    def _error(self, e: BaseException) -> CockerError:
        if isinstance(e, OSError) and not isinstance(e, (ConnectionError, socket.timeout)) \
                and e.errno != errno.EPIPE:
            return self.repo._os_error(e, self.partial)
        return TransportError(f"{self.repo.describe()}: connection lost during upload of "
                              f"{digestmod.short(self.digest)} ({str(e) or type(e).__name__}); "
                              "run the push again: it resumes where it stopped")

    def commit(self) -> None:
        if self.done:
            return
        if self.f is None:
            raise UsageError("commit after abort")
        try:
            finish_pipelined(self.f)
            self.f = None
            st = self.repo._stat(self.partial)
            if st is None:
                self._taken_over()
                return
            if int(st.st_size or 0) != self.count:
                raise CockerError(f"{self.repo.describe()}: the remote kept {st.st_size} of "
                                  f"{self.count} bytes of {digestmod.short(self.digest)}; "
                                  "is its disk full?")
            got = "sha256:" + self._h.hexdigest()
            if got != self.digest or (self.size is not None and self.count != self.size):
                # Bad bytes must not survive to poison a resume.
                with contextlib.suppress(IOError):
                    self.s.remove(self.partial)
                raise DigestMismatch(
                    f"blob {digestmod.short(self.digest)}: uploaded content hashes to "
                    f"{digestmod.short(got)} ({self.count} bytes); retry the push")
            if self.repo._stat(self.dest) is not None:
                self.s.remove(self.partial)  # another client finished it first
            else:
                try:
                    self.s.posix_rename(self.partial, self.dest)
                except OSError:
                    # A server without posix-rename: plain rename refuses to overwrite,
                    # which for an immutable blob only means someone else won the race.
                    if self.repo._stat(self.dest) is None:
                        self.s.rename(self.partial, self.dest)
                    else:
                        self.s.remove(self.partial)
            self.done = True
        except CockerError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._error(e) from None

    def _taken_over(self) -> None:
        """Our partial was claimed by another client that judged us dead (we stalled);
        it writes the same bytes at the same offsets, so wait for it to finish the blob."""
        deadline = time.monotonic() + TAKEOVER_WAIT
        while time.monotonic() < deadline:
            if self.repo._stat(self.dest) is not None:
                self.done = True
                return
            time.sleep(0.2)
        raise Conflict(f"{self.repo.describe()}: another client took over the upload of blob "
                       f"{digestmod.short(self.digest)} and has not finished it; retry")

    def abort(self) -> None:
        if self.f is not None:
            f, self.f = self.f, None
            # An aborted upload's buffered bytes are not wanted, and once the connection is
            # lost paramiko's close fails flushing them, leaves the file open, and fails
            # again in its __del__ (a traceback on stderr): close without flushing.
            f.set_pipelined(False)
            f.flush = lambda: None  # type: ignore[method-assign]
            with contextlib.suppress(Exception):
                f.close()
