"""The smart protocol's client: `SmartRepo`, a `Repository` over one or more byte streams.

The protocol (frames, operations, errors) is described in `registry.wire.framing`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from common.errors import CockerError, TransportError, UsageError
from registry.oci import digest as digestmod
from registry.oci.reference import Reference
from registry.repo.repository import (
    ANY,
    LEASES,
    MOUNT,
    RESUME,
    SERVER_GC,
    BlobWriter,
    RefRecord,
    Repository,
)
from registry.wire.channel import ChannelStream
from registry.wire.framing import (
    ABORT,
    CHUNK,
    END,
    LEN,
    MAX_CHUNK,
    MAX_REPLY_LINE,
    PROTOCOL_VERSIONS,
    BadFrame,
    ConnectionLost,
    FrameTooLong,
    encode,
    parse_frame,
    raise_error,
    read_exact,
    read_line,
)

Opener = Callable[[], tuple[Any, Any, Callable[[], None] | None]]


# client ----------------------------------------------------------------------------------
class _Conn:
    """One byte-stream pair carrying one exchange at a time."""

    def __init__(self, rfile: Any, wfile: Any, closer: Callable[[], None] | None = None,
                 where: str = "smart repository") -> None:
        self.rfile, self.wfile, self.closer = rfile, wfile, closer
        self.where = where  # the URL, so a lost connection names the host
        self.info: dict = {}

    def lost(self, why: object) -> ConnectionLost:
        return ConnectionLost(f"{self.where}: {why}; run the command again (a push or pull "
                              "resumes where it stopped)")

    def read_line(self) -> bytes | None:
        try:
            return read_line(self.rfile, MAX_REPLY_LINE)
        except ConnectionLost as e:
            raise self.lost(e) from None

    def read_exact(self, n: int) -> bytes:
        try:
            return read_exact(self.rfile, n)
        except ConnectionLost as e:
            raise self.lost(e) from None

    def send(self, frame: dict) -> None:
        try:
            self.wfile.write(encode(frame))
            self.wfile.flush()
        except (OSError, ValueError, EOFError) as e:
            raise self.lost(f"connection lost: {e}") from None

    def reply(self) -> dict:
        line = self.read_line()
        if line is None:
            raise self.lost("the server closed the connection")
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
            line = self.read_line()
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

    def write_raw(self, *parts: bytes | memoryview) -> None:
        try:
            for p in parts:
                self.wfile.write(p)
        except (OSError, ValueError, EOFError) as e:
            raise self.lost(f"connection lost: {e}") from None

    def flush(self) -> None:
        try:
            self.wfile.flush()
        except (OSError, ValueError, EOFError) as e:
            raise self.lost(f"connection lost: {e}") from None

    def close(self) -> None:
        for f in (self.wfile, self.rfile):
            try:
                f.close()
            except Exception:  # noqa: BLE001 (closing a dead stream must not hide the real error)
                pass
        if self.closer:
            try:
                self.closer()
            except Exception:  # noqa: BLE001 (as above: whatever the transport raises on close)
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
        first = _Conn(rfile, wfile, closer, url)
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
            c = _Conn(r, w, closer, self.url)
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
            except Exception:  # noqa: BLE001 (every owned object gets its close, whatever one raises)
                pass
        self._owned = []

    def owning(self, obj: Any) -> SmartRepo:
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
        frame: dict[str, object] = {"op": "put-ref", "name": name, "version": version,
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
    def capabilities(self) -> frozenset[str]:
        # The server leases what a connection asked about or sent (srepo_server.handler).
        return frozenset({RESUME, SERVER_GC, LEASES, MOUNT})

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
            data = self._conn.read_exact(want) if want else b""
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
                self._conn.read_exact(n)
                self.left -= n
        except BaseException as e:  # noqa: BLE001 (the lease ends with it; close() must not raise)
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
                self._conn.write_raw(LEN.pack(len(part)), part)
                view = view[len(part):]
        except BaseException as e:
            self._finish(e)
            raise

    def _end(self, marker: int) -> None:
        try:
            self._conn.write_raw(LEN.pack(marker))
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
