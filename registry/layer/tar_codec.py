"""THE layer codec: pack a directory tree into a reproducible OCI layer, unpack one safely.

Pack writes a tar by hand from `tarfile.TarInfo.tobuf` headers (sorted walk, numeric
owners, clamped mtimes, PAX xattrs, hardlinks, overlay whiteouts mapped to `.wh.` files),
compresses it (zstd by default, multi-threaded) and hashes the uncompressed stream
(diff_id) and the compressed one (digest) in the same single pass.

Unpack never trusts the tar: `tarfile` only parses headers; every path is resolved one
component at a time from a directory fd with O_NOFOLLOW, so nothing can be written
through a symlink or outside the destination, and the amount of data is capped.
"""

from __future__ import annotations

import collections
import errno
import gzip
import hashlib
import io
import os
import queue
import shutil
import stat
import tarfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, cast

import zstandard

from common.errors import CockerError, CorruptImage, UnsafeArchive
from common.fsutil import EarlyWriteback, disk_error
from registry.layer.limits import LayerLimits, shorten, too_big
from registry.oci import manifest as oci

CHUNK = 1 << 20
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
# The largest uid/gid a Linux inode holds; (uid_t)-1 means "unchanged" to chown.
MAX_ID = (1 << 32) - 2
MAX_META_HEADER = 1 << 20  # PAX / GNU long-name headers are read into memory: keep them small

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# Host-specific labels or overlay's own bookkeeping: never part of a layer.
_SKIP_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.selinux", "security.ima",
                        "security.evm", "system.nfs4_acl")
_XATTR_PAX = "SCHILY.xattr."
_LIBARCHIVE_XATTR = "LIBARCHIVE.xattr."

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class PackedLayer:
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int
    media_type: str
    skipped_devices: int = 0  # device nodes left out under `skip_devices`

    def descriptor(self) -> dict:
        return oci.descriptor(self.media_type, self.digest, self.size)


# ---------------------------------------------------------------------------------------
# Compression and the one-pass double hash
# ---------------------------------------------------------------------------------------

class _HashingWriter:
    """Counts and hashes the compressed bytes on their way to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.h = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        self.h.update(data)
        n = len(data)
        self.size += n
        self.out.write(data)
        return n

    def flush(self) -> None:
        pass


class _Worker:
    """Applies `fn` to every chunk on a thread of its own, so reading files, hashing the
    tar and compressing it overlap (hashlib and zstd release the GIL while they work)."""

    def __init__(self, fn: Any, depth: int = 8) -> None:
        self.fn = fn
        self.q: queue.Queue = queue.Queue(depth)
        self.err: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while True:
            chunk = self.q.get()
            if chunk is None:
                return
            if self.err is None:
                try:
                    self.fn(chunk)
                except BaseException as e:  # noqa: BLE001 (handed to the producer at its next put/close)
                    self.err = e

    def put(self, chunk: Any) -> None:
        if self.err is not None:
            raise self.err
        self.q.put(chunk)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.err is not None:
            raise self.err


class _LayerWriter:
    """Takes the uncompressed tar stream: hashes it (diff_id), compresses it, and the
    compressed bytes are hashed (digest) as they are written. One pass, no re-reading;
    hashing and compressing each run on their own thread.

    Chunks given to write() must not be modified afterwards (they are queued)."""

    def __init__(self, out: BinaryIO, compression: str, level: int | None = None) -> None:
        if compression not in oci.LAYER_TYPE_FOR:
            raise CockerError(f"unknown compression {compression!r}: use zstd, gzip or none")
        self.compression = compression
        self.sink = _HashingWriter(out)
        self.h = hashlib.sha256()
        self.size = 0
        self._zobj = None
        self._zw = None
        if compression == "zstd":
            c = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, threads=zstd_threads())
            # the sink only needs write(): a hashing file-like, not a real IO
            self._zw = c.stream_writer(cast(IO[bytes], self.sink), closefd=False, write_size=CHUNK)
        elif compression == "gzip":
            # wbits=31: gzip wrapper with mtime 0 and no file name, so it is reproducible.
            self._zobj = zlib.compressobj(level or GZIP_LEVEL, zlib.DEFLATED, 31)
        self._hasher = _Worker(self.h.update)
        self._compressor = _Worker(self._compress)
        self._closed = False

    def _compress(self, data: Any) -> None:
        if self._zw is not None:
            self._zw.write(data)
        elif self._zobj is not None:
            out = self._zobj.compress(data)
            if out:
                self.sink.write(out)
        else:
            self.sink.write(data)

    def write(self, data: Any) -> None:
        self.size += len(data)
        self._hasher.put(data)
        self._compressor.put(data)

    def _close_workers(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._hasher.close()
            finally:
                self._compressor.close()

    def abort(self) -> None:
        try:
            self._close_workers()
        except BaseException:  # noqa: BLE001 (abort runs on an error path: that error is the one reported)
            pass

    def finish(self) -> PackedLayer:
        self._close_workers()
        if self._zw is not None:
            self._zw.flush(zstandard.FLUSH_FRAME)
        elif self._zobj is not None:
            self.sink.write(self._zobj.flush())
        diff_id = "sha256:" + self.h.hexdigest()
        return PackedLayer("sha256:" + self.sink.h.hexdigest(), diff_id, self.sink.size,
                           self.size, oci.LAYER_TYPE_FOR[self.compression])


def zstd_threads() -> int:
    """zstd workers: twice the CPUs (capped), so compression keeps pace with our reader and
    hashers. Any count >= 1 gives the same bytes (zstd's multi-threaded format does not
    depend on the worker count), so digests do not depend on the machine."""
    return min(max(2, 2 * (os.cpu_count() or 1)), 16)


def detect_compression(head: bytes) -> str:
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "none"


class _Prefixed(io.RawIOBase):
    """A stream with a few already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self.head = head
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(b))
        n = len(data)
        b[:n] = data
        return n


