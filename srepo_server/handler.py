"""The one smart-protocol handler: stdio, the SSH door's exec channels and tests all call `serve`.

The protocol itself (framing, operations, errors) is described in `registry.wire.framing`.
Rules kept here: every name and digest is validated before a path is built, every operation
is checked against the caller's `Access`, malformed input is answered with an error frame
(the connection is only closed when the stream can no longer be framed), and a blob becomes
visible only after its digest was verified (`LayoutRepo.upload`).
"""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from common.errors import CockerError, NotFound, PermissionDenied, TransportError
from registry.oci import digest as digestmod
from registry.oci import reference as refmod
from registry.repo.layout import GC_GRACE, BlobLease, LayoutRepo
from registry.repo.repository import ANY, BlobWriter
from registry.wire import framing
from srepo_server import http_store
from srepo_server.access import Access
from srepo_server.blob_links import BlobLinks

SERVER = "srepo-server 0.1.0"

Log = Callable[[str], None]


class _Close(Exception):
    """The stream is out of step or gone: stop serving this connection."""


class BadRequest(TransportError):
    """A well-framed request with missing or ill-typed fields."""


def serve(rfile: Any, wfile: Any, repo: LayoutRepo, access: Access | None = None, *,
          namespace: str | None = None, log: Log | None = None,
          busy: Callable[[bool], None] | None = None) -> None:
    """Answer requests from `rfile` on `wfile` until the client closes the stream.

    `busy(True)` / `busy(False)` bracket each exchange (a server's shutdown waits for them)."""
    _Handler(rfile, wfile, repo, access or Access.full(), namespace, log, busy).run()


