"""The smart protocol: cocker's repository protocol over any byte stream, and its client.

One handler (`srepo_server.handler.serve`) speaks it on stdin/stdout (`srepo-server --stdio`,
what `ssh://` pushes run remotely, like git's upload-pack), on the exec channels of the
server's own SSH door (`srepo://`), and over pipes in tests. `SmartRepo` is the client: a
`Repository` like any other, so the one copy routine drives it.

Framing
-------
Requests and replies are *frames*: one JSON object on one line (UTF-8, terminated by `\\n`),
at most 4 MiB for a request and 64 MiB for a reply (a long `list`). Strictly one reply per
request, in order; the server never speaks first.

    -> {"op": "hello", "versions": [1], "client": "cocker/0.1.0"}
    <- {"ok": true, "version": 1, "server": "srepo-server 0.1.0", "capabilities": [...],
        "access": {"read": true, "write": false, "delete": false, "gc": false,
                   "prefixes": null}, "namespace": null}

An error is a reply frame `{"ok": false, "error": "<CockerError subclass name>",
"message": "..."}`; the client raises the same class from `common.errors` (NotFound,
Conflict, DigestMismatch, PermissionDenied, InvalidReference, ...), so a remote failure reads
exactly like a local one. The connection stays usable after an error frame. A request the
server cannot frame (a line over the limit, a bad chunk header) gets an error frame when
possible and then the connection is closed.

Binary data travels raw after a frame, never base64, never wrapped in JSON per chunk:

* get-blob: the reply header states `length`; exactly that many raw bytes follow.
* put-blob: after the server's go-ahead, the client sends chunks, each a 4-byte big-endian
  length then that many bytes (at most 16 MiB; the client uses 1 MiB), and ends with the
  length word 0 (commit) or 0xFFFFFFFF (abort, keep the partial for a resume). The server
  then replies once: `{"ok": true}` when the blob was verified and made visible, or an error
  frame (DigestMismatch, disk full...). The server reads to the end marker even after an
  error, so the stream stays in step.

Operations (request fields -> reply fields)
-------------------------------------------
    hello       versions, client                 -> version, server, capabilities, access, namespace
    list        [name] [prefix] [pattern]        -> refs: [{name, version, digest, mtime}]
                  name: exactly that image; prefix: names starting with it;
                  pattern: fnmatch glob on `name` or `name:version`
    get-ref     name, version                    -> digest | null
    resolve     ref ("name", "name:ver", "name@sha256:...")
                                                 -> name, version, digest, mtime (newest for a bare name)
    missing     digests: [...] (batch)           -> missing: [...]  (in request order, deduplicated)
    blob-size   digest                           -> size | null
    get-blob    digest, [offset], [length]       -> size, offset, length; then `length` raw bytes
    put-blob    digest, [size]                   -> offset (bytes the server already holds, for a
                                                    resume), exists; unless `exists`, the chunk
                                                    stream follows, then a final reply
    put-ref     name, version, digest, [expect]  -> (nothing)
                  `expect` absent: unconditional; null: the ref must not exist; a digest: the
                  ref must hold it now (compare-and-swap, Conflict otherwise). Refused
                  (NotFound) when the manifest or any blob it names is missing.
    delete-ref  name, version, [expect]          -> (nothing)
    gc          [grace], [dry_run]               -> removed, freed  (the server enforces a
                                                    minimum grace so pushes in flight survive)

Names in requests and replies are relative to the connection's namespace (the `/prefix` of a
`srepo://host/prefix` URL); the server validates every name and digest before it builds a
path and checks the caller's permissions (read / write / delete / gc, name prefixes) per op.
Blobs are content-addressed and shared: any key that may read can fetch a blob by digest.

Concurrency: a connection carries one exchange at a time. `SmartRepo` hands connections out
under a lock; given an `opener` (e.g. "open another exec channel on the same SSH transport")
it opens up to `max_connections` so the copy routine's threads move several blobs at once,
otherwise they take turns on the one stream.

Use over SSH: `SmartRepo.over_channel(chan, opener=...)` wraps exec channels in
`ChannelStream`, which reads paramiko channels without its makefile's copying; receive
windows of tens of MiB and 64-128 KiB packets keep the stream full at the least CPU per byte.
"""

from __future__ import annotations

import collections
import json
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from common import errors as errmod
from common.errors import CockerError, TransportError, UsageError
from registry import digest as digestmod
from registry.reference import Reference
from registry.repository import ANY, BlobWriter, RefRecord, Repository

