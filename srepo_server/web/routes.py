"""Which page a path asks for. Names cannot hold ':' or '@', so they separate a name from
its version or digest without ambiguity:

    /                          the names the caller may read
    /repo/<name>               its versions, newest first
    /image/<name>:<version>    one version: layers, config, history, referrers
    /layer/<name>@<digest>     a layer's files
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from common.errors import InvalidReference, NotFound
from registry.repo.repository import Repository
from srepo_server.web import pages, views

HTML = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Page:
    status: int
    body: bytes
    content_type: str = HTML


def render(repo: Repository, path: str, *, can_read: Callable[[str], bool], base_url: str,
           referrers: Callable[[str], list[dict]]) -> Page:
    """The page for `path` (still URL-encoded), or a 404/403/400 page; never raises for
    bad input."""
    path = urllib.parse.unquote(path)
    try:
        if path == "/":
            return Page(200, pages.index_page(views.names(repo, can_read)))
        kind, _, rest = path.lstrip("/").partition("/")
        if kind == "repo" and rest:
            name = _readable(rest, can_read)
            return Page(200, pages.name_page(name, views.versions(repo, name), base_url))
        if kind == "image" and ":" in rest:
            name, _, version = rest.rpartition(":")
            name = _readable(name, can_read)
            return Page(200, pages.image_page(views.image(repo, name, version, referrers),
                                              base_url))
        if kind == "layer" and "@" in rest:
            name, _, digest = rest.partition("@")
            name = _readable(name, can_read)
            return Page(200, pages.layer_page(views.layer_files(repo, name, digest)))
    except InvalidReference as e:
        return Page(400, pages.error_page(400, str(e)))
    except NotFound as e:
        return Page(404, pages.error_page(404, str(e)))
    return Page(404, pages.error_page(404, f"no page at {path}"))


def _readable(name: str, can_read: Callable[[str], bool]) -> str:
    views.checked_name(name)
    if not can_read(name):
        # the same answer as for a name that does not exist: no probing what others hold
        raise NotFound(f"no image named {name} here")
    return name
