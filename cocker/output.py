"""Tables, JSON and human sizes for command output."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click


def human_size(n: int | float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


def warn(msg: str) -> None:
    click.echo(f"cocker: warning: {msg}", err=True)


def dropped_devices_notice(ref: str, count: int) -> None:
    """One line for the device nodes an import left out (a rootfs's /dev, as C cocker's images
    carry it): the runtime gives every container a fresh /dev."""
    if count:
        click.echo(f"cocker: notice: {ref}: left out {count} device node(s) such as /dev's; "
                   "the runtime makes /dev in every container", err=True)


def is_tty() -> bool:
    return sys.stdout.isatty()
