"""cocker 0.x repositories: a flat directory of `*.cockerimage` files, reached over SSH (SFTP)."""

from __future__ import annotations

from common.errors import UsageError
from registry.transports.legacy.repo import LegacyRepo
from registry.transports.options import RepoOptions
from registry.transports.ssh.transport import connect_ssh
from registry.transports.ssh.url import parse_ssh
from registry.transports.table import transport_name


def open_legacy_url(url: str, opts: RepoOptions) -> LegacyRepo:
    """The legacy repo at an ssh:// URL (default directory: the remote home)."""
    kind = transport_name(url)
    if kind != "ssh":
        if kind == "dir":
            raise UsageError("legacy repos are reached over ssh (ssh://user@host[/dir])")
        raise UsageError(f"{url}: legacy cocker repos are ssh:// only")
    t = parse_ssh(url)
    client = connect_ssh(t, opts)
    try:
        return LegacyRepo(client, t.path, url=t.url())
    except BaseException:
        client.close()
        raise