def _read_exact_head(stream: BinaryIO, n: int) -> bytes:
    head = b""
    while len(head) < n:
        chunk = stream.read(n - len(head))
        if not chunk:
            break
        head += chunk
    return head


def sniff(stream: BinaryIO) -> tuple[str, BinaryIO]:
    """The compression of `stream` by its magic bytes, and a reader that still yields the
    stream from its first byte (the sniffed bytes are not lost on a pipe)."""
    head = _read_exact_head(stream, 4)
    return detect_compression(head), io.BufferedReader(_Prefixed(head, stream), CHUNK)


def open_layer(stream: BinaryIO) -> BinaryIO:
    """A reader of the uncompressed tar behind `stream` (gzip, zstd or plain, by magic)."""
    head = _read_exact_head(stream, 4)
    raw = io.BufferedReader(_Prefixed(head, stream), CHUNK)
    kind = detect_compression(head)
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True, closefd=False)
    if kind == "gzip":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))
    return raw


DECOMPRESS_ERRORS = (zstandard.ZstdError, zlib.error, EOFError, gzip.BadGzipFile)


class _Counted:
    """Counts the (compressed) bytes read through it, for the compression-ratio guard."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.n = 0

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.n += len(data)
        return data


class _Bounded(io.RawIOBase):
    """The uncompressed bytes behind a (possibly compressed) stream, refused past the
    limits' ratio, and past `budget` bytes when one is given."""

    def __init__(self, stream: BinaryIO, limits: LayerLimits, budget: tuple[int, str] | None
                 ) -> None:
        self.counted = _Counted(stream)
        self.raw = open_layer(self.counted)  # type: ignore[arg-type]
        self.limits, self.budget = limits, budget
        self.n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self.raw.read(len(b))
        except DECOMPRESS_ERRORS as e:
            raise CorruptImage(f"does not decompress: {e}") from None
        self.n += len(data)
        self.limits.check_ratio(self.n, self.counted.n)
        if self.budget is not None and self.n > self.budget[0]:
            raise too_big("expands", *self.budget)
        b[:len(data)] = data
        return len(data)


def open_bounded(stream: BinaryIO, dest: str | None = None,
                 limits: LayerLimits | None = None) -> BinaryIO:
    """Like open_layer, for data that is not unpacked by this codec but read or copied
    elsewhere (archives, listings): the compression-ratio guard applies, and with `dest`
    the free space of its filesystem (minus the reserve) bounds the bytes."""
    lim = limits or LayerLimits.from_env()
    budget = lim.byte_budget(dest) if dest is not None else None
    return io.BufferedReader(_Bounded(stream, lim, budget), CHUNK)


def layer_diff_id(stream: BinaryIO, limits: LayerLimits | None = None) -> tuple[str, int]:
    """diff_id and uncompressed size of a (possibly compressed) layer stream; a stream
    that expands past the limits' ratio is refused before it is read to the end."""
    lim = limits or LayerLimits.from_env()
    h = hashlib.sha256()
    n = 0
    counted = _Counted(stream)
    try:
        r = open_layer(counted)  # type: ignore[arg-type]
        while chunk := r.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
            lim.check_ratio(n, counted.n)
    except DECOMPRESS_ERRORS as e:
        raise CorruptImage(f"layer does not decompress: {e}") from None
    return "sha256:" + h.hexdigest(), n


