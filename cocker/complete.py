"""Values the shell completes from the store: image references and container names.

They run inside a completion request (`_COCKER_COMPLETE=...`), where no command callback has
run: the store comes from --home on the line or COCKER_HOME. A store that cannot be read, or
does not exist, completes nothing (and is not created) rather than printing an error into the
user's shell.
"""

from __future__ import annotations

import os

import click

from common.errors import CockerError
from common.home import Home


def _home(ctx: click.Context) -> Home:
    return Home(ctx.find_root().params.get("home") or os.environ.get("COCKER_HOME"))


def image_refs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Bare names (the newest version) and every name:version that starts with `incomplete`."""
    # Imported here, not at the top: `container run` loads this module and its start-up is
    # timed against runc; only a completion request pays for the repository code.
    from registry.repo.layout import LayoutRepo
    try:
        # never create: completing must not make a store where there is none
        recs = LayoutRepo(_home(ctx).repository, create=False).list_refs()
    except (CockerError, OSError):
        return []
    words = sorted({r.name for r in recs} | {f"{r.name}:{r.version}" for r in recs})
    return [w for w in words if w.startswith(incomplete)]


def container_names(ctx: click.Context, param: click.Parameter,
                    incomplete: str) -> list[str]:
    try:
        names = os.listdir(_home(ctx).containers)
    except (CockerError, OSError):
        return []
    return [n for n in sorted(names)
            if n.startswith(incomplete) and not n.startswith(".")]
