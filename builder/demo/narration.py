"""How the demo runs and shows each step: the real CLI in a subprocess, echoed the way a
user would type it, so the demo doubles as a tour. What is printed, and how, is the caller's
(a Narrator); this module only decides what to say."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from typing import Any, Protocol

from common.errors import CockerError


class Narrator(Protocol):
    def title(self, text: str) -> None: ...
    def command(self, text: str) -> None: ...
    def output(self, text: str) -> None: ...
    def result(self, text: str) -> None: ...


class Cli:
    """Runs `cocker ARGS` against one store, narrating each command and its output."""

    def __init__(self, narrator: Narrator, home: str | None) -> None:
        self.narrator = narrator
        self.home = home

    def run(self, args: list[str], *, check: bool = True, quiet: bool = False,
            env: dict[str, str] | None = None, home: str | None = None,
            shown_prefix: str = "", quiet_output: bool = False) -> subprocess.CompletedProcess:
        shown = shown_prefix + "cocker " + " ".join(shlex.quote(a) for a in args)
        store = home or self.home
        argv = [sys.executable, "-m", "cocker.main", *(["--home", store] if store else []), *args]
        if not quiet:
            self.narrator.command(f"$ {shown}")
        p = subprocess.run(argv, text=True, capture_output=True, stdin=subprocess.DEVNULL,
                           env={**(env or os.environ), "COCKER_QUIET": "1"})
        if not quiet and not quiet_output:
            out = (p.stdout + p.stderr).rstrip()
            if out:
                self.narrator.output(textwrap.indent(out, "  "))
        if check and p.returncode != 0:
            last = (p.stderr or p.stdout).strip().splitlines()[-1:]
            raise CockerError(f"demo step failed (exit {p.returncode}): {shown}: "
                              f"{last[0] if last else 'no message'}")
        return p

    def transfer(self, args: list[str], **kw: Any) -> int:
        """Run a push or pull with --json, narrate one line per image, return the bytes moved."""
        p = self.run([*args, "--json"], quiet_output=True, **kw)
        try:
            results = json.loads(p.stdout)
            moved = [int(r.get("bytes_sent") or 0) for r in results]
            for r, n in zip(results, moved, strict=True):
                self.narrator.output(f"  {r['reference']}  {r['digest'][:19]}  "
                                     f"{r['blobs_sent']} blob(s), {n} bytes sent, "
                                     f"{r['blobs_skipped']} already there")
        except (ValueError, KeyError, TypeError):
            raise CockerError(f"demo: no transfer result from cocker {' '.join(args)}") from None
        return sum(moved)
