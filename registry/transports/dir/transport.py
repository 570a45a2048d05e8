"""Directory repositories: `/path`, `./path`, `~/path`, `file:///path`."""

from __future__ import annotations

import os

from common.errors import NotFound
from registry.repo.layout import LayoutRepo
from registry.repo.repository import Repository
from registry.transports.options import RepoOptions


def local_path(url: str) -> str:
    path = url[len("file://"):] if url.lower().startswith("file://") else url
    return os.path.expanduser(path)


def check_url(url: str) -> None:
    local_path(url)


def open_url(url: str, opts: RepoOptions) -> Repository:
    path = local_path(url)
    if not os.path.exists(path) and not opts.init:
        raise NotFound(f"{path} does not exist (use --init to create a repository there)")
    return LayoutRepo(path, create=opts.init, url=url)