class _Handler:
    def __init__(self, rfile: Any, wfile: Any, repo: LayoutRepo, access: Access,
                 namespace: str | None, log: Log | None,
                 busy: Callable[[bool], None] | None = None) -> None:
        self.rfile, self.wfile, self.repo, self.access = rfile, wfile, repo, access
        self.busy = busy or (lambda _: None)
        self.ns = refmod.validate_name(namespace) if namespace else None
        self.log = log
        # Blobs this connection asked about or sent, kept from any gc until it closes: a
        # push relies on blobs it was told exist (registry.repo.gc).
        self.lease: BlobLease | None = None
        self._links: BlobLinks | None = None
        self.ops = {
            "hello": self.op_hello, "list": self.op_list, "get-ref": self.op_get_ref,
            "resolve": self.op_resolve, "missing": self.op_missing,
            "blob-size": self.op_blob_size, "get-blob": self.op_get_blob,
            "put-blob": self.op_put_blob, "put-ref": self.op_put_ref,
            "delete-ref": self.op_delete_ref, "gc": self.op_gc,
        }

    # loop ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        finally:
            if self.lease is not None:
                self.lease.release()

    def _hold(self, digests: list[str]) -> None:
        if self.access.can("write"):
            if self.lease is None:
                self.lease = BlobLease(self.repo)
            self.lease.add(digests)

    def _loop(self) -> None:
        while True:
            try:
                line = framing.read_line(self.rfile, framing.MAX_REQUEST_LINE)
            except framing.FrameTooLong as e:
                self._try_send(framing.error_frame(e))
                self._note("-", "closing: " + str(e))
                return
            except framing.ConnectionLost:
                return
            if line is None:
                return
            self.busy(True)
            try:
                if not self._one(line):
                    return
            finally:
                self.busy(False)

    def _one(self, line: bytes) -> bool:
        """Answer one request; False when the connection must close."""
        t0 = time.monotonic()
        op = "?"
        try:
            req = framing.parse_frame(line)
            op = str(req.get("op"))[:40]
            fn = self.ops.get(op)
            if fn is None:
                raise BadRequest(f"unknown operation {op!r}")
            detail = fn(req)
            self._note(op, f"ok {detail or ''}".rstrip(), t0)
        except _Close as e:
            self._note(op, f"closing: {e}", t0)
            return False
        except CockerError as e:
            if not self._try_send(framing.error_frame(e)):
                return False
            self._note(op, f"{type(e).__name__}: {e}", t0)
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down with it
            if self.log:
                self.log("internal error: " + "".join(
                    traceback.format_exception(e)).rstrip().replace("\n", "\n    "))
            else:
                traceback.print_exc(file=sys.stderr)
            if not self._try_send({"ok": False, "error": "CockerError",
                                   "message": f"internal server error ({type(e).__name__})"}):
                return False
        return True

    def _note(self, op: str, what: str, t0: float | None = None) -> None:
        if self.log:
            took = f" {time.monotonic() - t0:.3f}s" if t0 is not None else ""
            self.log(f"{op} {what}{took}")

    # output --------------------------------------------------------------------------
    def _send(self, frame: dict) -> None:
        try:
            self.wfile.write(framing.encode(frame))
            self.wfile.flush()
        except (OSError, ValueError, EOFError) as e:
            raise _Close(f"client gone ({e})") from None

    def _try_send(self, frame: dict) -> bool:
        try:
            self._send(frame)
            return True
        except _Close:
            return False

    def _reply(self, **fields: Any) -> None:
        self._send({"ok": True, **fields})

    # argument helpers ----------------------------------------------------------------
    @staticmethod
    def _field(req: dict, key: str, types: type | tuple, required: bool = True) -> Any:
        if key not in req:
            if required:
                raise BadRequest(f"{req.get('op')}: {key!r} is required")
            return None
        v = req[key]
        allowed = types if isinstance(types, tuple) else (types,)
        # JSON true/false are Python ints too; only accept them where a bool is wanted.
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            raise BadRequest(f"{req.get('op')}: {key!r} has the wrong type")
        return v

    def _digest(self, req: dict, key: str = "digest") -> str:
        return digestmod.validate(self._field(req, key, str))

    def _full(self, name: str) -> str:
        """Validate a client name and place it in the namespace."""
        refmod.validate_name(name)
        full = f"{self.ns}/{name}" if self.ns else name
        return refmod.validate_name(full)

    def _local(self, full: str) -> str | None:
        """The client's view of a stored name, or None when outside the namespace."""
        if not self.ns:
            return full
        return full[len(self.ns) + 1:] if full.startswith(self.ns + "/") else None

    def _name(self, req: dict, op: str) -> tuple[str, str]:
        """(client name, full name) after validation and the permission check."""
        name = self._field(req, "name", str)
        full = self._full(name)
        self._require(op, full)
        return name, full

    def _require(self, op: str, name: str | None = None) -> None:
        if not self.access.can(op, name):
            what = f" on {name}" if name else ""
            raise PermissionDenied(f"this key may not {op}{what} (allowed: {self.access})")

    def _require_any(self, *ops: str) -> None:
        if not any(self.access.can(op) for op in ops):
            raise PermissionDenied(f"this key may not {' or '.join(ops)} (allowed: {self.access})")

    def _expect(self, req: dict) -> object:
        if "expect" not in req:
            return ANY
        v = req["expect"]
        return None if v is None else digestmod.validate(v) if isinstance(v, str) else \
            self._bad("expect must be a digest or null")

    @staticmethod
    def _bad(msg: str) -> Any:
        raise BadRequest(msg)

    # operations ----------------------------------------------------------------------
    def op_hello(self, req: dict) -> str:
        versions = req.get("versions", [1])
        if not isinstance(versions, list):
            raise BadRequest("hello: versions must be a list")
        common = [v for v in framing.PROTOCOL_VERSIONS if v in versions]
        if not common:
            raise TransportError(f"no common protocol version (server speaks "
                                 f"{list(framing.PROTOCOL_VERSIONS)}, client {versions})")
        self._reply(version=max(common), server=SERVER, capabilities=list(framing.CAPABILITIES),
                    access=self.access.summary(), namespace=self.ns,
                    max_chunk=framing.MAX_CHUNK)
        return str(req.get("client", ""))[:80]

    def op_list(self, req: dict) -> str:
        self._require("read")
        name = self._field(req, "name", str, required=False)
        prefix = self._field(req, "prefix", str, required=False)
        pattern = self._field(req, "pattern", str, required=False)
        top = self._full(name) if name is not None else self.ns
        records = self.repo.list_refs(top) if name is not None else self._list_under(top)
        out = []
        for r in records:
            local = self._local(r.name)
            if local is None or not self.access.can("read", r.name):
                continue
            if prefix is not None and not local.startswith(prefix):
                continue
            if pattern is not None and not (fnmatch.fnmatchcase(local, pattern) or
                                            fnmatch.fnmatchcase(f"{local}:{r.version}", pattern)):
                continue
            out.append({"name": local, "version": r.version, "digest": r.digest,
                        "mtime": r.mtime})
        self._reply(refs=out)
        return f"{len(out)} refs"

    def _list_under(self, top: str | None) -> list:
        if top is None:
            return self.repo.list_refs()
        # The namespace's own refs plus every name below it.
        return [r for r in self.repo.list_refs()
                if r.name == top or r.name.startswith(top + "/")]

    def op_get_ref(self, req: dict) -> str:
        name = self._field(req, "name", str)
        full = self._full(name)
        if not (self.access.can("read", full) or self.access.can("write", full)):
            self._require("read", full)
        version = refmod.validate_version(self._field(req, "version", str))
        d = self.repo.get_ref(full, version)
        self._reply(digest=d)
        return f"{name}:{version}"

    def op_resolve(self, req: dict) -> str:
        ref = refmod.parse(self._field(req, "ref", str))
        full = self._full(ref.name)
        self._require("read", full)
        rec = self.repo.resolve(refmod.Reference(full, ref.version, ref.digest))
        self._reply(name=ref.name, version=rec.version, digest=rec.digest, mtime=rec.mtime)
        return f"{ref} -> {digestmod.short(rec.digest)}"

    def op_missing(self, req: dict) -> str:
        self._require_any("read", "write")
        digests = self._field(req, "digests", list)
        if len(digests) > 100000:
            raise BadRequest("missing: at most 100000 digests per request")
        wanted = [digestmod.validate(d) for d in digests]
        self._hold(wanted)  # before the answer: what it says exists must stay
        missing = self.repo.missing_blobs(wanted)
        self._reply(missing=missing)
        return f"{len(missing)}/{len(wanted)} missing"

    def op_blob_size(self, req: dict) -> str:
        self._require_any("read", "write")
        d = self._digest(req)
        self._reply(size=self.repo.blob_size(d))
        return digestmod.short(d)

    def op_get_blob(self, req: dict) -> str:
        self._require("read")
        d = self._digest(req)
        if not self._may_read_blob(d):
            raise NotFound(f"blob {d} not found")  # what an absent blob gets: nothing leaks
        offset = self._field(req, "offset", int, required=False) or 0
        length = self._field(req, "length", int, required=False)
        try:
            f = open(self.repo.blob_path(d), "rb")  # noqa: SIM115 - closed after the send
        except FileNotFoundError:
            raise NotFound(f"blob {d} not found") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if not 0 <= offset <= size:
                raise BadRequest(f"get-blob: offset {offset} outside the blob (size {size})")
            n = size - offset if length is None else length
            if not 0 <= n <= size - offset:
                raise BadRequest(f"get-blob: length {n} outside the blob")
            self._reply(size=size, offset=offset, length=n)
            self._send_range(f, offset, n)
        return f"{digestmod.short(d)} {n}B"

    def _may_read_blob(self, d: str) -> bool:
        """A key limited to some names (or a namespace) reads only the blobs those names
        have, as on the HTTP door: knowing a digest is not enough."""
        if self.access.prefixes is None and self.ns is None:
            return True
        if self._links is None:
            self._links = BlobLinks(self.repo)
        names = [n for n in http_store.names(self.repo)
                 if self._local(n) is not None and self.access.can("read", n)]
        return any(self._links.linked(n, d) for n in names)

    def _send_range(self, f: Any, offset: int, n: int) -> None:
        """Exactly n bytes of f from offset; sendfile(2) when writing to a plain fd."""
        out_fd = None
        if isinstance(self.wfile, (io.BufferedWriter, io.FileIO)):
            try:
                out_fd = self.wfile.fileno()
            except (OSError, ValueError):
                out_fd = None
        sent = 0
        try:
            if out_fd is not None:
                self.wfile.flush()
                try:
                    while sent < n:
                        k = os.sendfile(out_fd, f.fileno(), offset + sent, min(n - sent, 8 << 20))
                        if k == 0:
                            raise _Close("blob file shorter than its size")
                        sent += k
                    return
                except OSError as e:
                    if sent or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
            f.seek(offset)
            while sent < n:
                chunk = f.read(min(n - sent, framing.CHUNK))
                if not chunk:
                    raise _Close("blob file shorter than its size")
                self.wfile.write(chunk)
                sent += len(chunk)
            self.wfile.flush()
        except (OSError, ValueError, EOFError) as e:
            raise _Close(f"client gone during download ({e})") from None

    def op_put_blob(self, req: dict) -> str:
        self._require("write")
        d = self._digest(req)
        size = self._field(req, "size", int, required=False)
        if size is not None and size < 0:
            raise BadRequest("put-blob: negative size")
        self._hold([d])
        if self.repo.has_blob(d):
            self._reply(offset=self.repo.blob_size(d), exists=True)
            return f"{digestmod.short(d)} exists"
        w: BlobWriter = self.repo.upload(d, size)
        try:
            if getattr(w, "done", False):  # another client finished it while we waited
                w.commit()
                self._reply(offset=self.repo.blob_size(d), exists=True)
                return f"{digestmod.short(d)} exists"
            start = w.offset
            self._reply(offset=start, exists=False)
            received, failure, aborted = self._receive(w)
            if aborted:
                w.abort()
                self._reply(aborted=True)
                return f"{digestmod.short(d)} aborted at {start + received}B"
            if failure is None:
                try:
                    w.commit()
                except CockerError as e:
                    failure = e
            else:
                w.abort()
            if failure is not None:
                raise failure
            self._reply()
            return f"{digestmod.short(d)} {received}B from {start}"
        except BaseException:
            w.abort()
            raise

    def _receive(self, w: BlobWriter) -> tuple[int, CockerError | None, bool]:
        """Read the chunk stream to its end marker; a write failure is remembered and the
        rest drained, so the reply comes when the client listens for it."""
        received = 0
        failure: CockerError | None = None
        while True:
            try:
                (n,) = framing.LEN.unpack(framing.read_exact(self.rfile, 4))
            except framing.ConnectionLost as e:
                raise _Close(f"client gone during upload ({e})") from None
            if n == framing.END:
                return received, failure, False
            if n == framing.ABORT:
                return received, failure, True
            if n > framing.MAX_CHUNK:
                self._try_send(framing.error_frame(
                    TransportError(f"chunk of {n} bytes over the {framing.MAX_CHUNK} limit")))
                raise _Close("oversized chunk")
            try:
                data = framing.read_exact(self.rfile, n)
            except framing.ConnectionLost as e:
                raise _Close(f"client gone during upload ({e})") from None
            received += n
            if failure is None:
                try:
                    w.write(data)
                except CockerError as e:
                    failure = e

    def op_put_ref(self, req: dict) -> str:
        name, full = self._name(req, "write")
        version = refmod.validate_version(self._field(req, "version", str))
        d = self._digest(req)
        self.repo.put_ref(full, version, d, expect=self._expect(req))
        self._reply()
        return f"{name}:{version} -> {digestmod.short(d)}"

    def op_delete_ref(self, req: dict) -> str:
        name, full = self._name(req, "delete")
        version = refmod.validate_version(self._field(req, "version", str))
        self.repo.delete_ref(full, version, expect=self._expect(req))
        self._reply()
        return f"{name}:{version}"

    def op_gc(self, req: dict) -> str:
        self._require("gc")
        grace = self._field(req, "grace", (int, float), required=False)
        grace = float(grace) if grace is not None else GC_GRACE
        if grace < 0:
            raise BadRequest("gc: grace must be >= 0")
        dry = bool(self._field(req, "dry_run", bool, required=False))
        # The grace is honoured as asked: pushes in flight lease their blobs (see _hold).
        removed, freed = http_store.gc(self.repo, grace=grace, dry_run=dry)
        self._reply(removed=removed, freed=freed, grace=grace)
        return f"removed {removed} blobs, {freed}B"
