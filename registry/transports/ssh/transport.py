"""OpenSSH hosts: the smart protocol over `srepo-server --stdio --root PATH` when the remote
has it, else SFTP on the same layout. `?mode=sftp|smart` and `?command=PATH` override the
choice and the remote server's path."""

from __future__ import annotations

import contextlib
import os

import paramiko

from common.errors import CockerError, NotARepository, TransportError, UsageError
from registry.repo.repository import Repository
from registry.transports.options import RepoOptions
from registry.transports.smart.client import SmartRepo
from registry.transports.ssh import connect as ssh
from registry.transports.ssh.sftp_repo import SftpRepo
from registry.transports.ssh.url import SshTarget, parse_ssh
from registry.wire.channel import tune_allocator

DEFAULT_COMMAND = "srepo-server"
SMART_PROBE_TIMEOUT = 15.0


def check_url(url: str) -> None:
    parse_ssh(url)


def open_url(url: str, opts: RepoOptions) -> Repository:
    return open_ssh(parse_ssh(url), opts)


def connect_ssh(t: SshTarget, opts: RepoOptions) -> paramiko.SSHClient:
    return ssh.connect(t.host, t.port, t.user, identity=opts.identity,
                       accept_new=opts.accept_new, known_hosts=opts.known_hosts,
                       config_path=opts.config_path)


def open_ssh(t: SshTarget, opts: RepoOptions) -> Repository:
    tune_allocator()  # blobs cross this process in MiB-sized buffers, whichever the mode
    mode = t.query.get("mode", opts.mode or "auto")
    if mode not in ("auto", "smart", "sftp"):
        raise UsageError(f"invalid mode {mode!r}: use auto, smart or sftp")
    command = t.query.get("command") or opts.remote_command or os.environ.get(
        "COCKER_REMOTE_SREPO") or DEFAULT_COMMAND
    client = connect_ssh(t, opts)
    url = t.url()
    try:
        if opts.init:
            if mode == "sftp":  # the repo that created the layout serves the push
                return SftpRepo(client, t.path, url=url, create=True)
            SftpRepo(client, t.path, url=url, create=True, own_client=False).close()
        if mode in ("auto", "smart"):
            repo = open_smart(client, t.path, command, url, required=mode == "smart")
            if repo is not None:
                return repo
        return SftpRepo(client, t.path, url=url)
    except BaseException:
        client.close()
        raise


def open_smart(client: paramiko.SSHClient, root: str, command: str, url: str, *,
               required: bool) -> SmartRepo | None:
    """The smart protocol over an exec channel, or None when the remote lacks the server."""
    argv = [*command.split(), "--stdio", "--root", root]
    chan = ssh.open_exec(client, argv)
    try:
        return SmartRepo.over_channel(chan, opener=lambda: ssh.open_exec(client, argv),
                                      url=url).owning(client)
    except CockerError as e:
        if not isinstance(e, TransportError):
            chan.close()
            hint = "; use --init to create one" if isinstance(e, NotARepository) else ""
            raise type(e)(f"{url}: {e}{hint}") from None  # the server answered: a real error
        rc = chan.recv_exit_status() if chan.status_event.wait(SMART_PROBE_TIMEOUT) else None
        err = b""
        with contextlib.suppress(Exception):
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
        chan.close()
        msg = err.decode(errors="replace").strip().splitlines()
        if rc in (126, 127):
            if required:
                raise TransportError(f"{url}: `{command}` is not installed on the remote "
                                     "(exit status 127)") from None
            return None
        if msg:
            # The server died before it could answer with an error frame (whose class the
            # client would raise): its last word, as a transport failure.
            text = msg[-1]
            for prefix in ("srepo-server: error: ", "error: "):
                if text.startswith(prefix):
                    text = text[len(prefix):]
            raise TransportError(f"{url}: {text}") from None
        raise TransportError(f"{url}: the remote srepo-server failed ({e})") from None
