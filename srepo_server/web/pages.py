"""The HTML of each page, from the data views.py gathers. Every value goes through esc."""

from __future__ import annotations

import json
from collections.abc import Sequence

from srepo_server.web import svg
from srepo_server.web.markup import Markup, human_size, join, link, path_part, tag
from srepo_server.web.views import ImageView, LayerListing, NameRow, VersionRow

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.5em; } h1 a { color: inherit; text-decoration: none; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { text-align: left; padding: .25em .8em .25em 0; border-bottom: 1px solid #ddd;
         vertical-align: top; white-space: nowrap; }
code, pre, .mono { font-family: ui-monospace, monospace; font-size: 13px; }
pre { background: #f5f5f5; padding: .6em; overflow-x: auto; }
.muted { color: #777; } .error { color: #a00; } .legend svg { vertical-align: middle; }
nav { margin-bottom: 1em; }
"""


def document(title: str, crumbs: list[tuple[str, str]], *body: Markup) -> bytes:
    nav = Markup(" / ".join(link(href, text) for href, text in crumbs))
    head = (Markup('<!doctype html><html lang="en"><head><meta charset="utf-8">'
                   '<meta name="viewport" content="width=device-width, initial-scale=1">')
            + tag("title", f"{title} · srepo-server") + tag("style", Markup(STYLE))
            + Markup("</head><body>"))
    return (head + tag("nav", nav) + tag("h1", title) + join(list(body))
            + Markup("</body></html>")).encode()


def _table(headers: list[str], rows: Sequence[Sequence[object]]) -> Markup:
    head = tag("tr", *[tag("th", h) for h in headers])
    return tag("table", tag("thead", head),
               tag("tbody", *[tag("tr", *[tag("td", c) for c in row]) for row in rows]))


def _short(digest: str) -> Markup:
    return tag("code", digest.removeprefix("sha256:")[:12], title=digest)


def name_href(name: str) -> str:
    return f"/repo/{path_part(name)}"


def image_href(name: str, version: str) -> str:
    return f"/image/{path_part(name)}:{path_part(version)}"


def layer_href(name: str, digest: str) -> str:
    return f"/layer/{path_part(name)}@{digest}"


def _when(created: str) -> str:
    return created[:19].replace("T", " ") if created else "-"


HOME = ("/", "repositories")


def index_page(rows: list[NameRow]) -> bytes:
    if not rows:
        return document("repositories", [], tag("p", "Nothing pushed yet (or nothing you may read).",
                                                  class_="muted"))
    table = _table(["NAME", "VERSIONS", "NEWEST", "CREATED"],
                   [[link(name_href(r.name), r.name), r.versions,
                     link(image_href(r.name, r.newest), r.newest), _when(r.newest_created)]
                    for r in rows])
    return document("repositories", [], table)


def name_page(name: str, rows: list[VersionRow], base_url: str) -> bytes:
    largest = max((r.size or 0 for r in rows), default=0)
    table = []
    for r in reversed(rows):  # newest first
        if r.error:
            table.append([r.version, _short(r.digest), "-", "-", tag("span", r.error, class_="error"),
                          ""])
            continue
        pull = f"cocker image pull {name}:{r.version} --repo {base_url}"
        table.append([link(image_href(name, r.version), r.version), _short(r.digest),
                      human_size(r.size), _when(r.created),
                      svg.shared_own_bar(r.shared, r.own, largest), tag("code", pull)])
    return document(name, [HOME], tag("p", f"{len(rows)} version(s), newest first"),
                    _table(["VERSION", "DIGEST", "SIZE", "CREATED", "SHARED / OWN", "PULL"], table),
                    svg.legend())


def image_page(view: ImageView, base_url: str) -> bytes:
    img = view.image
    host = base_url.split("://", 1)[-1]
    ref = f"{view.name}:{view.version}"
    facts = _table(["", ""], [
        ["digest", tag("code", img.digest)],
        ["media type", img.manifest.get("mediaType", "-")],
        ["size", human_size(img.size)],
        ["created", _when(img.created)],
        ["platform", f"{img.config.get('os', '-')}/{img.config.get('architecture', '-')}"],
        ["pull", tag("code", f"cocker image pull {ref} --repo {base_url}")],
        ["", tag("code", f"podman pull {host}/{ref}")],
    ])
    layers = _table(["#", "LAYER", "SIZE", "MEDIA TYPE", "ALSO IN"], [
        [i + 1, link(layer_href(view.name, ly.digest), _short(ly.digest)), human_size(ly.size),
         ly.media_type, ", ".join(ly.shared_with) or tag("span", "this version only",
                                                         class_="muted")]
        for i, ly in enumerate(view.layers)])
    history = _table(["CREATED", "CREATED BY", "COMMENT"], [
        [_when(str(h.get("created", ""))), tag("code", h.get("created_by", "")),
         h.get("comment", "")] for h in img.config.get("history", []) if isinstance(h, dict)])
    if view.referrers:
        referrers = _table(["ARTIFACT TYPE", "DIGEST", "SIZE", "ANNOTATIONS"], [
            [d.get("artifactType") or d.get("mediaType", "-"), _short(str(d.get("digest", ""))),
             human_size(d.get("size")),
             tag("code", json.dumps(d.get("annotations") or {}, sort_keys=True))]
            for d in view.referrers])
    else:
        referrers = tag("p", "none", class_="muted")
    config = tag("pre", json.dumps(img.runtime_config, indent=2, sort_keys=True))
    return document(ref, [HOME, (name_href(view.name), view.name)],
                    facts, tag("h2", "layers"), layers, tag("h2", "config"), config,
                    tag("h2", "history"), history,
                    tag("h2", "signatures and other referrers"), referrers)


def layer_page(listing: LayerListing) -> bytes:
    rows = [[tag("span", f.mode, class_="mono"), f.owner, human_size(f.size),
             tag("code", f.path + (f" -> {f.target}" if f.target else ""))]
            for f in listing.files]
    parts = [tag("p", "used by versions: ", ", ".join(listing.used_by)),
             _table(["MODE", "OWNER", "SIZE", "PATH"], rows)]
    if listing.truncated:
        parts.append(tag("p", f"only the first {len(listing.files)} entries are shown",
                         class_="muted"))
    if listing.error:
        parts.append(tag("p", listing.error, class_="error"))
    return document(f"layer {listing.digest.removeprefix('sha256:')[:12]}",
                    [HOME, (name_href(listing.name), listing.name)], *parts)


def error_page(status: int, message: str) -> bytes:
    return document(f"{status}", [HOME], tag("p", message, class_="error"))