def pack_tar_stream(stream: BinaryIO, out: BinaryIO, *, compression: str = "zstd",
                    level: int | None = None, progress: Any = None) -> PackedLayer:
    """(Re)compress an existing tar stream (compressed or not) into `out`, both digests
    in one pass. The tar bytes are kept exactly, so the diff_id is the source's."""
    w = _LayerWriter(out, compression, level)
    try:
        r = open_layer(stream)
        while chunk := r.read(CHUNK):
            w.write(chunk)
            if progress is not None:
                progress.update(len(chunk))
        return w.finish()
    except DECOMPRESS_ERRORS as e:
        raise CorruptImage(f"layer does not decompress: {e}") from None
    finally:
        w.abort()


# ---------------------------------------------------------------------------------------
# Pack
# ---------------------------------------------------------------------------------------

def _xattrs(path: str, is_link: bool) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=not is_link)
    except OSError:
        return {}
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=not is_link)
        except OSError:
            continue
    return out


def _portable_xattrs(xattrs: dict[str, bytes]) -> dict[str, str]:
    return {_XATTR_PAX + k: v.decode("utf-8", "surrogateescape")
            for k, v in sorted(xattrs.items()) if not k.startswith(_SKIP_XATTR_PREFIXES)}


def _is_opaque(xattrs: dict[str, bytes]) -> bool:
    return any(xattrs.get(k) == b"y" for k in OVERLAY_OPAQUE_XATTRS)


