"""Opening a repository from what a user typed, and the configured repos (repos.json).

    NAME                          a repo configured with `cocker repo add NAME URL`
    /path, ./path, file:///path   a directory repo (LayoutRepo)
    ssh://[user@]host[:port]/path an OpenSSH host: the smart protocol over
                                  `srepo-server --stdio --root PATH` when the remote has it,
                                  else SFTP on the same layout. `ssh://host/~/dir` is relative
                                  to the remote home. `?mode=sftp|smart` and `?command=PATH`
                                  override the choice and the remote server's path.
    [user@]host:path              scp-like short form of the above
    srepo://[user@]host[:port][/prefix]   the native server's SSH door
    http(s)://host[:port][/prefix]        an OCI Distribution registry
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.parse
from dataclasses import asdict, dataclass, fields
from typing import Any

from common.errors import CockerError, NotARepository, NotFound, TransportError, UsageError
from common.fsutil import atomic_write, flock
from registry.repo.repository import Repository

CONFIG_FILE = "repos.json"
REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DEFAULT_COMMAND = "srepo-server"
SMART_PROBE_TIMEOUT = 15.0


@dataclass
class RepoOptions:
    """How to reach a repo; stored per configured repo, overridable per command."""

    identity: str | None = None
    accept_new: bool = False
    known_hosts: str | None = None
    config_path: str | None = "~/.ssh/config"
    mode: str = "auto"                 # auto | smart | sftp
    remote_command: str | None = None  # srepo-server on the remote
    init: bool = False                 # create the repo when the path is not one
    legacy: bool = False               # a cocker 0.x flat *.cockerimage directory

    def merged(self, **over: Any) -> RepoOptions:
        d = asdict(self)
        d.update({k: v for k, v in over.items() if v not in (None, False)})
        return RepoOptions(**d)


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


# configuration -------------------------------------------------------------------------
def _config_path(store) -> str:
    return store.paths.config_file(CONFIG_FILE)


def load_config(store) -> dict:
    try:
        with open(_config_path(store)) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        return {"default": None, "repos": {}}
    except (OSError, ValueError) as e:
        raise CockerError(f"cannot read {_config_path(store)}: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("repos"), dict):
        raise CockerError(f"{_config_path(store)} is malformed")
    return cfg


def _save_config(store, cfg: dict) -> None:
    atomic_write(_config_path(store), json.dumps(cfg, indent=2, sort_keys=True).encode())


def add_repo(store, name: str, url: str, *, default: bool = False, force: bool = False,
             **options: Any) -> dict:
    if not REPO_NAME_RE.match(name) or "://" in name:
        raise UsageError(f"invalid repo name {name!r}: use letters, digits, '.', '_' and '-'")
    kind, _ = classify(url)
    if kind == "name":
        raise UsageError(f"{url!r} is not a repository URL (ssh://, srepo://, http(s)://, "
                         "file:// or a path)")
    if kind == "path":
        url = os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
    check_url(kind, url)
    known = {f.name for f in fields(RepoOptions)} - {"init", "accept_new"}
    opts = {k: v for k, v in options.items() if k in known and v not in (None, False, "auto")}
    with flock(_config_path(store) + ".lock", what="the repo configuration"):
        cfg = load_config(store)
        if name in cfg["repos"] and not force:
            raise CockerError(f"repo {name} is already configured "
                              f"({cfg['repos'][name]['url']}); remove it first")
        cfg["repos"][name] = {"url": url, **opts}
        if default or not cfg.get("default"):
            cfg["default"] = name
        _save_config(store, cfg)
    return cfg["repos"][name]


def remove_repo(store, name: str) -> None:
    with flock(_config_path(store) + ".lock", what="the repo configuration"):
        cfg = load_config(store)
        if name not in cfg["repos"]:
            raise NotFound(f"no repo named {name} is configured")
        del cfg["repos"][name]
        if cfg.get("default") == name:
            cfg["default"] = None
        _save_config(store, cfg)


def list_repos(store) -> list[dict]:
    cfg = load_config(store)
    return [{"name": n, "default": n == cfg.get("default"), **v}
            for n, v in sorted(cfg["repos"].items())]


def resolve_spec(spec: str | None, store=None) -> tuple[str, RepoOptions, str | None]:
    """(url, stored options, configured name) for a repo name, a URL or nothing (default)."""
    cfg = load_config(store) if store is not None else {"default": None, "repos": {}}
    if not spec:
        name = cfg.get("default")
        if not name or name not in cfg["repos"]:
            raise UsageError("no repository given and no default configured "
                             "(use --repo URL, or `cocker repo add NAME URL --default`)")
        spec = name
    entry = cfg["repos"].get(spec)
    if entry is not None:
        opts = RepoOptions(**{k: v for k, v in entry.items()
                              if k in {f.name for f in fields(RepoOptions)}})
        return entry["url"], opts, spec
    if classify(spec)[0] == "name":
        raise NotFound(f"no repo named {spec!r} is configured (see `cocker repo ls`)")
    return spec, RepoOptions(), None


def classify(spec: str) -> tuple[str, str]:
    """('ssh'|'srepo'|'http'|'path'|'name', spec)."""
    low = spec.lower()
    if low.startswith("ssh://"):
        return "ssh", spec
    if low.startswith("srepo://"):
        return "srepo", spec
    if low.startswith(("http://", "https://")):
        return "http", spec
    if low.startswith("file://") or spec.startswith(("/", "./", "../", "~")) or spec in (".", ".."):
        return "path", spec
    if re.match(r"^([^@/:\s]+@)?[^@/:\s]+:", spec) and "://" not in spec:
        return "ssh", spec  # scp-like user@host:path
    return "name", spec


def check_url(kind: str, url: str) -> None:
    """Refuse a malformed URL when it is configured, not at its first use; each transport's
    own parser decides (nothing is contacted)."""
    if kind == "ssh":
        parse_ssh(url)
    elif kind == "srepo":
        from registry.transports.srepo.transport import parse_url
        parse_url(url)
    elif kind == "http":
        from registry.transports.http.repo import HttpRepo
        HttpRepo(url)


def parse_ssh(spec: str) -> SshTarget:
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
    else:  # user@host:path
        who, _, path = spec.partition(":")
        user, _, host = who.rpartition("@")
        user = user or None
        port, query = None, {}
        if path.startswith("~/"):
            path = path[2:]
        elif path == "~":
            path = ""
    return SshTarget(user, host, port, path or ".", query)


# opening -------------------------------------------------------------------------------
def open_repo(spec: str | None, store=None, **options: Any) -> Repository:
    """The repository `spec` names (see the module doc); options as in RepoOptions."""
    url, stored, _ = resolve_spec(spec, store)
    opts = stored.merged(**options)
    kind, url = classify(url)
    if kind == "path":
        from registry.repo.layout import LayoutRepo
        path = url[len("file://"):] if url.startswith("file://") else url
        path = os.path.expanduser(path)
        if not os.path.exists(path) and not opts.init:
            raise NotFound(f"{path} does not exist (use --init to create a repository there)")
        return LayoutRepo(path, create=opts.init, url=url)
    if kind == "ssh":
        return open_ssh(parse_ssh(url), opts)
    if kind == "srepo":
        from registry.transports.srepo.transport import open_srepo
        return open_srepo(url, identity=opts.identity, accept_new=opts.accept_new,
                          known_hosts=opts.known_hosts, config_path=opts.config_path)
    if kind == "http":
        from registry.transports.http.repo import HttpRepo
        return HttpRepo(url)
    raise NotFound(f"no repo named {spec!r} is configured")


def connect_ssh(t: SshTarget, opts: RepoOptions):
    from registry.transports.ssh import connect as ssh
    return ssh.connect(t.host, t.port, t.user, identity=opts.identity,
                       accept_new=opts.accept_new, known_hosts=opts.known_hosts,
                       config_path=opts.config_path)


def open_ssh(t: SshTarget, opts: RepoOptions) -> Repository:
    from registry.transports.ssh.sftp_repo import SftpRepo
    from registry.wire.channel import tune_allocator
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
            repo = _open_smart(client, t.path, command, url, required=mode == "smart")
            if repo is not None:
                return repo
        return SftpRepo(client, t.path, url=url)
    except BaseException:
        client.close()
        raise


def _open_smart(client, root: str, command: str, url: str, *, required: bool):
    """The smart protocol over an exec channel, or None when the remote lacks the server."""
    from registry.transports.smart.client import SmartRepo
    from registry.transports.ssh import connect as ssh

    argv = [*command.split(), "--stdio", "--root", root]

    class SshSmartRepo(SmartRepo):
        def close(self) -> None:
            try:
                super().close()
            finally:
                client.close()

    chan = ssh.open_exec(client, argv)
    try:
        return SshSmartRepo.over_channel(chan, opener=lambda: ssh.open_exec(client, argv),
                                         url=url)
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
            text = msg[-1]
            for prefix in ("srepo-server: error: ", "error: "):
                if text.startswith(prefix):
                    text = text[len(prefix):]
            cls = NotFound if "not" in text and ("repositor" in text or "exist" in text) \
                else TransportError
            raise cls(f"{url}: {text}") from None
        raise TransportError(f"{url}: the remote srepo-server failed ({e})") from None


def open_legacy(spec: str | None, store=None, **options: Any):
    """A cocker 0.x flat *.cockerimage directory over SFTP (default: the remote home)."""
    from registry.transports.legacy.repo import LegacyRepo
    url, stored, _ = resolve_spec(spec, store)
    opts = stored.merged(**options)
    kind, url = classify(url)
    if kind != "ssh":
        if kind == "path":
            raise UsageError("legacy repos are reached over ssh (ssh://user@host[/dir])")
        raise UsageError(f"{url}: legacy cocker repos are ssh:// only")
    t = parse_ssh(url)
    client = connect_ssh(t, opts)
    try:
        return LegacyRepo(client, t.path, url=t.url())
    except BaseException:
        client.close()
        raise
