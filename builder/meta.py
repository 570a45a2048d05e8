"""What every new image version records: times, history entries, its parent."""

from __future__ import annotations

import os
import time

from common.errors import UsageError

PARENT = "org.cocker.parent"
BASE_DIGEST = "org.opencontainers.image.base.digest"
BASE_NAME = "org.opencontainers.image.base.name"


def source_date_epoch() -> int | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org), or None when unset."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds")
    return int(text)


def timestamp(epoch: float | None = None) -> str:
    """RFC 3339 UTC, second precision (sub-seconds would only add noise to digests)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch is None else epoch))


def history_entry(created: str, created_by: str, *, author: str | None = None,
                  comment: str | None = None, empty_layer: bool = False) -> dict:
    h: dict = {"created": created, "created_by": created_by}
    if author:
        h["author"] = author
    if comment:
        h["comment"] = comment
    if empty_layer:
        h["empty_layer"] = True
    return h


def parent_annotations(digest: str, name: str) -> dict[str, str]:
    """The new image's parent, in cocker's own key and the OCI standard ones."""
    return {PARENT: digest, BASE_DIGEST: digest, BASE_NAME: name}


def layer_history(config: dict) -> list[dict]:
    """The config's history, or one synthetic entry per layer when it has none that fits."""
    hist = [dict(h) for h in config.get("history") or [] if isinstance(h, dict)]
    n_layers = len((config.get("rootfs") or {}).get("diff_ids") or [])
    if sum(1 for h in hist if not h.get("empty_layer")) != n_layers:
        hist = [{"created_by": "(layer without history)"} for _ in range(n_layers)]
    return hist


def derive_config(base_config: dict, diff_ids: list[str], history: list[dict], *,
                  created: str, author: str | None = None) -> dict:
    """A child config: the base's runtime settings, the full diff_id chain, history
    (base's + `history`), `created`; the image author when one is given."""
    from registry.oci import manifest as oci
    cfg = oci.new_config(diff_ids, created=created, base=base_config,
                         history=layer_history(base_config) + history)
    if author:
        cfg["author"] = author
    return cfg
