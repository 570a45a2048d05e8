"""Minimal HTML building where every value is escaped unless it already is markup.

Names, versions, history lines and file names come from whoever pushed the image, so nothing
reaches the page without passing through `esc`.
"""

from __future__ import annotations

import html
import urllib.parse


class Markup(str):
    """Text that is already HTML (built here from escaped parts)."""


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: list[Markup] | tuple[Markup, ...]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def tag(name: str, *children: object, **attrs: object) -> Markup:
    """<name attrs>children</name>; attribute names drop a trailing `_` (class_)."""
    attr_text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
                        for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{attr_text}>{join([esc(c) for c in children])}</{name}>")


def link(href: str, *children: object) -> Markup:
    return tag("a", *children, href=href)


def path_part(text: str) -> str:
    """A value as a URL path piece (names keep their slashes, other specials are quoted)."""
    return urllib.parse.quote(text, safe="/:@")


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size, unit = float(n), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
