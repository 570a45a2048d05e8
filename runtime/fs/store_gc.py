"""`cocker image gc`: the store's unused blobs, then the layer trees no image or container uses."""

from __future__ import annotations

from dataclasses import dataclass

from registry.repo.store import Store
from runtime.fs import layers


@dataclass(frozen=True)
class Collected:
    blobs: int
    bytes: int
    layer_trees: int


def collect(store: Store, *, grace: float = 3600.0, dry_run: bool = False) -> Collected:
    """Blobs younger than grace seconds are spared (uploads in flight)."""
    n, freed = store.gc(grace=grace, dry_run=dry_run)
    trees = layers.gc(store, dry_run=dry_run)
    return Collected(n, freed, trees)
