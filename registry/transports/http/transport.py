"""`http://` and `https://`: any OCI Distribution registry, srepo-server's HTTP door included."""

from __future__ import annotations

from registry.repo.repository import Repository
from registry.transports.http.repo import HttpRepo
from registry.transports.options import RepoOptions


def check_url(url: str) -> None:
    HttpRepo(url)  # parses the URL; connects only when first used


def open_url(url: str, opts: RepoOptions) -> Repository:
    return HttpRepo(url, resume_dir=opts.resume_dir)
