"""What a SOURCE given to `cocker image import` is, and read-only access to image archives.

Formats:
    rootfs-dir      a directory holding a root filesystem
    rootfs-tar      a tarball of a root filesystem (plain, gzip or zstd)
    cockerimage     cocker's legacy `name[:version].cockerimage` (gzip tar of the layer dir)
    oci-dir         an OCI image layout directory (oci-layout, index.json, blobs/)
    oci-tar         the same in a tar (skopeo's oci-archive)
    docker-archive  a `docker save` tar (manifest.json + layer tars)
    docker-dir      an extracted `docker save` directory
    skopeo-dir      skopeo's `dir:` transport (manifest.json, version, blobs named by hex)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from common.errors import CorruptImage, NotFound, UnsafeArchive
from registry.layer import tar_codec as layer_tar
from registry.transports.legacy import names as legacy_names

ROOTFS_DIR = "rootfs-dir"
ROOTFS_TAR = "rootfs-tar"
COCKERIMAGE = "cockerimage"
OCI_DIR = "oci-dir"
OCI_TAR = "oci-tar"
DOCKER_ARCHIVE = "docker-archive"
DOCKER_DIR = "docker-dir"
SKOPEO_DIR = "skopeo-dir"
FORMATS = (ROOTFS_DIR, ROOTFS_TAR, COCKERIMAGE, OCI_DIR, OCI_TAR, DOCKER_ARCHIVE, DOCKER_DIR,
           SKOPEO_DIR)
SKOPEO_VERSION_MAGIC = b"Directory Transport Version:"

COCKERIMAGE_SUFFIX = legacy_names.SUFFIX

# Every name an OCI or docker-save archive holds; anything else means a root filesystem.
_HEX = r"[0-9a-f]{64}"
_ARCHIVE_NAME = re.compile(
    rf"^(oci-layout|index\.json|manifest\.json|repositories|{_HEX}\.json|{_HEX}\.tar|"
    rf"{_HEX}|{_HEX}/(layer\.tar|json|VERSION)|blobs|blobs/sha256|blobs/sha256/{_HEX})$")


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _listing(f: BinaryIO) -> tarfile.TarFile:
    """The archive's members in order: a plain tar seeks past file bodies, a compressed
    one is streamed."""
    if layer_tar.detect_compression(f.read(4)) == "none":
        f.seek(0)
        return tarfile.open(fileobj=f, mode="r:")
    f.seek(0)
    return tarfile.open(fileobj=layer_tar.open_bounded(f), mode="r|", bufsize=layer_tar.CHUNK)


def _is_skopeo_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, "version"), "rb") as f:
            magic = f.read(len(SKOPEO_VERSION_MAGIC))
    except OSError:
        return False
    return magic == SKOPEO_VERSION_MAGIC and os.path.isfile(os.path.join(path, "manifest.json"))


def _compression_of(path: str) -> str:
    with open(path, "rb") as f:
        return layer_tar.detect_compression(f.read(4))


def detect(path: str) -> str:
    """The format of `path` (see the module docstring); NotFound/CorruptImage otherwise."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "oci-layout")):
            return OCI_DIR
        if _is_skopeo_dir(path):
            return SKOPEO_DIR
        if os.path.isfile(os.path.join(path, "manifest.json")) and not os.path.isdir(
                os.path.join(path, "etc")):
            return DOCKER_DIR
        return ROOTFS_DIR
    if not os.path.exists(path):
        raise NotFound(f"{path}: no such file or directory")
    if not os.path.isfile(path):
        raise CorruptImage(f"{path}: not a regular file or directory")
    if path.endswith(COCKERIMAGE_SUFFIX):
        return COCKERIMAGE
    names: set[str] = set()
    try:
        with open(path, "rb") as f, _listing(f) as tf:
            for ti in tf:
                n = _norm(ti.name)
                if not n:
                    continue
                if not _ARCHIVE_NAME.match(n):
                    return ROOTFS_TAR
                names.add(n)
    except tarfile.TarError as e:
        raise CorruptImage(f"{path}: not a tar archive ({e})") from None
    except layer_tar.DECOMPRESS_ERRORS as e:
        raise CorruptImage(f"{path}: does not decompress ({e})") from None
    if "oci-layout" in names or "index.json" in names:
        return OCI_TAR
    if "manifest.json" in names:
        return DOCKER_ARCHIVE
    if not names:
        raise CorruptImage(f"{path}: empty archive")
    return ROOTFS_TAR


