"""cocker 0.x SSH repos: flat `<name>[:<version>].cockerimage` files (a gzip tar of the
image's layer directory, paths relative to its root) in a remote directory, by default the
remote user's home. Listing, reading and writing them over SFTP, and turning one into an
OCI image in a local repository (the tar already is a valid tar+gzip layer, so it is kept
byte for byte as the layer blob; nothing is recompressed).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import gzip
import hashlib
import posixpath
import secrets
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, BinaryIO, cast

import paramiko

from common.errors import AlreadyExists, CockerError, NotFound, TransportError, UnsafeArchive
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import image as imagemod
from registry.transports.legacy import names
from registry.transports.ssh.sftp_repo import finish_pipelined, open_sftp

SUFFIX = names.SUFFIX
CHUNK = 1 << 20


@dataclass
class LegacyImage:
    raw_name: str       # as in the file name, e.g. "calvin=nginx-1.0"
    version: str        # "_" when the file has none
    size: int
    mtime: float
    filename: str

    @property
    def name(self) -> str:
        """The name in cocker's terms (`author=name` is `author/name`)."""
        return names.cocker_name(self.raw_name)

    def summary(self) -> dict:
        return {"name": self.name, "version": self.version, "legacy_name": self.raw_name,
                "file": self.filename, "size": self.size, "digest": None,
                "created": datetime.datetime.fromtimestamp(
                    self.mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


class LegacyRepo:
    def __init__(self, client: paramiko.SSHClient, directory: str = ".", *, url: str = "",
                 own_client: bool = True) -> None:
        self.client, self.dir, self.url, self.own_client = client, directory or ".", url, own_client
        try:
            self.sftp = open_sftp(client)
            st = self.sftp.stat(self.dir)
        except OSError as e:
            if getattr(e, "errno", None) == errno.ENOENT:
                raise NotFound(f"{url}: {self.dir} does not exist") from None
            raise TransportError(f"{url}: {e}") from None
        except (paramiko.SSHException, EOFError) as e:
            raise TransportError(f"{url}: cannot start SFTP ({e})") from None
        if not stat.S_ISDIR(st.st_mode or 0):
            raise NotFound(f"{url}: {self.dir} is not a directory")

    def describe(self) -> str:
        return self.url or f"legacy repo {self.dir}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        if self.own_client:
            with contextlib.suppress(Exception):
                self.client.close()

    def __enter__(self) -> LegacyRepo:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def list(self) -> list[LegacyImage]:
        try:
            entries = self.sftp.listdir_attr(self.dir)
        except (OSError, paramiko.SSHException) as e:
            raise TransportError(f"{self.describe()}: {e}") from None
        out = []
        for a in entries:
            parsed = names.parse_filename(a.filename)
            if parsed and stat.S_ISREG(a.st_mode or 0):
                out.append(LegacyImage(parsed[0], parsed[1], int(a.st_size or 0),
                                       float(a.st_mtime or 0), a.filename))
        out.sort(key=lambda i: (i.name, refmod.version_key(i.version), i.version))
        return out

    def find(self, name: str, version: str | None) -> LegacyImage:
        """By C cocker's name or cocker's; a missing version means the newest."""
        cands = [i for i in self.list() if name in (i.raw_name, i.name)
                 or names.cocker_name(name) == i.name]
        if version is not None:
            cands = [i for i in cands if i.version == version]
        if not cands:
            what = f"{name}:{version}" if version else name
            raise NotFound(f"{what} not found in {self.describe()}")
        newest = refmod.newest(i.version for i in cands)
        return next(i for i in cands if i.version == newest)

    def open(self, img: LegacyImage) -> BinaryIO:
        f = self.sftp.open(posixpath.join(self.dir, img.filename), "rb", bufsize=CHUNK)
        if img.size > 32768:
            f.prefetch(img.size, max_concurrent_requests=128)
        return cast(BinaryIO, f)  # an SFTPFile: read/seek/close

    def upload(self, name: str, version: str, src: BinaryIO, *, force: bool = False,
               progress: Callable[[int], None] | None = None) -> str:
        """Write cocker's `name:version` as C cocker's `<author=name>:<version>.cockerimage`
        (tmp -> rename); refuses to replace unless `force` (as cocker's spush did)."""
        fn = names.filename(name, version)
        dest = posixpath.join(self.dir, fn)
        try:
            self.sftp.stat(dest)
            if not force:
                raise AlreadyExists(f"{fn} already exists in {self.describe()}; use --force")
        except OSError:
            pass
        tmp = posixpath.join(self.dir, f".{fn}.{secrets.token_hex(6)}.partial")
        written = 0
        try:
            with self.sftp.open(tmp, "wb", bufsize=CHUNK) as f:
                f.set_pipelined(True)
                while chunk := src.read(CHUNK):
                    f.write(chunk)
                    written += len(chunk)
                    if progress:
                        progress(len(chunk))
                finish_pipelined(f)
            if int(self.sftp.stat(tmp).st_size or 0) != written:
                raise CockerError(f"{self.describe()}: the remote kept a short {fn}; "
                                  "is its disk full?")
            self.sftp.posix_rename(tmp, dest)
        except CockerError:
            with contextlib.suppress(Exception):
                self.sftp.remove(tmp)
            raise
        except (OSError, paramiko.SSHException, EOFError) as e:
            with contextlib.suppress(Exception):
                self.sftp.remove(tmp)
            raise TransportError(f"{self.describe()}: upload of {fn} failed ({e})") from None
        return fn


# import into an OCI repository -----------------------------------------------------------
class _Hashing:
    def __init__(self, f: BinaryIO | gzip.GzipFile) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        d = self.f.read(n)
        self.h.update(d)
        self.n += len(d)
        return d


@dataclass
class LayerScan:
    diff_id: str
    devices: list[str]     # device nodes: C cocker's image scripts put /dev in the image


def scan_layer_tar(path: str) -> LayerScan:
    """diff_id and device nodes of a gzip tar, after a streaming look at every member: no
    absolute paths, no `..` (the runtime's unpack checks again, component by component)."""
    devices = []
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
            hr = _Hashing(gz)
            with tarfile.open(fileobj=cast(IO[bytes], hr), mode="r|") as tf:
                for m in tf:
                    name = m.name
                    parts = [p for p in name.split("/") if p not in ("", ".")]
                    if name.startswith("/") or ".." in parts:
                        raise UnsafeArchive(f"cockerimage member {name!r} escapes the root")
                    if m.isblk() or (m.ischr() and (m.devmajor, m.devminor) != (0, 0)):
                        devices.append("/".join(parts))
            while hr.read(CHUNK):
                pass
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UnsafeArchive(f"not a valid cockerimage (gzip tar): {e}") from None
    return LayerScan("sha256:" + hr.h.hexdigest(), devices)


def check_layer_tar(path: str) -> str:
    """diff_id of a gzip tar that can be kept byte for byte as a layer: no escapes, no devices."""
    scan = scan_layer_tar(path)
    if scan.devices:
        raise UnsafeArchive(f"cockerimage member {scan.devices[0]!r} is a device")
    return scan.diff_id


def import_file(repo, path: str, name: str, version: str, *, created: float | None = None,
                force: bool = False, diff_id: str | None = None):
    """Make `name:version` in `repo` (a LayoutRepo) from a downloaded .cockerimage without
    devices (`diff_id`: from a scan already made)."""
    diff_id = diff_id or check_layer_tar(path)
    layer_digest, size = digestmod.of_file(path)
    repo.ingest(path, layer_digest)
    when = datetime.datetime.fromtimestamp(created or 0, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ") if created else None
    config = oci.new_config([diff_id], created=when, history=[
        {"created": when, "created_by": "cocker 0.x image (imported from a .cockerimage)"}
        if when else {"created_by": "cocker 0.x image (imported from a .cockerimage)"}])
    layer = oci.descriptor(oci.LAYER_GZIP, layer_digest, size)
    return imagemod.publish(repo, name, version, config, [layer], force=force)
