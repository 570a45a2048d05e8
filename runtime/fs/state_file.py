"""The small JSON files of a container's runtime state."""

from __future__ import annotations

import json
import os
from typing import Any


def write_json(path: str, obj: dict[str, Any]) -> None:
    """tmp + rename, without fsync: runtime state is rewritten often and must be cheap."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.rename(tmp, path)


def read_json(path: str) -> dict[str, Any]:
    """The file's object; {} when it is missing or unreadable (a crash mid-write)."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}
