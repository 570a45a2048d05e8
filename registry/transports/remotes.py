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

Which module serves which URL is `registry.transports.table`'s business.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from common.errors import CockerError, NotFound, UsageError
from common.fsutil import atomic_write, flock
from registry.repo.repository import Repository
from registry.transports.options import RepoOptions
from registry.transports.table import transport, transport_name

if TYPE_CHECKING:
    from registry.repo.store import Store
    from registry.transports.legacy.repo import LegacyRepo

CONFIG_FILE = "repos.json"
REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


# configuration -------------------------------------------------------------------------
def _config_path(store: Store) -> str:
    return store.paths.config_file(CONFIG_FILE)


def load_config(store: Store) -> dict:
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


def _save_config(store: Store, cfg: dict) -> None:
    atomic_write(_config_path(store), json.dumps(cfg, indent=2, sort_keys=True).encode())


def add_repo(store: Store, name: str, url: str, *, default: bool = False, force: bool = False,
             **options: Any) -> dict:
    if not REPO_NAME_RE.match(name) or "://" in name:
        raise UsageError(f"invalid repo name {name!r}: use letters, digits, '.', '_' and '-'")
    kind = transport_name(url)
    if kind is None:
        raise UsageError(f"{url!r} is not a repository URL (ssh://, srepo://, http(s)://, "
                         "file:// or a path)")
    if kind == "dir":
        url = os.path.abspath(url[len("file://"):] if url.lower().startswith("file://") else url)
    transport(kind).check_url(url)
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


def remove_repo(store: Store, name: str) -> None:
    with flock(_config_path(store) + ".lock", what="the repo configuration"):
        cfg = load_config(store)
        if name not in cfg["repos"]:
            raise NotFound(f"no repo named {name} is configured")
        del cfg["repos"][name]
        if cfg.get("default") == name:
            cfg["default"] = None
        _save_config(store, cfg)


def list_repos(store: Store) -> list[dict]:
    cfg = load_config(store)
    return [{"name": n, "default": n == cfg.get("default"), **v}
            for n, v in sorted(cfg["repos"].items())]


def resolve_spec(spec: str | None, store: Store | None = None) -> tuple[str, RepoOptions, str | None]:
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
    if transport_name(spec) is None:
        raise NotFound(f"no repo named {spec!r} is configured (see `cocker repo ls`)")
    return spec, RepoOptions(), None


# opening -------------------------------------------------------------------------------
def open_repo(spec: str | None, store: Store | None = None, **options: Any) -> Repository:
    """The repository `spec` names (see the module doc); options as in RepoOptions."""
    url, stored, _ = resolve_spec(spec, store)
    kind = transport_name(url)
    if kind is None:
        raise NotFound(f"no repo named {spec!r} is configured")
    if store is not None:
        options.setdefault("resume_dir", store.paths.push_sessions)
    return transport(kind).open_url(url, stored.merged(**options))


def open_legacy(spec: str | None, store: Store | None = None, **options: Any) -> LegacyRepo:
    """A cocker 0.x flat *.cockerimage directory over SFTP (default: the remote home)."""
    # Imported here: only `--legacy` commands pay for paramiko's start-up.
    from registry.transports.legacy.transport import open_legacy_url
    url, stored, _ = resolve_spec(spec, store)
    return open_legacy_url(url, stored.merged(**options))
