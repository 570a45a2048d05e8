"""How a forked child tells its parent that it could not start: one line on an error pipe
(EOF when the exec succeeded), and the exception the parent raises from it."""

from __future__ import annotations

import os
import signal
from typing import NoReturn

from common.errors import RuntimeFailure

# what a parent forwards to the container's main process
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT)


class StartFailed(RuntimeFailure):
    """The workload could not be started (command missing, not executable, setup failed)."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.exit_code = code


def say(fd: int, text: str) -> None:
    """One line on the error pipe; a parent that went away is not an error here."""
    try:
        os.write(fd, text.replace("\n", " ").rstrip().encode() + b"\n")
    except OSError:
        pass


def exit_code(status: int | None) -> int:
    """A shell's exit code for a wait status: 128+N for signal N; 255 when there is none
    (the process was reaped elsewhere)."""
    if status is None:
        return 255
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return str(e) or type(e).__name__


def exec_or_report(argv: list[str], env: dict[str, str], err_w: int, where: str) -> NoReturn:
    """Become `argv`; if it cannot be run, say why on the error pipe and exit as docker does
    (127 not found, 126 not executable). `where` names the place searched ("the image")."""
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        say(err_w, f"{argv[0]}: command not found in {where}")
        os._exit(127)
    except PermissionError:
        say(err_w, f"{argv[0]}: permission denied (not executable?)")
        os._exit(126)
