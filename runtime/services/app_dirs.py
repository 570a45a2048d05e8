"""brocker's private container directories (/container/<name>, seen inside as /app): made for
`copy-file` containers, removed with the container or, when brocker left them, pruned."""

from __future__ import annotations

import os
import shutil
import time

from registry.repo.store import Store


def app_dir(store: Store, name: str) -> str:
    """brocker's /container/<name>: the container's private directory, seen inside as /app.

    It lives next to the containers (store.home/brocker/<name>/app) rather than inside the
    container's own directory because the runtime creates that directory itself and checks
    that a volume's source exists before it does."""
    return store.paths.brocker_app(name)


def stage_files(store: Store, name: str, copies: list[str]) -> None:
    """Make the private copies (copy-file) in the container's /app directory."""
    prune_app_dirs(store)
    if not copies:
        return
    appdir = app_dir(store, name)
    os.makedirs(appdir, exist_ok=True)
    for src in copies:
        shutil.copy2(src, os.path.join(appdir, os.path.basename(src)))


def prune_app_dirs(store: Store, grace: float = 300.0) -> None:
    """Private directories whose container is gone (brocker never cleaned them up)."""
    root = store.paths.brocker
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    now = time.time()
    for n in names:
        d = os.path.join(root, n)
        try:
            young = now - os.stat(d).st_mtime < grace     # a container being created right now
        except OSError:
            continue
        if not young and not os.path.exists(os.path.join(store.containers_dir, n)):
            shutil.rmtree(d, ignore_errors=True)


def remove_app_dir(store: Store, name: str) -> None:
    shutil.rmtree(os.path.join(store.paths.brocker, name), ignore_errors=True)
