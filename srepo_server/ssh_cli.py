"""Command-line options of the stdio and SSH doors, attached to `srepo-server` by main.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import click

from srepo_server.access import Access


def ssh_options(f: Callable) -> Callable:
    opts = [
        click.option("--ssh", "ssh", metavar="HOST:PORT",
                     help="Serve the smart protocol over srepo-server's own SSH server "
                     "(clients use srepo://HOST:PORT); the host defaults to 127.0.0.1."),
        click.option("--host-key", type=click.Path(dir_okay=False),
                     help="SSH host key file for --ssh (an ed25519 key is generated if missing)."),
        click.option("--authorized-keys", type=click.Path(dir_okay=False),
                     help="Keys allowed in through --ssh, in authorized_keys format; options "
                     'srepo-perms="read,write,delete,gc|all" and srepo-prefixes="team/*" '
                     "set each key's permissions (default: read everything)."),
        click.option("--perms", metavar="LIST",
                     help="With --stdio: what the caller may do (read,write,delete,gc|all; "
                     "default all), e.g. in an OpenSSH command= line."),
        click.option("--prefixes", metavar="LIST",
                     help="With --stdio: limit the caller to these name patterns (team/*,tools)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def stdio_access(opts: dict[str, Any]) -> Access | None:
    if opts.get("perms") is None and opts.get("prefixes") is None:
        return None
    return Access.parse(opts.get("perms") or "all", opts.get("prefixes"))


def run_ssh(root: str | None, opts: dict[str, Any], *, background: bool = False) -> None:
    if not root:
        raise click.UsageError("--ssh needs --root PATH")
    if not opts.get("host_key") or not opts.get("authorized_keys"):
        raise click.UsageError("--ssh needs --host-key FILE and --authorized-keys FILE")
    from srepo_server import ssh_door
    if background:
        door = ssh_door.SshDoor(root, opts["ssh"], opts["host_key"], opts["authorized_keys"])
        threading.Thread(target=door.run, name="srepo-ssh-door", daemon=True).start()
        return
    ssh_door.serve(root, opts["ssh"], opts["host_key"], opts["authorized_keys"])
