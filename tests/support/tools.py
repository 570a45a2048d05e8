"""Programs the tests drive. scripts/install.sh installs every one of them, so a missing one
is an install bug: it fails the run with that message, it never skips a test."""

from __future__ import annotations

import os
import shutil

import pytest


def tool(name: str, *fallbacks: str) -> str:
    """The path of `name` (or of the first existing absolute `fallbacks` path)."""
    found = shutil.which(name) or next((p for p in fallbacks if os.access(p, os.X_OK)), None)
    if not found:
        pytest.fail(f"{name} is not installed: scripts/install.sh installs it", pytrace=False)
    return found
