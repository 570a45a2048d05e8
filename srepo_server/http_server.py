"""The HTTP plumbing under the door: a thread per connection, TLS, limits, request bodies.

Why threads: blob transfers are long, blocking file and socket I/O (reads, sends, fsync), so a
thread per connection keeps a slow client from stalling others without an event loop's
care; idle connections cost a parked thread and end at the idle timeout.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from common.errors import UsageError


class ClientGone(Exception):
    """The client closed the connection or sent a body that breaks its own framing."""


class BadBody(Exception):
    """The body's framing is malformed (bad chunk size line, unsupported transfer coding)."""


def parse_addr(addr: str, default_port: int = 5000) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, :PORT or PORT; the host defaults to 127.0.0.1."""
    host, port = "127.0.0.1", default_port
    a = addr.strip()
    if a.startswith("["):
        h, _, rest = a[1:].partition("]")
        host = h
        a = rest[1:] if rest.startswith(":") else ""
        p = a
    elif a.count(":") == 1:
        h, _, p = a.partition(":")
        host = h or host
    elif a.isdigit():
        p = a
    else:
        host, p = a, ""
    if p:
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise UsageError(f"invalid port in {addr!r}")
        port = int(p)
    return host, port


class Body:
    """A request body read with constant memory: Content-Length or chunked framing."""

    def __init__(self, rfile, length: int | None, chunked: bool, on_first_read=None) -> None:
        self.rfile = rfile
        # without a length (and not chunked) there is no body: `done` from the start
        self.left: int = (length or 0) if not chunked else 0
        self.chunked = chunked
        self.done = (not chunked and not length)
        self.read_bytes = 0
        self._on_first = on_first_read

    def _first(self) -> None:
        if self._on_first:
            cb, self._on_first = self._on_first, None
            cb()

    def read(self, n: int = 1 << 20) -> bytes:
        """Up to `n` bytes (b"" at the end); chunked bodies are gathered across chunks, so
        clients that send many small chunks still cost one write per ~`n` bytes."""
        if not self.chunked:
            return self._piece(n)
        parts, got = [], 0
        while got < n and not self.done:
            piece = self._piece(n - got)
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def _piece(self, n: int) -> bytes:
        if self.done:
            return b""
        self._first()
        if self.chunked and self.left == 0:
            self._next_chunk()
            if self.done:
                return b""
        want = min(n, self.left)
        data = self.rfile.read(want)
        if not data or len(data) < want:
            raise ClientGone("connection closed in the middle of the body")
        self.left -= len(data)
        self.read_bytes += len(data)
        if self.left == 0:
            if self.chunked:
                if self.rfile.read(2) != b"\r\n":
                    raise BadBody("chunk not followed by CRLF")
            else:
                self.done = True
        return data

    def _next_chunk(self) -> None:
        line = self.rfile.readline(1024)
        if not line:
            raise ClientGone("connection closed in the middle of the body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise BadBody("malformed chunk size") from None
        if size < 0:
            raise BadBody("malformed chunk size")
        if size == 0:
            while True:  # trailers, up to the blank line
                t = self.rfile.readline(8192)
                if not t:
                    raise ClientGone("connection closed in the middle of the body")
                if t in (b"\r\n", b"\n"):
                    break
            self.done = True
            return
        self.left = size

    def read_all(self, limit: int) -> bytes | None:
        """Everything, or None as soon as it passes `limit` bytes."""
        parts, total = [], 0
        while chunk := self.read(min(1 << 20, limit + 1 - total)):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                return None
        return b"".join(parts)

    def drain(self, limit: int = 1 << 20) -> bool:
        """Skip a small unread rest so the connection can be reused; False if too big."""
        skipped = 0
        try:
            while chunk := self.read(1 << 16):
                skipped += len(chunk)
                if skipped > limit:
                    return False
        except (ClientGone, BadBody, OSError):
            return False
        return True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 512
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler, app, *, tls: ssl.SSLContext | None,
                 max_connections: int = 2048) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.app = app
        self.tls = tls
        self.max_connections = max_connections
        self.connections = 0
        self.busy = 0  # requests being handled right now (what a clean shutdown waits for)
        self.count_lock = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request, client_address) -> None:
        with self.count_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if full:
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\nRetry-After: 1\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self.count_lock:
                self.connections -= 1
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            request.settimeout(self.app.idle_timeout)
            # Responses are written as headers then body; with Nagle on, a keep-alive
            # client's next request waits for the delayed ACK (~40 ms) each time.
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                try:
                    # The handshake runs here, in the connection's own thread, never in accept.
                    request = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    request.close()
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self.count_lock:
                self.connections -= 1

    def handle_error(self, request, client_address) -> None:
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError, ssl.SSLError, ClientGone)):
            return
        self.app.log_line(f"srepo-server: error serving {client_address[0]}: "
                          f"{type(e).__name__}: {e}")

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.count_lock:
                if self.busy == 0:
                    return True
            time.sleep(0.05)
        return False


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load TLS certificate/key ({cert}, {key}): {e}") from None
    return ctx
