"""`srepo://[user@]host[:port][/prefix]`: a repository behind srepo-server's own SSH door.

The connection is an ordinary SSH connection (`registry.transports.ssh.connect.connect`: ~/.ssh/config, the
agent, `-i` keys, known_hosts checking, explicit opt-in for a new host key); on it each
exec channel running `srepo [PREFIX]` carries the smart protocol (`registry.wire.framing`). Several
channels share the one connection so the copy routine moves several blobs at once.
`/prefix` is a namespace on the server: `app:1` pushed to srepo://host/team is stored as
`team/app:1`. The default port is 2222 (srepo-server's example port), not OpenSSH's 22.
"""

from __future__ import annotations

import shlex
import urllib.parse
from typing import Any

import paramiko

from common.errors import CockerError, InvalidReference, TransportError
from registry.oci import reference as refmod
from registry.repo.repository import Repository
from registry.transports.options import RepoOptions
from registry.transports.smart.client import SmartRepo
from registry.transports.ssh import connect as ssh
from registry.wire.channel import tune_allocator

DEFAULT_PORT = 2222
WINDOW = 64 << 20
# Our door is paramiko too and accepts big packets; bigger packets mean less Python per byte.
MAX_PACKET = 1 << 17
CHANNELS = 4


def parse_url(url: str) -> tuple[str | None, str, int, str]:
    """(user, host, port, prefix) of a srepo:// URL."""
    u = urllib.parse.urlsplit(url)
    if u.scheme != "srepo" or not u.hostname:
        raise InvalidReference(f"invalid srepo URL {url!r}: use srepo://[user@]host[:port][/prefix]")
    try:
        port = u.port or DEFAULT_PORT
    except ValueError:
        raise InvalidReference(f"invalid port in {url!r}") from None
    if u.query or u.fragment:
        raise InvalidReference(f"invalid srepo URL {url!r}: no query or fragment allowed")
    prefix = urllib.parse.unquote(u.path).strip("/")
    if prefix:
        try:
            refmod.validate_name(prefix)
        except InvalidReference:
            raise InvalidReference(f"invalid prefix {prefix!r} in {url!r}: it must be an image "
                                   "name path such as team or team/sub") from None
    return (urllib.parse.unquote(u.username) if u.username else None), u.hostname, port, prefix


def open_srepo(url: str, identity: Any = None, accept_new: bool = False, *,
               known_hosts: Any = None, config_path: str | None = "~/.ssh/config",
               channels: int = CHANNELS, **ssh_opts: Any) -> SmartRepo:
    """Connect to the srepo SSH door at `url` and return the repository."""
    user, host, port, prefix = parse_url(url)
    tune_allocator()
    client = ssh.connect(host, port, user, identity=identity, accept_new=accept_new,
                         known_hosts=known_hosts, config_path=config_path, **ssh_opts)
    command = "srepo" + (" " + shlex.quote(prefix) if prefix else "")

    def open_channel() -> paramiko.Channel:
        t = client.get_transport()
        if t is None or not t.is_active():
            raise TransportError(f"{url}: connection lost")
        try:
            chan = t.open_session(window_size=WINDOW, max_packet_size=MAX_PACKET)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise TransportError(f"{url}: cannot open a channel: {e}") from None
        return chan

    try:
        return SmartRepo.over_channel(open_channel(), opener=open_channel,
                                      max_connections=channels, url=url,
                                      client="cocker srepo://").owning(client)
    except CockerError:
        client.close()
        raise
    except BaseException:
        client.close()
        raise


def check_url(url: str) -> None:
    parse_url(url)


def open_url(url: str, opts: RepoOptions) -> Repository:
    return open_srepo(url, identity=opts.identity, accept_new=opts.accept_new,
                      known_hosts=opts.known_hosts, config_path=opts.config_path)