PROTOCOL_VERSIONS = (1,)
CHUNK = 1 << 20                      # payload chunk the client sends / server reads from disk
MAX_CHUNK = 16 << 20                 # largest chunk a server accepts
MAX_REQUEST_LINE = 4 << 20
MAX_REPLY_LINE = 64 << 20
END = 0
ABORT = 0xFFFFFFFF
_LEN = struct.Struct(">I")
CAPABILITIES = ("list", "get-ref", "resolve", "missing", "blob-size", "get-blob", "put-blob",
                "put-blob-resume", "put-ref", "delete-ref", "gc")

Opener = Callable[[], tuple[Any, Any, Callable[[], None] | None]]


class ConnectionLost(TransportError):
    """The byte stream ended or broke mid-exchange; the connection cannot be reused."""


class FrameTooLong(TransportError):
    """A frame line over the limit: the stream is out of step and must be closed."""


class BadFrame(TransportError):
    """A line that is not a JSON object."""


# frames ----------------------------------------------------------------------------------
def encode(frame: dict) -> bytes:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"


def read_line(rfile: Any, limit: int) -> bytes | None:
    """One frame line without its newline; None at a clean end of stream."""
    try:
        line = rfile.readline(limit + 1)
    except (OSError, ValueError) as e:
        raise ConnectionLost(f"connection lost: {e}") from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) > limit:
            raise FrameTooLong(f"frame longer than {limit} bytes")
        raise ConnectionLost("connection lost in the middle of a frame")
    return line[:-1]


def parse_frame(line: bytes) -> dict:
    try:
        frame = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BadFrame("bad frame: not JSON") from None
    if not isinstance(frame, dict):
        raise BadFrame("bad frame: not a JSON object")
    return frame


def read_exact(rfile: Any, n: int) -> bytes:
    try:
        data = rfile.read(n)
    except (OSError, ValueError) as e:
        raise ConnectionLost(f"connection lost: {e}") from None
    if data is None or len(data) != n:
        raise ConnectionLost(f"connection lost: expected {n} bytes, got {len(data or b'')}")
    return data


def error_frame(exc: BaseException) -> dict:
    name = type(exc).__name__
    if not isinstance(exc, CockerError) or _ERRORS.get(name) is not type(exc):
        # A subclass the other side may not know: send the nearest public ancestor.
        name = next((c.__name__ for c in type(exc).__mro__ if _ERRORS.get(c.__name__) is c),
                    "CockerError")
    return {"ok": False, "error": name, "message": str(exc) or name}


def raise_error(frame: dict) -> None:
    """Raise the CockerError an error frame stands for."""
    cls = _ERRORS.get(str(frame.get("error")), CockerError)
    raise cls(str(frame.get("message") or "remote error"))


_ERRORS: dict[str, type[CockerError]] = {
    name: obj for name, obj in vars(errmod).items()
    if isinstance(obj, type) and issubclass(obj, CockerError)}


