"""How to reach a repository: the options every transport's opener receives."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RepoOptions:
    """Stored per configured repo, overridable per command."""

    identity: str | None = None
    accept_new: bool = False
    known_hosts: str | None = None
    config_path: str | None = "~/.ssh/config"
    mode: str = "auto"                 # auto | smart | sftp
    remote_command: str | None = None  # srepo-server on the remote
    init: bool = False                 # create the repo when the path is not one
    legacy: bool = False               # a cocker 0.x flat *.cockerimage directory
    resume_dir: str | None = None      # where interrupted uploads are remembered (the store's)

    def merged(self, **over: Any) -> RepoOptions:
        d = asdict(self)
        d.update({k: v for k, v in over.items() if v not in (None, False)})
        return RepoOptions(**d)
