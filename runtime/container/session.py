"""Talking to a running container: a command run inside it (exec) and its terminal (attach)."""

from __future__ import annotations

from common.errors import Conflict, UsageError
from registry.repo.store import Store
from runtime.container import security
from runtime.container.record import load, require_root
from runtime.container.spec import merge_env
from runtime.process import nsexec
from runtime.tty import attach as attachmod
from runtime.tty.detach_keys import DETACH_KEYS


def exec_(store: Store, name: str, argv: list[str], *, tty: bool = False,
          env: list[str] | None = None, workdir: str | None = None,
          interactive: bool = False, user: str | None = None) -> int:
    """Run `argv` inside the running container (its namespaces and cgroup, under its
    confinement and, unless `user` names another, as its user); the exit code."""
    require_root()
    if not argv:
        raise UsageError("exec needs a command")
    c = load(store, name)
    wpid = c.workload_pid() if c.state() == "running" else None
    if wpid is None:
        raise Conflict(f"container {name} is not running")
    full_env = merge_env(list(c.record.get("env") or []), list(env or []), tty)
    return nsexec.run_in(wpid, argv, env=full_env, workdir=workdir or c.record.get("workdir") or "/",
                         tty=tty, interactive=interactive or tty,
                         cgroup_dirs=list(c.cgroup().dirs.values()),
                         user=user if user is not None else c.record.get("user") or "",
                         confine=security.confinement_for(store.paths, c.record))


def attach(store: Store, name: str, keys: bytes = DETACH_KEYS) -> int | None:
    """Its terminal, or without one its output, until it exits (its code) or the user
    detaches (None)."""
    c = load(store, name)
    if c.state() != "running":
        raise Conflict(f"container {name} is not running")
    if not c.record.get("tty"):
        if attachmod.watch_log(c, keys):
            return None
        return c.exit_code
    return attachmod.session(attachmod.connect(c), keys=keys)
