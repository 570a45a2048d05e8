"""`cocker image edit REF`: boot a container from REF, open a shell in it, and when the shell
exits commit what changed as the next version (the original cocker's to_container and
to_image in one step, without consuming anything).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from builder import commit as commitmod
from builder import versioning
from common.errors import CockerError, NotFound, UsageError
from registry.repo import image as imagemod


@dataclass
class EditResult:
    container: str
    kept: bool
    shell_exit: int
    result: commitmod.CommitResult | None     # None: nothing changed (or detached)
    detached: bool = False


def edit(store, ref: str, *, to: str | None = None, bump: str | None = None,
         keep: bool = False, shell: str = "/bin/sh", name: str | None = None,
         message: str | None = None, author: str | None = None, force: bool = False,
         net: str = "bridge", log: Callable[[str], None] = lambda s: None) -> EditResult:
    from runtime.container import lifecycle, record
    from runtime.container.spec import ContainerSpec
    if not os.isatty(0):
        raise UsageError("image edit opens an interactive shell: run it on a terminal "
                         "(for scripted changes use `cocker image build`)")
    img = imagemod.load(store, ref)
    if to:
        target = versioning.target(store, to, bump, force=force)
    else:
        target = versioning.target(store, img.name, bump or "patch", force=force)
    cname = name or _container_name(img.name)
    spec = ContainerSpec(image=f"{img.name}:{img.version}", name=cname,
                                    command=[shell], entrypoint=[], tty=True, net=net,
                                    hostname=re.sub(r"[^A-Za-z0-9-]", "-", img.name)[:63])
    log(f"editing {img.name}:{img.version} in container {cname}; exit the shell to commit "
        f"{target}")
    try:
        code = lifecycle.run(store, spec, rm=False, interactive=True)
        if record.load(store, cname).state() == "running":
            # detached (ctrl-p ctrl-q): the user wants it to go on; commit later by hand
            return EditResult(cname, True, code, None, detached=True)
        try:
            res = commitmod.commit(store, cname, target, message=message, author=author,
                                   force=force, changes=[])
        except commitmod.NothingToCommit:
            res = None
    except BaseException:
        if not keep:
            with contextlib.suppress(CockerError, NotFound):
                lifecycle.remove(store, cname, force=True)
        raise
    if not keep:
        lifecycle.remove(store, cname, force=True)
    return EditResult(cname, keep, code, res)


def _container_name(image_name: str) -> str:
    base = re.sub(r"[^a-z0-9_.-]", "-", image_name.split("/")[-1])[:40]
    return f"edit-{base}-{os.getpid()}"
