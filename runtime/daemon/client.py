"""Talking to a cocker daemon: `cocker --host unix:///run/cocker/cocker.sock ...` or
`--host http://127.0.0.1:3000`.

`forward(url, argv)` sends a whole command line to the daemon, which runs it with its own
store and privileges and sends back stdout, stderr and the exit code. Interactive commands
(a terminal to attach to) cannot travel that way and are refused with a clear message.
A token for a TCP daemon comes from COCKER_TOKEN or the file named by COCKER_TOKEN_FILE.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import urllib.parse
from typing import Any

from common.errors import TransportError, UsageError

TIMEOUT = 3700.0
INTERACTIVE = {("container", "attach"), ("image", "edit"), ("container", "edit")}


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def _connection(url: str) -> http.client.HTTPConnection:
    u = urllib.parse.urlsplit(url)
    if u.scheme == "unix":
        path = u.path or u.netloc
        if not path:
            raise UsageError(f"--host {url!r}: expected unix:///path/to/socket")
        return UnixHTTPConnection(path)
    if u.scheme == "http":
        if not u.hostname:
            raise UsageError(f"--host {url!r}: expected http://127.0.0.1:PORT")
        return http.client.HTTPConnection(u.hostname, u.port or 3000, timeout=TIMEOUT)
    raise UsageError(f"--host {url!r}: use unix:///path or http://HOST:PORT")


def _token() -> str | None:
    tok = os.environ.get("COCKER_TOKEN")
    if tok:
        return tok.strip()
    path = os.environ.get("COCKER_TOKEN_FILE")
    if path:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read COCKER_TOKEN_FILE {path}: {e.strerror}") from None
    return None


def request(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call: (HTTP status, decoded JSON body)."""
    conn = _connection(url)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    tok = _token()
    if tok and not url.startswith("unix:"):
        headers["Authorization"] = f"Bearer {tok}"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise TransportError(f"cannot reach the cocker daemon at {url}: "
                             f"{getattr(e, 'strerror', None) or e}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw) if raw.strip() else None
    except ValueError:
        raise TransportError(f"the daemon at {url} answered something that is not JSON "
                             f"(HTTP {resp.status})") from None


def check_forwardable(argv: list[str]) -> None:
    words = [a for a in argv if not a.startswith("-")]
    if tuple(words[:2]) in INTERACTIVE:
        raise UsageError(f"`cocker {' '.join(words[:2])}` needs a terminal and cannot go through "
                         "a daemon; run it on the daemon's host without --host")
    if words[:1] == ["container"] and len(words) > 1 and words[1] in ("run", "exec", "start"):
        for a in argv[:argv.index("--")] if "--" in argv else argv:
            if a in ("-i", "-t", "-it", "-ti", "--interactive", "--tty", "--attach", "-a"):
                raise UsageError(f"{a}: interactive containers cannot go through a daemon; run "
                                 "detached (-d) or without a terminal, or drop --host")


def forward(url: str, argv: list[str]) -> int:
    """Run `cocker ARGV` on the daemon; print its output here; return its exit code."""
    check_forwardable(argv)
    status, out = request(url, "POST", "/api/v2/cli", {"argv": list(argv)})
    if status != 200 or not isinstance(out, dict) or "exit_code" not in out:
        msg = out.get("error") if isinstance(out, dict) else out
        raise TransportError(f"the daemon at {url} refused the command (HTTP {status}): {msg}")
    sys.stdout.write(out.get("stdout", ""))
    sys.stdout.flush()
    sys.stderr.write(out.get("stderr", ""))
    sys.stderr.flush()
    return int(out["exit_code"])


ROOT_VALUE_OPTS = ("--home", "--host")
ROOT_FLAGS = ("-q", "--quiet")


def split_root(argv: list[str]) -> tuple[str | None, list[str]]:
    """Find --host among the root options (before the command); returns (url, argv to send).

    --home is dropped: a forwarded command runs in the daemon's store."""
    host = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ROOT_VALUE_OPTS and i + 1 < len(argv):
            if a == "--host":
                host = argv[i + 1]
            i += 2
            continue
        if a.startswith("--host="):
            host = a.split("=", 1)[1]
        elif a.startswith("--home="):
            pass
        elif a in ROOT_FLAGS:
            rest.append(a)
        else:
            break
        i += 1
    return host, rest + argv[i:]


def maybe_forward(argv: list[str]) -> int | None:
    """The CLI's hook: the exit code when the command went through a daemon, else None."""
    host, rest = split_root(argv)
    host = host or os.environ.get("COCKER_HOST") or None
    if not host:
        return None
    words = [a for a in rest if not a.startswith("-")]
    if not words or words[0] == "daemon" or any(a in ("-h", "--help", "--version") for a in rest[:1]):
        return None
    return forward(host, rest)
