"""The bars that show, per version, how many of its bytes are layers it shares with other
versions of the same name and how many are its own. Inline SVG: no script, no image file."""

from __future__ import annotations

from srepo_server.web.markup import Markup, esc, human_size

WIDTH = 240
HEIGHT = 14
SHARED_COLOUR = "#7a9cc6"
OWN_COLOUR = "#e0a040"


def shared_own_bar(shared: int, own: int, largest: int) -> Markup:
    """One bar, scaled so the largest version of the page fills WIDTH."""
    scale = WIDTH / largest if largest > 0 else 0.0
    w_shared = round(shared * scale)
    w_own = max(round(own * scale), 1 if own else 0)
    title = f"shared with other versions: {human_size(shared)}; own: {human_size(own)}"
    return Markup(
        f'<svg class="bar" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
        f'<rect x="0" y="0" width="{w_shared}" height="{HEIGHT}" fill="{SHARED_COLOUR}"/>'
        f'<rect x="{w_shared}" y="0" width="{w_own}" height="{HEIGHT}" fill="{OWN_COLOUR}"/>'
        "</svg>")


def legend() -> Markup:
    def swatch(colour: str) -> str:
        return (f'<svg width="12" height="12"><rect width="12" height="12" fill="{colour}"/>'
                "</svg>")
    return Markup(f'<p class="legend">{swatch(SHARED_COLOUR)} layers shared with other versions '
                  f'&nbsp; {swatch(OWN_COLOUR)} layers of this version only</p>')
