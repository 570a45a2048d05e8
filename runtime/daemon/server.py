"""`cocker daemon`: JSON over HTTP on a unix socket (root only) and, optionally, loopback TCP.

Unlike brockerd (all interfaces, no authentication, state in memory):
- the unix socket is mode 0600 and every peer's uid is checked (SO_PEERCRED): root or the
  daemon's own user only;
- TCP listens on a loopback address (brocker's port 3000 is the usual choice); any other address
  is refused unless a token file is given, and with a token file every TCP request must carry
  `Authorization: Bearer <token>`; without one, only connections from root's sockets are served
  (the owner of the client's end, read from the kernel's socket table);
- nothing is kept in memory: every answer comes from the store on disk.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import signal
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common.errors import AlreadyExists, CockerError, PermissionDenied, RuntimeFailure, UsageError
from runtime.daemon import peer, restarts, routes

DEFAULT_SOCKET = "/run/cocker/cocker.sock"
MAX_BODY = 4 * 1024 * 1024


class Handler(BaseHTTPRequestHandler):
    server_version = "cocker-daemon"
    protocol_version = "HTTP/1.1"
    peer_uid: int | None = None        # a TCP client's uid, looked up once per connection

    def address_string(self) -> str:
        return self.server.label  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args) -> None:
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(fmt, *args)

    def _reply(self, status: int, obj) -> None:
        if isinstance(obj, routes.PlainText):
            data, ctype = str(obj).encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = (json.dumps(obj, default=str) + "\n").encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _refusal(self) -> str | None:
        """Why this request may not be served, or None when it may."""
        srv = self.server
        if srv.kind == "unix":  # type: ignore[attr-defined]
            uid = peer.unix_peer_uid(self.connection)
            return None if uid in (0, os.geteuid()) else f"uid {uid} may not use this socket"
        token = srv.token  # type: ignore[attr-defined]
        if token is not None:
            got = self.headers.get("Authorization", "")
            if hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return None
            return "this daemon needs 'Authorization: Bearer <token>' (COCKER_TOKEN)"
        # No token: every local user can reach loopback, so only root's sockets are served
        # (the API runs containers as root).
        if self.peer_uid is None:
            self.peer_uid = peer.tcp_peer_uid(self.connection)
        if self.peer_uid == 0:
            return None
        who = "an unknown user" if self.peer_uid is None else f"uid {self.peer_uid}"
        return (f"{who} may not use this daemon: without --token-file its TCP door serves "
                "root only")

    def _handle(self) -> None:
        refusal = self._refusal()
        if refusal is not None:
            tokened = self.server.token is not None  # type: ignore[attr-defined]
            self._reply(401 if tokened else 403, {"error": refusal, "type": "PermissionDenied"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self._reply(413 if length > 0 else 400, {"error": "bad Content-Length", "type": "UsageError"})
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        body = None
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as e:
                self._reply(400, {"error": f"request body is not JSON: {e}", "type": "UsageError"})
                return
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        req = routes.Request(self.command, url.path, query, body, self.server.home)  # type: ignore[attr-defined]
        status, obj = routes.dispatch(req)
        self._reply(status, obj)

    do_GET = do_POST = do_DELETE = do_PUT = _handle


class _Mixin:
    daemon_threads = True
    kind = "tcp"
    label = "tcp"
    token: str | None = None
    home = ""
    verbose = False


class UnixServer(_Mixin, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    kind = "unix"
    label = "unix"

    def server_bind(self) -> None:
        # 0600 from the first moment: no window in which another user could connect
        old = os.umask(0o177)
        try:
            super().server_bind()
        finally:
            os.umask(old)
        os.chmod(str(self.server_address), 0o600)


class TcpServer(_Mixin, ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer's own server_bind asks DNS for the host's name between bind and listen:
        # with a slow resolver the door is bound yet refuses connections for seconds
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class TcpServer6(TcpServer):
    address_family = socket.AF_INET6     # --listen [::1]:PORT (brocker's client may use ::1)


def read_token(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionDenied(f"token file {path} is readable by others; chmod 600 it")
    if len(token) < 16:
        raise UsageError(f"token in {path} is too short (at least 16 characters)")
    return token


def parse_listen(text: str, token: str | None) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
        portn = int(port)
    except ValueError:
        raise UsageError(f"--listen {text!r}: expected IP:PORT, e.g. 127.0.0.1:3000") from None
    if not 0 < portn < 65536:
        raise UsageError(f"--listen {text!r}: bad port")
    if not ip.is_loopback and token is None:
        raise UsageError(f"refusing to listen on {host} without --token-file: the API runs "
                         "containers as root (use a loopback address, or give a token)")
    return str(ip), portn


def _prepare_socket(path: str) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, mode=0o700, exist_ok=True)
    if os.path.exists(path) or os.path.islink(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise AlreadyExists(f"{path} exists and is not a socket")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            os.unlink(path)                # a stale socket of a daemon that died
        else:
            raise AlreadyExists(f"a daemon is already listening on {path}")
        finally:
            s.close()


def serve(home: str, socket_path: str = DEFAULT_SOCKET, listen: str | None = None,
          token_file: str | None = None, verbose: bool = False,
          ready=None) -> None:
    """Serve until SIGTERM/SIGINT; removes the socket on the way out."""
    if os.geteuid() != 0:
        raise PermissionDenied("the daemon runs containers and networks: run it as root")
    token = read_token(token_file) if token_file else None
    tcp_addr = parse_listen(listen, token) if listen else None
    _prepare_socket(socket_path)
    servers: list[socketserver.BaseServer] = []
    started: list[socketserver.BaseServer] = []
    try:
        us = UnixServer(socket_path, Handler)
        us.home, us.verbose = home, verbose
        servers.append(us)
        if tcp_addr:
            try:
                ts = (TcpServer6 if ":" in tcp_addr[0] else TcpServer)(tcp_addr, Handler)
            except OSError as e:
                raise AlreadyExists(f"cannot listen on {listen}: {e.strerror}") from None
            ts.home, ts.verbose, ts.token = home, verbose, token
            ts.label = f"tcp {listen}"
            servers.append(ts)
        # services made before this daemon (or before a reboot) get their monitors back
        try:
            routes.worker(home, "ensure_monitors", {})
        except (CockerError, routes.HttpError, subprocess.SubprocessError, OSError) as e:
            # a service that cannot get its monitor back must not keep the API down
            print(f"cocker daemon: warning: restoring service monitors: {e}", file=sys.stderr)
        for s in servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
            started.append(s)
        stop = threading.Event()

        def restart_one(name: str, at_daemon_start: bool) -> bool:
            try:
                out = routes.worker(home, "container_restart_policy",
                                    {"name": name, "at_daemon_start": at_daemon_start})
            except (routes.HttpError, subprocess.SubprocessError) as e:
                raise RuntimeFailure(str(e)) from None
            return bool(out.get("restarted"))
        policies = threading.Thread(target=restarts.keep_policies, args=(home, stop, restart_one),
                                    daemon=True)
        policies.start()
        me = os.getpid()

        def on_signal(*_) -> None:
            if os.getpid() != me:       # a forked child of a library: just go
                os._exit(0)
            stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        if ready:
            ready()
        while not stop.wait(1):
            pass
        policies.join(30)
    finally:
        for s in started:
            s.shutdown()
        for s in servers:
            s.server_close()
        if os.path.exists(socket_path):
            os.unlink(socket_path)

