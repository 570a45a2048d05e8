"""Which transport serves a URL: one table from URL scheme to the module that parses and opens it.

Each transport module offers `check_url(url)` (refuse a malformed URL without contacting
anything) and `open_url(url, opts)` (a connected `Repository`). Modules are imported on first
use only: paramiko and the HTTP client cost start-up time that a local command never needs.
"""

from __future__ import annotations

import importlib
import re
from typing import Protocol, cast

from registry.repo.repository import Repository
from registry.transports.options import RepoOptions


class TransportModule(Protocol):
    def check_url(self, url: str) -> None: ...

    def open_url(self, url: str, opts: RepoOptions) -> Repository: ...


MODULES = {
    "dir": "registry.transports.dir.transport",
    "ssh": "registry.transports.ssh.transport",
    "srepo": "registry.transports.srepo.transport",
    "http": "registry.transports.http.transport",
}
SCHEMES = {"file": "dir", "ssh": "ssh", "srepo": "srepo", "http": "http", "https": "http"}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP_LIKE_RE = re.compile(r"^([^@/:\s]+@)?[^@/:\s]+:")


def transport_name(spec: str) -> str | None:
    """The transport a URL or path names, or None when `spec` can only be a configured repo's name."""
    m = _SCHEME_RE.match(spec)
    if m:
        return SCHEMES.get(m.group(1).lower())
    if spec.startswith(("/", "./", "../", "~")) or spec in (".", ".."):
        return "dir"
    if _SCP_LIKE_RE.match(spec):
        return "ssh"  # scp-like [user@]host:path
    return None


def transport(name: str) -> TransportModule:
    return cast(TransportModule, importlib.import_module(MODULES[name]))