def name_from_cockerimage(path: str) -> str | None:
    """`name[:version].cockerimage` -> `name:version` (no version: cocker's `_`), None when
    the file is not named that way. C cocker's `author=name` becomes `author/name`."""
    parsed = legacy_names.parse_filename(os.path.basename(path))
    return None if parsed is None else f"{legacy_names.cocker_name(parsed[0])}:{parsed[1]}"


class ArchiveFiles:
    """Read-only files of an image archive, whether a directory or a tar."""

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> BinaryIO:
        raise NotImplementedError

    def read(self, name: str, limit: int = 16 << 20) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise CorruptImage(f"{name} in the archive is larger than {limit} bytes")
        return data

    def close(self) -> None:
        pass


def _check_member(name: str) -> str:
    n = _norm(name)
    if not n or n.startswith("/") or ".." in n.split("/"):
        raise UnsafeArchive(f"archive member {name!r} refused")
    return n


class DirFiles(ArchiveFiles):
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, _check_member(name))

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def open(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise CorruptImage(f"{name} is missing from {self.root}") from None
        except IsADirectoryError:
            raise CorruptImage(f"{name} in {self.root} is a directory") from None


class TarFiles(ArchiveFiles):
    """Random access into an uncompressed tar (a compressed one is first expanded into
    `scratch_dir`, because blobs must be read out of order)."""

    def __init__(self, path: str, scratch_dir: str) -> None:
        self.tmp: str | None = None
        if _compression_of(path) != "none":
            self.tmp = os.path.join(scratch_dir, f"archive.{os.getpid()}.{id(self)}.tar")
            try:
                with open(path, "rb") as src, open(self.tmp, "wb") as dst:
                    shutil.copyfileobj(layer_tar.open_bounded(src, scratch_dir), dst,
                                       layer_tar.CHUNK)
            except layer_tar.DECOMPRESS_ERRORS as e:
                self.close()
                raise CorruptImage(f"{path}: does not decompress ({e})") from None
            except BaseException:
                self.close()  # a refused (or interrupted) expansion leaves no scratch file
                raise
            path = self.tmp
        try:
            self.tf = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close())
            self.members = {}
            for ti in self.tf:
                n = _norm(ti.name)
                if n:
                    self.members[n] = ti
            # extractfile resolves links through this list: normalised names, one per path
            self.tf.members = list(self.members.values())  # type: ignore[attr-defined]
        except tarfile.TarError as e:
            self.close()
            raise CorruptImage(f"{path}: not a tar archive ({e})") from None

    def _member(self, name: str) -> tarfile.TarInfo:
        ti = self.members.get(_check_member(name))
        if ti is None or not (ti.isreg() or ti.issym() or ti.islnk()):
            raise CorruptImage(f"{name} is missing from the archive")
        return ti

    def exists(self, name: str) -> bool:
        try:
            self._member(name)
            return True
        except CorruptImage:
            return False

    def open(self, name: str) -> BinaryIO:
        try:
            f = self.tf.extractfile(self._member(name))
        except (KeyError, tarfile.TarError) as e:
            raise CorruptImage(f"{name} in the archive cannot be read: {e}") from None
        if f is None:
            raise CorruptImage(f"{name} in the archive is not a file")
        return f  # type: ignore[return-value]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.tf.close()
        if self.tmp:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None


@contextlib.contextmanager
def open_archive(path: str, fmt: str, scratch_dir: str) -> Iterator[ArchiveFiles]:
    files: ArchiveFiles = DirFiles(path) if fmt in (OCI_DIR, DOCKER_DIR, SKOPEO_DIR) else TarFiles(
        path, scratch_dir)
    try:
        yield files
    finally:
        files.close()
