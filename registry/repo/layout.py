"""A repository on a local directory: an OCI image layout plus one ref file per name:version.

    oci-layout                 {"imageLayoutVersion": "1.0.0"}
    index.json                 rewritten on every ref change, so the directory stays a valid layout
    blobs/sha256/<hex>         immutable, written tmp -> fsync -> rename
    refs/<name>/@<version>     the manifest digest (the '@' keeps a version apart from a sub-name)
    tmp/                       uploads in progress (resumable) and packer output
    .lock                      flock taken for ref changes and gc

The same code serves the local store, `file://` repos and the server's storage. The gc
module is imported by the two methods that use it: every `cocker` start (a container's
boot, timed against runc) opens the store, few collect garbage or lease blobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from common.errors import Conflict, CorruptImage, DigestMismatch, LockBusy, NotARepository, NotFound
from common.fsutil import EarlyWriteback, atomic_write, disk_error, flock, fsync_dir, start_writeback
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import layout_paths as lp
from registry.repo import manifests
from registry.repo.fs import LocalFs
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

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
GC_GRACE = 3600.0
FILE_MODE, DIR_MODE = lp.FILE_MODE, lp.DIR_MODE
LOCK_DIR_NAME = ".lock"          # refs/.lock: the lock SFTP clients can take too
STALE_LOCK = float(os.environ.get("COCKER_SFTP_STALE_LOCK", "30"))
LOCK_TIMEOUT_DEFAULT = float(os.environ.get("COCKER_LOCK_TIMEOUT", "60"))


def is_layout(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "oci-layout")) and os.path.isdir(
        os.path.join(root, "blobs"))


class LayoutRepo(Repository):
    def __init__(self, root: str, *, create: bool = False, url: str | None = None) -> None:
        self.root = os.path.abspath(root)
        self.url = url or self.root
        if not is_layout(self.root):
            if not create:
                raise NotARepository(f"{self.root} is not a cocker/OCI repository (no oci-layout)")
            self._init_layout()
        for sub in lp.PRIVATE_DIRS:
            os.makedirs(os.path.join(self.root, *sub.split("/")), mode=DIR_MODE, exist_ok=True)
        self.fs = LocalFs(self.root)
        self.refs = LayoutRefs(self.fs, self, self.lock)

    # layout --------------------------------------------------------------------------
    def _init_layout(self) -> None:
        try:
            os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
            for sub in lp.PRIVATE_DIRS:
                os.makedirs(os.path.join(self.root, *sub.split("/")), mode=DIR_MODE,
                            exist_ok=True)
            index = os.path.join(self.root, "index.json")
            if not os.path.exists(index):
                self.write_file(index, oci.canonical_json(
                    {"schemaVersion": 2, "mediaType": oci.INDEX, "manifests": []}))
            self.write_file(os.path.join(self.root, "oci-layout"),
                            json.dumps(LAYOUT_VERSION).encode())
        except OSError as e:
            raise disk_error(e, self.root) from e

    @contextlib.contextmanager
    def lock(self, shared: bool = False, timeout: float | None = None) -> Iterator[None]:
        """The repository lock: an flock among local processes, plus the `refs/.lock`
        directory that SFTP clients (which have no flock) take on the same repository."""
        with flock(os.path.join(self.root, ".lock"), shared=shared, timeout=timeout,
                   what=f"repository {self.url}"):
            if shared:
                yield
                return
            with dir_lock(os.path.join(self.root, "refs", LOCK_DIR_NAME), timeout,
                          what=f"repository {self.url}"):
                yield

    def write_file(self, path: str, data: bytes) -> None:
        """tmp -> fsync -> rename, readable by the owner only (the repository's one way to
        write a small file: refs, index.json, markers)."""
        atomic_write(path, data, FILE_MODE, dir_mode=DIR_MODE)

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.root, "blobs", "sha256", digestmod.hex_of(digest))

    def ref_path(self, name: str, version: str) -> str:
        refmod.validate_name(name)
        refmod.validate_version(version)
        return os.path.join(self.root, "refs", *name.split("/"), VERSION_PREFIX + version)

    @property
    def tmp_dir(self) -> str:
        return os.path.join(self.root, "tmp")

    # refs (registry.repo.layout_refs) ----------------------------------------------------
    def list_refs(self, name: str | None = None) -> list[RefRecord]:
        return self.refs.list_refs(name)

    def get_ref(self, name: str, version: str) -> str | None:
        return self.refs.get_ref(name, version)

    def put_ref(self, name: str, version: str, digest: str, expect: object = ANY) -> None:
        self.refs.put_ref(name, version, digest, expect)

    def delete_ref(self, name: str, version: str, expect: object = ANY) -> None:
        self.refs.delete_ref(name, version, expect)

    # blobs ---------------------------------------------------------------------------
    def blob_size(self, digest: str) -> int | None:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def open_blob(self, digest: str, offset: int = 0) -> BinaryIO:
        try:
            f = open(self.blob_path(digest), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise NotFound(f"blob {digest} not found in {self.describe()}") from None
        if offset:
            f.seek(offset)
        return f

    def upload(self, digest: str, size: int | None = None) -> BlobWriter:
        return _LayoutUpload(self, digestmod.validate(digest), size)

    def new_tmp_path(self, hint: str = "blob") -> str:
        return os.path.join(self.tmp_dir, f"{hint}.{os.getpid()}.{time.monotonic_ns()}")

    def ingest(self, tmp_path: str, digest: str) -> None:
        """Move a file already written (and digested) in tmp_dir into place as a blob."""
        dest = self.blob_path(digest)
        try:
            if os.path.exists(dest):        # already durable: no fsync of a copy we drop
                os.unlink(tmp_path)
                return
            with open(tmp_path, "rb+") as f:
                os.fchmod(f.fileno(), FILE_MODE)
                os.fsync(f.fileno())
            os.rename(tmp_path, dest)
            fsync_dir(os.path.dirname(dest))
        except OSError as e:
            raise disk_error(e, dest) from e

    def all_blobs(self) -> list[str]:
        d = os.path.join(self.root, "blobs", "sha256")
        return ["sha256:" + h for h in sorted(os.listdir(d)) if len(h) == 64]

    blob_digests = all_blobs

    # manifests beyond refs (registry.repo.manifests) --------------------------------------
    def put_manifest(self, name: str, data: bytes, media_type: str | None = None) -> str:
        return manifests.put(self, self.fs, self.lock, name, data, media_type)

    def referrers(self, subject: str, artifact_type: str | None = None) -> list[dict]:
        return manifests.referrers(self, self.fs, subject, artifact_type)

    # maintenance ---------------------------------------------------------------------
    def fsck(self, fix: bool = False) -> list[str]:
        """The interface's checks, and permissions (repaired first when `fix`)."""
        if fix:
            self.permission_problems(fix=True)
        return super().fsck() + self.permission_problems()

    def permission_problems(self, fix: bool = False) -> list[str]:
        """Files other users could read or change (wider than 0600; dirs wider than 0710);
        `fix` narrows them."""
        out = []
        for top in lp.CHECKED:
            for path, is_dir in _walk(os.path.join(self.root, *top.split("/"))):
                try:
                    mode = stat.S_IMODE(os.lstat(path).st_mode)
                except FileNotFoundError:
                    continue
                wide = mode & (0o067 if is_dir else 0o077)
                if not wide:
                    continue
                if fix:
                    os.chmod(path, mode & (0o710 if is_dir else 0o600))
                    out.append(f"{path}: mode {mode:04o} narrowed to "
                               f"{mode & (0o710 if is_dir else 0o600):04o}")
                else:
                    out.append(f"{path}: mode {mode:04o} lets other users in "
                               "(run fsck --fix)")
        return out

    def capabilities(self) -> frozenset[str]:
        return frozenset({RESUME, SERVER_GC, LEASES, MOUNT, REFERRERS})

    @contextlib.contextmanager
    def lease(self, digests: Iterable[str]) -> Iterator[BlobLease]:
        lease = BlobLease(self)
        try:
            lease.add(digests)
            yield lease
        finally:
            lease.release()

    def gc(self, grace: float = GC_GRACE, dry_run: bool = False,
           extra_roots: list[str] | None = None) -> tuple[int, int]:
        """The one gc (registry.repo.gc) plus stale partial uploads; blobs younger than
        `grace` seconds are spared, as are those a live push leases."""
        from registry.repo import gc as gcmod  # start-up time: see the module's docstring
        now = time.time()
        with self.lock():
            r = gcmod.collect(self, self.fs, grace=grace, dry_run=dry_run,
                              extra_roots=extra_roots or ())
            for p in self._stale_tmp(now, grace):
                if not dry_run:
                    with contextlib.suppress(OSError):
                        os.unlink(p)
        return r.removed, r.freed

    def _stale_tmp(self, now: float, grace: float) -> Iterator[str]:
        leases = self.fs.path(lp.LEASES)
        for dirpath, _, files in os.walk(self.tmp_dir):
            for fn in files:
                p = os.path.join(dirpath, fn)
                if dirpath == leases:
                    continue  # the collector judges leases
                try:
                    if now - os.stat(p).st_mtime < grace:
                        continue
                    fd = os.open(p, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an upload is writing it right now
                finally:
                    os.close(fd)
                yield p

def _walk(top: str) -> Iterator[tuple[str, bool]]:
    """(path, is a directory) for `top` and everything below it; no symlink is followed."""
    if not os.path.lexists(top):
        return
    if not os.path.isdir(top) or os.path.islink(top):
        yield top, False
        return
    yield top, True
    for dirpath, dirnames, files in os.walk(top):
        for d in dirnames:
            yield os.path.join(dirpath, d), True
        for f in files:
            yield os.path.join(dirpath, f), False


def dir_lock(lockdir: str, timeout: float | None, what: str):
    """mkdir-based lock with an owner record (`host pid time token`), the protocol SFTP
    clients use: a holder on this host whose pid is gone, or an owner record unchanged for
    STALE_LOCK seconds, is broken (rename first, so only one breaker wins)."""
    return _DirLock(lockdir, LOCK_TIMEOUT_DEFAULT if timeout is None else timeout, what)


def _hostname() -> str:
    """socket.gethostname() without importing socket (it is uname's nodename on Linux)."""
    return os.uname().nodename


class _DirLock:
    def __init__(self, lockdir: str, timeout: float, what: str) -> None:
        self.lockdir, self.timeout, self.what = lockdir, timeout, what
        # os.uname/os.urandom rather than socket/secrets: their imports cost every CLI start
        self.token = f"{_hostname()} {os.getpid()} {time.time():.3f} {os.urandom(8).hex()}"

    def _owner(self) -> str:
        try:
            with open(os.path.join(self.lockdir, "owner"), "rb") as f:
                return f.read(4096).decode(errors="replace")
        except OSError:
            return ""

    def _dead_local_holder(self, owner: str) -> bool:
        parts = owner.split()
        if len(parts) < 2 or parts[0] != _hostname() or not parts[1].isdigit():
            return False
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _break(self) -> None:
        moved = f"{self.lockdir}.broken.{os.urandom(6).hex()}"
        try:
            os.rename(self.lockdir, moved)
        except OSError:
            return
        import shutil
        shutil.rmtree(moved, ignore_errors=True)

    def __enter__(self) -> str:
        deadline = time.monotonic() + self.timeout
        seen: tuple[str, float] | None = None
        delay = 0.002
        while True:
            try:
                os.mkdir(self.lockdir)
                break
            except FileExistsError:
                pass
            owner = self._owner()
            now = time.monotonic()
            if seen is None or seen[0] != owner:
                seen = (owner, now)
            if self._dead_local_holder(owner) or now - seen[1] > STALE_LOCK:
                self._break()
                seen = None
                continue
            if now > deadline:
                raise LockBusy(f"{self.what} is locked by another client ({owner or 'unknown'}); "
                               "try again later")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        with open(os.path.join(self.lockdir, "owner"), "w") as f:
            f.write(self.token)
        return self.token

    def __exit__(self, *exc) -> None:
        if self._owner() == self.token:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.lockdir, "owner"))
                os.rmdir(self.lockdir)