def _walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(archive name, full path, lstat) in a stable order: each directory, then its
    children sorted by their bytes."""
    stack = [("", root)]
    while stack:
        rel, full = stack.pop()
        try:
            names = os.listdir(full)
        except FileNotFoundError:
            continue
        names.sort(key=os.fsencode)
        subdirs = []
        for n in names:
            p = os.path.join(full, n)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue  # vanished while we walked
            r = rel + n
            yield r, p, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((r + "/", p))
        stack.extend(reversed(subdirs))


_NUL8 = bytes(8)
_USTAR_MAGIC = tarfile.POSIX_MAGIC


def _fast_header(ti: tarfile.TarInfo) -> bytes | None:
    """The ustar header tarfile would write for a plain entry (ASCII names up to 100
    bytes, no PAX records, small numbers), built directly: tobuf costs ~10x more and
    most entries of a rootfs are plain. None when tobuf must do it."""
    name = ti.name + "/" if ti.type == tarfile.DIRTYPE and not ti.name.endswith("/") else ti.name
    if (ti.pax_headers or len(name) > 100 or len(ti.linkname) > 100 or not name.isascii()
            or not ti.linkname.isascii() or not 0 <= ti.uid < 0o7777777
            or not 0 <= ti.gid < 0o7777777 or not 0 <= ti.size < 0o77777777777
            or not 0 <= ti.mtime < 0o77777777777 or ti.uname or ti.gname):
        return None
    dev = ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE)
    if dev and not (0 <= ti.devmajor < 0o7777777 and 0 <= ti.devminor < 0o7777777):
        return None
    buf = b"".join((
        name.encode().ljust(100, b"\0"),
        b"%07o\0" % (ti.mode & 0o7777), b"%07o\0" % ti.uid, b"%07o\0" % ti.gid,
        b"%011o\0" % ti.size, b"%011o\0" % int(ti.mtime),
        b"        ", ti.type, ti.linkname.encode().ljust(100, b"\0"), _USTAR_MAGIC,
        bytes(64),
        b"%07o\0" % ti.devmajor if dev else _NUL8, b"%07o\0" % ti.devminor if dev else _NUL8,
        bytes(167),
    ))
    return buf[:148] + b"%06o\0" % sum(buf) + buf[155:]


class _TarEmitter:
    """Headers and bodies into a _LayerWriter, batched so small files cost few calls."""

    def __init__(self, w: _LayerWriter, progress: Any) -> None:
        self.w = w
        self.buf = bytearray()
        self.progress = progress
        self.pos = 0

    def _flush(self) -> None:
        if self.buf:
            self.w.write(self.buf)  # handed over: the writer's threads own it now
            self.buf = bytearray()

    def header(self, ti: tarfile.TarInfo) -> None:
        b = _fast_header(ti) or ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.buf += b
        self.pos += len(b)
        if len(self.buf) >= CHUNK:
            self._flush()

    def body(self, path: str, size: int) -> None:
        """Exactly `size` bytes of the file (zero-padded/truncated if it changed under us)."""
        left = size
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = -1
        try:
            if fd >= 0 and size < (CHUNK >> 2):
                data = os.read(fd, size) if size else b""
                self.buf += data
                left -= len(data)
                if self.progress is not None and data:
                    self.progress.update(len(data))
            elif fd >= 0:
                self._flush()
                while left > 0:
                    data = os.read(fd, min(CHUNK, left))
                    if not data:
                        break
                    self.w.write(data)
                    left -= len(data)
                    if self.progress is not None:
                        self.progress.update(len(data))
        finally:
            if fd >= 0:
                os.close(fd)
        if left:
            self.buf += bytes(left)
        pad = (-size) % tarfile.BLOCKSIZE
        self.buf += bytes(pad)
        self.pos += size + pad
        if len(self.buf) >= CHUNK:
            self._flush()

    def close(self) -> None:
        # Two zero blocks end the archive; then pad to a full record like tar(1) does.
        end = bytes(2 * tarfile.BLOCKSIZE)
        self.pos += len(end)
        end += bytes((-self.pos) % tarfile.RECORDSIZE)
        self.buf += end
        self._flush()


def _tarinfo(name: str, st: os.stat_result, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    return ti


def pack_dir(src: str, out: BinaryIO, *, compression: str = "zstd",
             source_date_epoch: int | None = None, overlay_upper: bool = False,
             progress: Any = None, level: int | None = None,
             skip_devices: bool = False) -> PackedLayer:
    """Write the tree under `src` as one reproducible layer to `out`.

    `source_date_epoch` (default: $SOURCE_DATE_EPOCH if set) clamps every mtime.
    `overlay_upper`: `src` is an overlay upper dir; its whiteouts (char 0/0) become
    `.wh.NAME` files and opaque directories get a `.wh..wh..opq` entry.
    `progress`: a registry.repo.progress.Progress, or anything with update(nbytes).
    `skip_devices`: leave device nodes out (a host rootfs's /dev: unpack refuses them and
    the runtime provides /dev); otherwise they are packed as they are.
    """
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    if not os.path.isdir(src):
        raise CockerError(f"{src} is not a directory")
    bar = None
    if progress is not None and hasattr(progress, "bar"):
        total = sum(st.st_size for _, _, st in _walk(src) if stat.S_ISREG(st.st_mode))
        bar = progress.bar("pack " + os.path.basename(os.path.normpath(src)), total)
    elif progress is not None:
        bar = progress
    w = _LayerWriter(out, compression, level)
    em = _TarEmitter(w, bar)
    links: dict[tuple[int, int], str] = {}
    skipped = 0

    def clamp(t: float) -> int:
        t = max(0, int(t))
        return min(t, source_date_epoch) if source_date_epoch is not None else t

    try:
        for name, path, st in _walk(src):
            mode = st.st_mode
            mtime = clamp(st.st_mtime)
            base = name.rsplit("/", 1)[-1]
            parent = name[: len(name) - len(base)]
            if stat.S_ISCHR(mode) and st.st_rdev == 0 and overlay_upper:
                wh = _tarinfo(parent + WHITEOUT_PREFIX + base, st, mtime)
                wh.mode = 0
                em.header(wh)
                continue
            if stat.S_ISSOCK(mode):
                continue  # tar has no sockets; a listening socket is not image content
            is_link = stat.S_ISLNK(mode)
            xattrs = _xattrs(path, is_link)
            ti = _tarinfo(name, st, mtime)
            ti.pax_headers = _portable_xattrs(xattrs)
            if stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
                em.header(ti)
                if overlay_upper and _is_opaque(xattrs):
                    opq = _tarinfo(name + "/" + OPAQUE, st, mtime)
                    opq.mode = 0
                    em.header(opq)
            elif stat.S_ISREG(mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = links[key]
                    em.header(ti)
                    continue
                if st.st_nlink > 1:
                    links[key] = name
                ti.size = st.st_size
                em.header(ti)
                em.body(path, st.st_size)
            elif is_link:
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(path)
                em.header(ti)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                if skip_devices:
                    skipped += 1
                    continue
                ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                em.header(ti)
            elif stat.S_ISFIFO(mode):
                ti.type = tarfile.FIFOTYPE
                em.header(ti)
        em.close()
        packed = w.finish()
        packed.skipped_devices = skipped
        return packed
    except OSError as e:
        raise disk_error(e, e.filename or src) from e
    finally:
        w.abort()
        if bar is not None and hasattr(progress, "bar"):
            bar.close()


def pack_into(repo: Any, src: str, **kw: Any) -> PackedLayer:
    """Pack `src` into a blob of `repo` (a LayoutRepo): written in repo.tmp_dir, then ingested."""
    tmp = repo.new_tmp_path("pack")
    try:
        with open(tmp, "wb", buffering=0) as raw:
            out = EarlyWriteback(raw)
            layer = pack_dir(src, cast(BinaryIO, out), **kw)
            out.flush()
        repo.ingest(tmp, layer.digest)
        return layer
    except OSError as e:
        raise disk_error(e, tmp) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------
# Unpack
# ---------------------------------------------------------------------------------------

class _SafeTarInfo(tarfile.TarInfo):
    """Refuses oversized metadata headers before tarfile reads them into memory."""

    # tarfile's private header hooks (not in its type stubs): the one place to bound a
    # metadata header before tarfile reads it whole.
    def _proc_pax(self, tf):
        self._check_meta()
        return super()._proc_pax(tf)  # type: ignore[misc]

    def _proc_gnulong(self, tf):
        self._check_meta()
        return super()._proc_gnulong(tf)  # type: ignore[misc]

    def _check_meta(self) -> None:
        if self.size > MAX_META_HEADER:
            raise UnsafeArchive(f"tar metadata header of {self.size} bytes refused "
                                f"(limit {MAX_META_HEADER})")


class _CappedReader(io.RawIOBase):
    """The uncompressed stream as tarfile's seekable reader: hashes every byte (the
    diff_id), stops past `limit` bytes, and "seeks" only forwards (by reading), which is
    all sequential extraction needs. Lets tarfile read bodies without its stream-mode
    copying."""

    def __init__(self, src: BinaryIO, limit: int, why: str, limits: LayerLimits,
                 compressed: _Counted) -> None:
        self.src = src
        self.limit = limit
        self.why = why
        self.limits = limits
        self.compressed = compressed
        self.h = hashlib.sha256()
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.pos
        elif whence != 0:
            raise io.UnsupportedOperation("layer streams only seek forwards")
        if offset < self.pos:
            raise CorruptImage("layer is not a sequential tar (needs a backward seek)")
        while self.pos < offset:
            if not self.read(min(CHUNK, offset - self.pos)):
                break
        return self.pos

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            n = CHUNK
        parts = []
        got = 0
        while got < n:  # tarfile treats a short read as the end of the data
            try:
                data = self.src.read(n - got)
            except DECOMPRESS_ERRORS as e:
                raise CorruptImage(f"layer does not decompress: {e}") from None
            if not data:
                break
            parts.append(data)
            got += len(data)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        if self.pos > self.limit:
            raise too_big("layer expands", self.limit, self.why)
        self.limits.check_ratio(self.pos, self.compressed.n)
        self.h.update(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _split(name: str, what: str = "entry", limits: LayerLimits | None = None) -> list[str]:
    """Components of an archive path; refuses absolute paths, '..', NULs and (given
    `limits`) paths too deep or too long."""
    if "\0" in name:
        raise UnsafeArchive(f"{what} {shorten(name)}: NUL in path")
    if name.startswith("/"):
        raise UnsafeArchive(f"{what} {shorten(name)}: absolute path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{what} {shorten(name)}: '..' in path refused")
    if limits is not None:
        limits.check_path(parts, name)
    return parts


def _check_ids(ti: tarfile.TarInfo) -> None:
    for what, v in (("uid", ti.uid), ("gid", ti.gid)):
        if not isinstance(v, int) or not 0 <= v <= MAX_ID:
            raise UnsafeArchive(f"entry {shorten(ti.name)}: {what} {v} is out of range "
                                f"(0..{MAX_ID})")


def _xattrs_of(ti: tarfile.TarInfo) -> dict[str, bytes]:
    out = {}
    for k, v in ti.pax_headers.items():
        if k.startswith(_XATTR_PAX):
            out[k[len(_XATTR_PAX):]] = v.encode("utf-8", "surrogateescape")
        elif k.startswith(_LIBARCHIVE_XATTR):
            import base64
            import urllib.parse
            try:
                out[urllib.parse.unquote(k[len(_LIBARCHIVE_XATTR):])] = base64.b64decode(v)
            except ValueError:
                continue
    # Overlay's own xattrs could redirect or hide lower layers: only whiteouts may do that.
    return {k: v for k, v in out.items() if not k.startswith(("trusted.overlay.", "user.overlay."))}


_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Unpacker:
    def __init__(self, dest: str, whiteouts: str, allow_devices: bool,
                 skip_devices: bool = False, limits: LayerLimits | None = None) -> None:
        if whiteouts not in ("overlay", "apply"):
            raise CockerError(f"unknown whiteout mode {whiteouts!r}")
        self.whiteouts = whiteouts
        self.limits = limits or LayerLimits.from_env()
        self.skipped_devices = 0
        self.allow_devices = allow_devices
        self.skip_devices = skip_devices
        os.makedirs(dest, exist_ok=True)
        self.root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.written: set[tuple[str, ...]] = set()
        self.root_owner = os.geteuid() == 0
        self.buf = bytearray(CHUNK)

    def close(self) -> None:
        self._clear_cache()
        os.close(self.root)

    def _clear_cache(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()

    # path resolution ----------------------------------------------------------------
    def _dir(self, comps: tuple[str, ...], entry: str, create: bool = True) -> int:
        """fd of directory `comps` under the root, never following a symlink; missing
        parents are created (root-owned, 0755) when `create`. A loop from the deepest
        cached ancestor, not a recursion: paths may be thousands of components deep."""
        if not comps:
            return self.root
        fd = self.cache.get(comps)
        if fd is not None:
            self.cache.move_to_end(comps)
            return fd
        known = len(comps) - 1
        while known and comps[:known] not in self.cache:
            known -= 1
        parent = self.root
        if known:
            parent = self.cache[comps[:known]]
            self.cache.move_to_end(comps[:known])
        for depth in range(known + 1, len(comps) + 1):
            parent = self._open_child(parent, comps[:depth], entry, create)
        return parent

    def _open_child(self, parent: int, comps: tuple[str, ...], entry: str, create: bool) -> int:
        c = comps[-1]
        try:
            fd = os.open(c, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(c, 0o755, dir_fd=parent)
            fd = os.open(c, _O_DIR, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                what = "a symlink" if e.errno == errno.ELOOP or stat.S_ISLNK(
                    os.stat(c, dir_fd=parent, follow_symlinks=False).st_mode) else "not a directory"
                raise UnsafeArchive(f"entry {shorten(entry)}: parent {shorten('/'.join(comps))} "
                                    f"is {what}; refusing to write through it") from None
            raise
        self.cache[comps] = fd
        # The newest entries (this walk's parents) stay; the least recently used go.
        if len(self.cache) > 128:
            _, old = self.cache.popitem(last=False)
            os.close(old)
        return fd

    def _lstat(self, parent: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _forget_below(self, comps: tuple[str, ...]) -> None:
        """Close the cached fds of `comps` and everything under it (it is going away);
        the fds of its parents stay valid for the caller."""
        n = len(comps)
        for key in [k for k in self.cache if k[:n] == comps]:
            os.close(self.cache.pop(key))

    def _remove(self, parent: int, comps: tuple[str, ...],
                st: os.stat_result | None = None) -> None:
        name = comps[-1]
        st = st or self._lstat(parent, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            self._forget_below(comps)
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def _replace(self, parent: int, comps: tuple[str, ...], keep_dir: bool = False) -> bool:
        """Clear the way for a new entry (last entry wins, as tar and containerd do, even
        over a directory of the same layer). True if a directory was kept."""
        st = self._lstat(parent, comps[-1])
        if st is None:
            return False
        if keep_dir and stat.S_ISDIR(st.st_mode):
            return True
        self._remove(parent, comps, st)
        return False

    # metadata ------------------------------------------------------------------------
    def _owner_mode_xattrs_fd(self, fd: int, ti: tarfile.TarInfo) -> None:
        if self.root_owner:
            os.fchown(fd, ti.uid, ti.gid)
        os.fchmod(fd, ti.mode & 0o7777)
        for k, v in _xattrs_of(ti).items():
            try:
                os.setxattr(fd, k, v)  # after chown: chown drops security.capability
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise

    def _times(self, ti: tarfile.TarInfo) -> tuple[int, int]:
        ns = int(ti.mtime) * 1_000_000_000
        return ns, ns

    # entries -------------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        parts = _split(ti.name, limits=self.limits)
        if not parts:
            return  # the root itself: its metadata belongs to whoever made dest
        _check_ids(ti)
        comps = tuple(parts)
        base = parts[-1]
        pdir = comps[:-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(pdir, base, ti)
            return
        parent = self._dir(pdir, ti.name)
        if ti.isdir():
            if not self._replace(parent, comps, keep_dir=True):
                os.mkdir(base, 0o700, dir_fd=parent)
            self.dirs[comps] = ti
        elif ti.isreg():
            self._replace(parent, comps)
            self._file(tf, ti, parent, base)
        elif ti.issym():
            if "\0" in ti.linkname:
                raise UnsafeArchive(f"entry {shorten(ti.name)}: NUL in symlink target")
            self._replace(parent, comps)
            os.symlink(ti.linkname, base, dir_fd=parent)
            if self.root_owner:
                os.chown(base, ti.uid, ti.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(base, ns=self._times(ti), dir_fd=parent, follow_symlinks=False)
        elif ti.islnk():
            self._hardlink(ti, comps)
        elif ti.ischr() or ti.isblk():
            kind = "char" if ti.ischr() else "block"
            if ti.ischr() and ti.devmajor == 0 and ti.devminor == 0 and self.whiteouts == "overlay":
                self._replace(parent, comps)
                self._mknod_whiteout(parent, base, ti.name)
            elif self.allow_devices:
                self._replace(parent, comps)
                os.mknod(base, (stat.S_IFCHR if ti.ischr() else stat.S_IFBLK) | 0o600,
                         os.makedev(ti.devmajor, ti.devminor), dir_fd=parent)
                self._special_meta(parent, base, ti)
            elif self.skip_devices:
                self.skipped_devices += 1
                return
            else:
                raise UnsafeArchive(f"entry {ti.name!r}: {kind} device {ti.devmajor}:"
                                    f"{ti.devminor} refused (device nodes are not image content)")
        elif ti.isfifo():
            self._replace(parent, comps)
            os.mkfifo(base, 0o600, dir_fd=parent)
            self._special_meta(parent, base, ti)
        else:
            return  # volume labels, unknown types: nothing to create
        self.written.add(comps)

    def _special_meta(self, parent: int, base: str, ti: tarfile.TarInfo) -> None:
        if self.root_owner:
            os.chown(base, ti.uid, ti.gid, dir_fd=parent, follow_symlinks=False)
        # The node was just created by us and is not a symlink, so chmod may follow.
        os.chmod(base, ti.mode & 0o7777, dir_fd=parent)
        os.utime(base, ns=self._times(ti), dir_fd=parent, follow_symlinks=False)

    def _file(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: int, base: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=parent)
        try:
            # an ExFileObject, a BufferedReader (readinto), though typed as IO[bytes]
            src = cast("io.BufferedReader | None", tf.extractfile(ti))
            left = ti.size
            view = memoryview(self.buf)
            while left > 0 and src is not None:
                n = src.readinto(view[:min(CHUNK, left)])
                if not n:
                    raise CorruptImage(f"entry {ti.name!r}: archive ends inside the file")
                w = view[:n]
                while w:
                    k = os.write(fd, w)
                    w = w[k:]
                left -= n
            self._owner_mode_xattrs_fd(fd, ti)
            os.utime(fd, ns=self._times(ti))
        finally:
            os.close(fd)

    def _hardlink(self, ti: tarfile.TarInfo, comps: tuple[str, ...]) -> None:
        target = tuple(_split(ti.linkname, f"hardlink {shorten(ti.name)} ->", self.limits))
        if not target:
            raise UnsafeArchive(f"entry {ti.name!r}: hardlink to the root refused")
        try:
            tparent = os.dup(self._dir(target[:-1], ti.name, create=False))
        except FileNotFoundError:
            raise CorruptImage(f"entry {ti.name!r}: hardlink target {ti.linkname!r} "
                               "is not in the layer") from None
        try:
            tst = self._lstat(tparent, target[-1])
            if tst is None:
                raise CorruptImage(f"entry {ti.name!r}: hardlink target {ti.linkname!r} "
                                   "is not in the layer")
            if stat.S_ISDIR(tst.st_mode):
                raise UnsafeArchive(f"entry {ti.name!r}: hardlink to a directory refused")
            if target == comps:
                return
            parent = self._dir(comps[:-1], ti.name)
            self._replace(parent, comps)
            os.link(target[-1], comps[-1], src_dir_fd=tparent, dst_dir_fd=parent,
                    follow_symlinks=False)
        finally:
            os.close(tparent)

    def _mknod_whiteout(self, parent: int, base: str, entry: str) -> None:
        try:
            os.mknod(base, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        except PermissionError:
            raise CockerError(f"entry {entry!r}: creating an overlay whiteout needs root") from None

    def _whiteout(self, pdir: tuple[str, ...], base: str, ti: tarfile.TarInfo) -> None:
        entry = ti.name
        parent = self._dir(pdir, entry)
        if base == OPAQUE:
            if self.whiteouts == "overlay":
                try:
                    os.setxattr(parent, OVERLAY_OPAQUE_XATTRS[0], b"y")
                except PermissionError:
                    raise CockerError(f"entry {entry!r}: marking an opaque directory needs "
                                      "root") from None
                return
            for child in os.listdir(parent):
                if pdir + (child,) not in self.written:
                    self._remove(parent, pdir + (child,))
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata (.wh..wh.plnk, ...): not content
        name = base[len(WHITEOUT_PREFIX):]
        _split(name)
        if name in ("", ".", ".."):
            raise UnsafeArchive(f"entry {entry!r}: bad whiteout name")
        if self.whiteouts == "overlay":
            self._remove(parent, pdir + (name,))
            self._mknod_whiteout(parent, name, entry)
            # The whiteout's own owner and time, so packing this tree again is identical.
            if self.root_owner:
                os.chown(name, ti.uid, ti.gid, dir_fd=parent, follow_symlinks=False)
            os.utime(name, ns=self._times(ti), dir_fd=parent, follow_symlinks=False)
            self.written.add(pdir + (name,))
        elif pdir + (name,) not in self.written:
            # A whiteout only hides lower layers, never an entry of its own layer.
            self._remove(parent, pdir + (name,))

    def finish(self) -> None:
        """Directory metadata last (deepest first), so writing inside them and their
        mtimes are not disturbed by what follows."""
        for comps in sorted(self.dirs, key=len, reverse=True):
            ti = self.dirs[comps]
            try:
                fd = self._dir(comps, ti.name, create=False)
            except (FileNotFoundError, UnsafeArchive):
                continue  # replaced or whited out later in the archive
            self._owner_mode_xattrs_fd(fd, ti)
            os.utime(fd, ns=self._times(ti))


@dataclass
class Unpacked:
    diff_id: str
    skipped_devices: int = 0  # device nodes dropped under `skip_devices`


def unpack(stream: BinaryIO, dest: str, **kw: Any) -> str:
    """Extract a layer into `dest` (see `unpack_layer`); returns its diff_id."""
    return unpack_layer(stream, dest, **kw).diff_id


def unpack_layer(stream: BinaryIO, dest: str, *, whiteouts: str = "overlay",
                 max_bytes: int | None = None, max_entries: int | None = None,
                 allow_devices: bool = False, skip_devices: bool = False,
                 limits: LayerLimits | None = None, progress: Any = None) -> Unpacked:
    """Extract a layer (gzip/zstd/plain) into `dest`.

    whiteouts="overlay": `.wh.X` -> char 0/0 `X`, `.wh..wh..opq` -> trusted.overlay.opaque=y
    (the tree is usable as an overlay lowerdir). whiteouts="apply": delete what they name
    (successive layers flattened into one directory).
    Device nodes are refused unless `allow_devices` (create them) or `skip_devices` (drop
    them: a rootfs tarball's /dev is the runtime's business); a char 0/0 node is an
    overlay whiteout and accepted in overlay mode.
    `limits` (default: from the environment) bound the decompressed bytes (and the free
    space of `dest`'s filesystem), the compression ratio, entries, path depth and names;
    `max_bytes` / `max_entries` override two of them.
    Raises UnsafeArchive for traversal, symlink/hardlink escapes, devices and bombs;
    CorruptImage for a malformed archive. Nothing is ever written outside `dest`.
    """
    lim = limits or LayerLimits.from_env()
    os.makedirs(dest, exist_ok=True)
    if max_bytes is not None:
        limit, why = max_bytes, f"max_bytes={max_bytes}"
    else:
        limit, why = lim.byte_budget(dest)
    max_entries = lim.max_entries if max_entries is None else max_entries
    counted = _Counted(stream)
    try:
        raw = open_layer(counted)  # type: ignore[arg-type]
    except DECOMPRESS_ERRORS as e:
        raise CorruptImage(f"layer does not decompress: {e}") from None
    capped = _CappedReader(raw, limit, why, lim, counted)
    u = _Unpacker(dest, whiteouts, allow_devices, skip_devices, lim)
    current = "?"
    try:
        # reads `capped`, which this function owns and drains: the TarFile holds no fd
        tf = tarfile.open(fileobj=capped, mode="r:", tarinfo=_SafeTarInfo)  # noqa: SIM115
        count = 0
        data = 0
        while True:
            ti = tf.next()
            if ti is None:
                break
            tf.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every member otherwise
            current = ti.name
            count += 1
            if count > max_entries:
                raise UnsafeArchive(f"layer has more than {max_entries} entries; refused "
                                    "(COCKER_MAX_ENTRIES)")
            if ti.isreg():
                # Declared sizes count before a byte is written: a header may claim
                # terabytes (or a sparse file a huge real size) with little data behind.
                data += ti.size
                if data > limit:
                    raise too_big(f"entry {shorten(ti.name)}: layer content goes", limit, why)
            u.entry(tf, ti)
            if progress is not None and ti.isreg():
                progress.update(ti.size)
        u.finish()
        # Hash the end-of-archive padding too: the diff_id covers the whole stream. tarfile
        # stops quietly at a damaged header, so anything but zeros after the end means the
        # archive was cut short by corruption, not finished.
        while rest := capped.read(CHUNK):
            if rest.count(0) != len(rest):
                raise CorruptImage(f"layer has data after its end (a damaged header after "
                                   f"{shorten(current)}?)")
    except tarfile.TarError as e:
        raise CorruptImage(f"layer is not a valid tar (at {shorten(current)}): {e}") from None
    except DECOMPRESS_ERRORS as e:
        raise CorruptImage(f"layer does not decompress (at {shorten(current)}): {e}") from None
    except CockerError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_error(e, dest) from e
        raise CorruptImage(f"cannot extract entry {shorten(current)}: {e.strerror or e}"
                           ) from None
    except (ValueError, OverflowError, UnicodeError) as e:
        # tarfile's header parsing raises these for numbers and names it cannot represent
        raise CorruptImage(f"layer has a malformed entry (at {shorten(current)}): {e}"
                           ) from None
    finally:
        u.close()
    return Unpacked("sha256:" + capped.h.hexdigest(), u.skipped_devices)
