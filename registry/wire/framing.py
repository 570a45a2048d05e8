"""The smart protocol: cocker's repository protocol over any byte stream; its framing and error codes.

Imported by both ends: the client (`registry.transports.smart.client`) and the server
(`srepo_server.handler`).

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
    missing     digests: [...] (batch)           -> missing: [...]  (in request order, deduplicated;
                                                    a writer's connection leases all of them
                                                    until it closes, and every blob it sends)
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
    gc          [grace], [dry_run]               -> removed, freed, grace  (the grace asked
                                                    is honoured: pushes in flight survive by
                                                    their leases, see below)

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

import json
import struct
from typing import Any

from common import errors as errmod
from common.errors import CockerError, TransportError

PROTOCOL_VERSIONS = (1,)
CHUNK = 1 << 20                      # payload chunk the client sends / server reads from disk
MAX_CHUNK = 16 << 20                 # largest chunk a server accepts
MAX_REQUEST_LINE = 4 << 20
MAX_REPLY_LINE = 64 << 20
END = 0
ABORT = 0xFFFFFFFF
LEN = struct.Struct(">I")
CAPABILITIES = ("list", "get-ref", "resolve", "missing", "blob-size", "get-blob", "put-blob",
                "put-blob-resume", "put-ref", "delete-ref", "gc")


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
    except RecursionError:
        raise BadFrame("bad frame: JSON nested too deeply") from None
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
    if not isinstance(exc, CockerError) or ERRORS.get(name) is not type(exc):
        # A subclass the other side may not know: send the nearest public ancestor.
        name = next((c.__name__ for c in type(exc).__mro__ if ERRORS.get(c.__name__) is c),
                    "CockerError")
    return {"ok": False, "error": name, "message": str(exc) or name}


def raise_error(frame: dict) -> None:
    """Raise the CockerError an error frame stands for."""
    cls = ERRORS.get(str(frame.get("error")), CockerError)
    raise cls(str(frame.get("message") or "remote error"))


ERRORS: dict[str, type[CockerError]] = {
    name: obj for name, obj in vars(errmod).items()
    if isinstance(obj, type) and issubclass(obj, CockerError)}