# a fast stream over a socket-like object (paramiko Channel, socket) ---------------------
class ChannelStream:
    """read/readline/write over anything with recv/sendall (a paramiko Channel, a socket).

    paramiko's own `makefile` grows its read buffer by concatenation, and reading a little
    from paramiko's channel buffer moves everything behind it; when the reader lags, that
    buffer holds up to a whole window (tens of MiB) and each 1 MiB read would move it all.
    So this drains the channel buffer whole into a queue of chunks and hands out slices.
    """

    def __init__(self, chan: Any, recv_size: int = 1 << 28) -> None:
        self.chan = chan
        self.recv_size = recv_size
        self._chunks: collections.deque[bytes] = collections.deque()
        self._off = 0        # read position in the first chunk
        self._avail = 0      # bytes queued, counted from _off

    def _fill(self) -> bool:
        d = self.chan.recv(self.recv_size)
        if not d:
            return False
        self._chunks.append(d)
        self._avail += len(d)
        return True

    def _take(self, n: int) -> bytes:
        parts: list[Any] = []
        while n:
            c = self._chunks[0]
            left = len(c) - self._off
            if left <= n:
                parts.append(c if self._off == 0 else memoryview(c)[self._off:])
                self._chunks.popleft()
                self._off = 0
                n -= left
                self._avail -= left
            else:
                parts.append(memoryview(c)[self._off:self._off + n])
                self._off += n
                self._avail -= n
                n = 0
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            while self._fill():
                pass
            return self._take(self._avail)
        while self._avail < n and self._fill():
            pass
        return self._take(min(n, self._avail))

    def readline(self, limit: int = -1) -> bytes:
        limit = limit if limit and limit > 0 else 1 << 62
        scanned = 0  # bytes already searched for a newline
        while True:
            pos = 0      # offset of chunk i's first unread byte from the read position
            for i, c in enumerate(self._chunks):
                start = self._off if i == 0 else 0
                size = len(c) - start
                if pos + size > scanned:
                    j = c.find(b"\n", start + max(0, scanned - pos), start + size)
                    if j >= 0:
                        return self._take(min(pos + j - start + 1, limit))
                pos += size
            scanned = self._avail
            if self._avail >= limit:
                return self._take(limit)
            if not self._fill():
                return self._take(self._avail)

    def write(self, data: bytes) -> int:
        # A memoryview: paramiko's sendall re-slices what is left after each packet, which
        # copies the rest of a bytes object every time (quadratic in the chunk size).
        self.chan.sendall(memoryview(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.chan.close()


def tune_allocator() -> None:
    """Let glibc serve MiB-sized buffers from its heap instead of fresh mmaps.

    By default every bytes object over ~128 KiB (a 1 MiB chunk, a 128 KiB SSH packet) is a
    new mmap that page-faults on first touch and is unmapped when freed: measured here, that
    makes AES-GCM on 256 KiB buffers 3.5x dearer than on 64 KiB ones. Raising the mmap and
    trim thresholds keeps those pages in the heap for reuse. Called by processes that move
    bulk data (the server doors, srepo:// clients); a no-op where glibc's mallopt is absent.
    """
    global _TUNED
    if _TUNED:
        return
    _TUNED = True
    try:
        import ctypes
        # This process's own C library; ctypes.util would import subprocess at start-up.
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 16 << 20)   # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_TUNED = False


# client ----------------------------------------------------------------------------------
class _Conn:
    """One byte-stream pair carrying one exchange at a time."""

    def __init__(self, rfile: Any, wfile: Any, closer: Callable[[], None] | None = None) -> None:
        self.rfile, self.wfile, self.closer = rfile, wfile, closer
        self.info: dict = {}

    def send(self, frame: dict) -> None:
        try:
            self.wfile.write(encode(frame))
            self.wfile.flush()
        except (OSError, ValueError, EOFError) as e:
            raise ConnectionLost(f"connection lost: {e}") from None

    def reply(self) -> dict:
        line = read_line(self.rfile, MAX_REPLY_LINE)
        if line is None:
            raise ConnectionLost("the server closed the connection")
        frame = parse_frame(line)
        if frame.get("ok") is not True:
            raise_error(frame)
        return frame

    def call(self, frame: dict) -> dict:
        self.send(frame)
        return self.reply()

    def hello(self, client: str) -> dict:
        self.send({"op": "hello", "versions": list(PROTOCOL_VERSIONS), "client": client})
        # A login shell may print a banner on stdout before the server starts: skip lines
        # that are not frames (a bounded number of them).
        for _ in range(64):
            line = read_line(self.rfile, MAX_REPLY_LINE)
            if line is None:
                raise ConnectionLost("the server closed the connection before answering "
                                     "(is srepo-server installed and the repo path right?)")
            try:
                frame = parse_frame(line)
            except BadFrame:
                continue
            if frame.get("ok") is not True:
                raise_error(frame)
            if frame.get("version") not in PROTOCOL_VERSIONS:
                raise TransportError(f"server speaks smart protocol version "
                                     f"{frame.get('version')!r}; cocker speaks {PROTOCOL_VERSIONS}")
            self.info = frame
            return frame
        raise TransportError("the remote did not answer with the smart protocol")

    def write_raw(self, *parts: bytes) -> None:
        try:
            for p in parts:
                self.wfile.write(p)
        except (OSError, ValueError, EOFError) as e:
            raise ConnectionLost(f"connection lost: {e}") from None

    def flush(self) -> None:
        try:
            self.wfile.flush()
        except (OSError, ValueError, EOFError) as e:
            raise ConnectionLost(f"connection lost: {e}") from None

    def close(self) -> None:
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except Exception:  # closing a dead stream must not hide the real error
                pass
        if self.closer:
            try:
                self.closer()
            except Exception:
                pass


class _Lease:
    """`with repo._lease() as conn:` — a connection for one exchange, returned afterwards
    (or dropped when the exchange broke the stream)."""

    def __init__(self, repo: SmartRepo) -> None:
        self.repo = repo
        self.conn: _Conn | None = None

    def __enter__(self) -> _Conn:
        self.conn = self.repo._acquire()
        return self.conn

    def __exit__(self, et, ev, tb) -> None:
        broken = et is not None and (issubclass(et, (ConnectionLost, FrameTooLong, BadFrame))
                                     or not issubclass(et, CockerError))
        self.repo._release(self.conn, broken=broken)


class SmartRepo(Repository):
    """A repository spoken to through the smart protocol over (rfile, wfile).

    `opener()` -> (rfile, wfile, closer) opens one more connection to the same server; with
    it up to `max_connections` exchanges run at once, without it requests take turns.
    `closer` (for the first connection) runs at close(), e.g. to end an SSH session.
    """

    def __init__(self, rfile: Any, wfile: Any, *, url: str = "smart repository",
                 opener: Opener | None = None, max_connections: int = 4,
                 closer: Callable[[], None] | None = None, client: str = "cocker") -> None:
        self.url = url
        self._client = client
        self._opener = opener
        self._max = max(1, max_connections) if opener else 1
        self._cond = threading.Condition()
        self._idle: list[_Conn] = []
        self._busy: dict[_Conn, int] = {}
        self._count = 0
        self._closed = False
        self._owned: list[Any] = []
        first = _Conn(rfile, wfile, closer)
        try:
            self.server_info = first.hello(client)
        except BaseException:
            first.close()
            raise
        self._idle.append(first)
        self._count = 1

    @classmethod
    def over_channel(cls, chan: Any, *, opener: Callable[[], Any] | None = None,
                     **kw: Any) -> SmartRepo:
        """A SmartRepo on a paramiko channel already running the server (exec'd);
        `opener()` returns another such channel."""
        def wrap(c: Any) -> tuple[Any, Any, Callable[[], None]]:
            s = ChannelStream(c)
            return s, s, c.close
        r, w, closer = wrap(chan)
        return cls(r, w, opener=(lambda: wrap(opener())) if opener else None, closer=closer, **kw)

    # connections ---------------------------------------------------------------------
    def _lease(self) -> _Lease:
        return _Lease(self)

    def _acquire(self) -> _Conn:
        me = threading.get_ident()
        with self._cond:
            while True:
                if self._closed:
                    raise TransportError(f"{self.describe()}: connection closed")
                if self._idle:
                    c = self._idle.pop()
                    self._busy[c] = me
                    return c
                if self._count < self._max:
                    self._count += 1
                    break
                if (len(self._busy) == self._count
                        and all(t == me for t in self._busy.values())):
                    raise UsageError(f"{self.describe()}: this thread already holds every "
                                     "connection (a blob stream left open?)")
                self._cond.wait()
        try:
            assert self._opener is not None
            r, w, closer = self._opener()
            c = _Conn(r, w, closer)
            try:
                c.hello(self._client)
            except BaseException:
                c.close()
                raise
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._busy[c] = me
        return c

    def _release(self, conn: _Conn | None, broken: bool = False) -> None:
        if conn is None:
            return
        with self._cond:
            self._busy.pop(conn, None)
            if broken or self._closed:
                self._count -= 1
            else:
                self._idle.append(conn)
            self._cond.notify()
        if broken or self._closed:
            conn.close()

    def _call(self, frame: dict) -> dict:
        with self._lease() as c:
            return c.call(frame)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for c in idle:
            c.close()
        for obj in reversed(self._owned):
            try:
                obj.close()
            except Exception:
                pass
        self._owned = []

    def _owning(self, obj: Any) -> SmartRepo:
        """Close `obj` (e.g. the SSH client under the channels) when this repo closes."""
        self._owned.append(obj)
        return self

    # refs ----------------------------------------------------------------------------
    def list_refs(self, name: str | None = None, *, prefix: str | None = None,
                  pattern: str | None = None) -> list[RefRecord]:
        frame: dict = {"op": "list"}
        for k, v in (("name", name), ("prefix", prefix), ("pattern", pattern)):
            if v is not None:
                frame[k] = v
        reply = self._call(frame)
        return [RefRecord(r["name"], r["version"], r["digest"], float(r.get("mtime") or 0))
                for r in reply.get("refs", [])]

    def get_ref(self, name: str, version: str) -> str | None:
        d = self._call({"op": "get-ref", "name": name, "version": version}).get("digest")
        return digestmod.validate(d) if d is not None else None

    def resolve(self, ref: Reference) -> RefRecord:
        r = self._call({"op": "resolve", "ref": str(ref)})
        return RefRecord(r["name"], r["version"], digestmod.validate(r["digest"]),
                         float(r.get("mtime") or 0))

    def put_ref(self, name: str, version: str, digest: str, expect: object = ANY) -> None:
        frame = {"op": "put-ref", "name": name, "version": version,
                 "digest": digestmod.validate(digest)}
        if expect is not ANY:
            frame["expect"] = expect
        self._call(frame)

    def delete_ref(self, name: str, version: str, expect: object = ANY) -> None:
        frame: dict = {"op": "delete-ref", "name": name, "version": version}
        if expect is not ANY:
            frame["expect"] = expect
        self._call(frame)

    # blobs ---------------------------------------------------------------------------
    def blob_size(self, digest: str) -> int | None:
        size = self._call({"op": "blob-size", "digest": digestmod.validate(digest)}).get("size")
        return int(size) if size is not None else None

    def missing_blobs(self, digests: Iterable[str]) -> list[str]:
        wanted = [digestmod.validate(d) for d in dict.fromkeys(digests)]
        out: list[str] = []
        for i in range(0, len(wanted), 10000):  # keeps each request frame well under the limit
            out += self._call({"op": "missing", "digests": wanted[i:i + 10000]})["missing"]
        return out

    def open_blob(self, digest: str, offset: int = 0) -> BinaryIO:
        lease = self._lease()
        conn = lease.__enter__()
        try:
            r = conn.call({"op": "get-blob", "digest": digestmod.validate(digest),
                           "offset": int(offset)})
        except BaseException as e:
            lease.__exit__(type(e), e, None)
            raise
        return _BlobReader(lease, conn, int(r["length"]))  # type: ignore[return-value]

    def upload(self, digest: str, size: int | None = None) -> BlobWriter:
        lease = self._lease()
        conn = lease.__enter__()
        frame: dict = {"op": "put-blob", "digest": digestmod.validate(digest)}
        if size is not None:
            frame["size"] = int(size)
        try:
            r = conn.call(frame)
        except BaseException as e:
            lease.__exit__(type(e), e, None)
            raise
        return _BlobUpload(lease, conn, digest, int(r.get("offset") or 0), bool(r.get("exists")))

    # maintenance ---------------------------------------------------------------------
    def gc(self, grace: float | None = None, dry_run: bool = False) -> tuple[int, int]:
        frame: dict = {"op": "gc", "dry_run": bool(dry_run)}
        if grace is not None:
            frame["grace"] = float(grace)
        r = self._call(frame)
        return int(r["removed"]), int(r["freed"])

    def describe(self) -> str:
        return self.url


class _BlobReader:
    """The raw bytes of a get-blob reply; holds the connection until read or closed."""

    def __init__(self, lease: _Lease, conn: _Conn, length: int) -> None:
        self._lease, self._conn, self.left = lease, conn, length
        self._done = False
        if length == 0:
            self._finish(None)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        want = self.left if n is None or n < 0 else min(n, self.left)
        try:
            data = read_exact(self._conn.rfile, want) if want else b""
        except BaseException as e:
            self._finish(e)
            raise
        self.left -= len(data)
        if self.left == 0:
            self._finish(None)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _finish(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._lease.__exit__(type(exc) if exc else None, exc, None)

    def close(self) -> None:
        """Drain what the caller did not read, so the connection stays in step."""
        if self._done:
            return
        try:
            while self.left:
                n = min(self.left, CHUNK)
                read_exact(self._conn.rfile, n)
                self.left -= n
        except BaseException as e:
            self._finish(e)
            return
        self._finish(None)

    def __enter__(self) -> _BlobReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _BlobUpload(BlobWriter):
    """A put-blob stream: chunks go out as they are written; commit waits for the verdict."""

    def __init__(self, lease: _Lease, conn: _Conn, digest: str, offset: int, exists: bool) -> None:
        self._lease, self._conn, self.digest = lease, conn, digest
        self.offset = offset
        self._done = False
        if exists:
            # The server already has the blob and expects no stream.
            self._skip = True
            self._finish(None)
        else:
            self._skip = False

    def write(self, data: bytes) -> None:
        if self._skip:
            return
        if self._done:
            raise UsageError("write after commit/abort")
        view = memoryview(data)
        try:
            while view:
                part = view[:MAX_CHUNK]
                self._conn.write_raw(_LEN.pack(len(part)), part)
                view = view[len(part):]
        except BaseException as e:
            self._finish(e)
            raise

    def _end(self, marker: int) -> None:
        try:
            self._conn.write_raw(_LEN.pack(marker))
            self._conn.flush()
            self._conn.reply()
        except BaseException as e:
            self._finish(e)
            raise
        self._finish(None)

    def commit(self) -> None:
        if self._skip or self._done:
            return
        self._end(END)

    def abort(self) -> None:
        if self._skip or self._done:
            return
        try:
            self._end(ABORT)
        except CockerError:
            pass  # aborting after a failure: the first error is the one to report

    def _finish(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            self._lease.__exit__(type(exc) if exc else None, exc, None)