class BlobLease:
    """A lease file under tmp/leases, flock'd for as long as this process holds it."""

    def __init__(self, repo: LayoutRepo) -> None:
        self.repo = repo
        self.rel = f"{lp.LEASES}/{os.getpid()}.{time.monotonic_ns()}.{os.urandom(4).hex()}"
        self.digests: list[str] = []
        self.fd = os.open(repo.fs.path(self.rel), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def add(self, digests: Iterable[str]) -> None:
        """Lease more blobs; under the repository lock, so no gc is half-way through."""
        new = [d for d in dict.fromkeys(digests) if d not in self.digests]
        if not new:
            return
        from registry.repo import gc as gcmod  # start-up time: see the module's docstring
        self.digests += new
        with self.repo.lock():
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, gcmod.lease_body(self.digests), 0)

    def release(self) -> None:
        if self.fd >= 0:
            self.repo.fs.remove(self.rel)
            os.close(self.fd)
            self.fd = -1


class _LayoutUpload(BlobWriter):
    """Writes into tmp/uploads/<hex>.partial under an flock, so a cut-off upload can resume
    and two writers of one blob never interleave."""

    def __init__(self, repo: LayoutRepo, digest: str, size: int | None) -> None:
        self.repo, self.digest, self.size = repo, digest, size
        self.dest = repo.blob_path(digest)
        self.partial = os.path.join(repo.tmp_dir, "uploads", digestmod.hex_of(digest) + ".partial")
        self._h = hashlib.sha256()
        self.done = False
        self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise Conflict(f"blob {digestmod.short(digest)} is being uploaded by another client")
                time.sleep(0.05)
        if os.path.exists(self.dest) or not os.path.exists(self.partial):
            # Someone finished it while we waited (or renamed the partial we opened).
            self.done = True
            self.offset = self.size if self.size is not None else (self.repo.blob_size(digest) or 0)
            return
        have = os.fstat(self.fd).st_size
        if size is not None and have > size:
            os.ftruncate(self.fd, 0)
            have = 0
        # Re-hash what a previous attempt left, so the final check covers every byte.
        os.lseek(self.fd, 0, os.SEEK_SET)
        left = have
        while left:
            chunk = os.read(self.fd, min(left, 1 << 20))
            if not chunk:
                break
            self._h.update(chunk)
            left -= len(chunk)
        self.offset = have - left
        os.lseek(self.fd, self.offset, os.SEEK_SET)
        self.count = self.offset
        self.started = self.offset  # bytes whose writeback was started

    def write(self, data: bytes) -> None:
        if self.done:
            return
        self._h.update(data)
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise CorruptImage(f"blob {digestmod.short(self.digest)} is larger than its stated size")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as e:
            raise disk_error(e, self.partial) from e
        if self.count - self.started >= EarlyWriteback.STEP:
            # Queue the disk writes as the blob arrives (the network is the slow part), so
            # the fsync in commit() waits for the last few MB, not the whole blob (0.8 s
            # for 500 MB here).
            with contextlib.suppress(OSError, AttributeError):
                start_writeback(self.fd, self.started, self.count - self.started)
            self.started = self.count

    def commit(self) -> None:
        if self.done:
            self._close()
            return
        got = "sha256:" + self._h.hexdigest()
        try:
            if got != self.digest or (self.size is not None and self.count != self.size):
                # Bad bytes must not survive to poison a resume.
                os.ftruncate(self.fd, 0)
                raise DigestMismatch(
                    f"blob {digestmod.short(self.digest)}: received content hashes to "
                    f"{digestmod.short(got)} ({self.count} bytes)")
            os.fsync(self.fd)
            os.rename(self.partial, self.dest)
            fsync_dir(os.path.dirname(self.dest))
            self.done = True
        except OSError as e:
            raise disk_error(e, self.dest) from e
        finally:
            self._close()

    def abort(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
