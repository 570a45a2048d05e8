"""`ssh://[user@]host[:port]/path` and the scp-like `[user@]host:path`."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from common.errors import UsageError


@dataclass
class SshTarget:
    user: str | None
    host: str
    port: int | None
    path: str
    query: dict[str, str]

    def url(self) -> str:
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        path = self.path if self.path.startswith("/") else "/~/" + self.path
        return f"ssh://{who}{self.host}{port}{path}"


def parse_ssh(spec: str) -> SshTarget:
    """`ssh://host/~/dir` and `host:dir` are relative to the remote home."""
    if spec.lower().startswith("ssh://"):
        u = urllib.parse.urlsplit(spec)
        if not u.hostname:
            raise UsageError(f"invalid ssh URL {spec!r}: no host")
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"invalid port in {spec!r}") from None
        path = urllib.parse.unquote(u.path or "")
        if path.startswith("/~/"):
            path = path[3:]
        elif path in ("/~", ""):
            path = ""
        query = dict(urllib.parse.parse_qsl(u.query))
        user = urllib.parse.unquote(u.username) if u.username else None
        host = u.hostname
    else:
        who, _, path = spec.partition(":")
        user, _, host = who.rpartition("@")
        user = user or None
        port, query = None, {}
        if path.startswith("~/"):
            path = path[2:]
        elif path == "~":
            path = ""
    return SshTarget(user, host, port, path or ".", query)
