"""A terminal driven the way a person uses one: a real tmux session (its own server socket),
keys typed with send-keys, the screen read with capture-pane.

    with TmuxTerminal(tmp_path, "cocker container run --rm -it img", env=env) as term:
        term.wait_for("/ #")
        term.type("echo hi\\n")
        term.keys("C-p", "C-q")
        assert term.exit_status() == 0
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

TMUX = shutil.which("tmux") or "/usr/bin/tmux"


class TmuxTerminal:
    def __init__(self, workdir: str, command: str, *, env: dict[str, str] | None = None,
                 cwd: str | None = None, rows: int = 30, cols: int = 100) -> None:
        self.socket = os.path.join(str(workdir), f"tmux-{os.getpid()}-{time.monotonic_ns()}.sock")
        self.command, self.env, self.cwd = command, dict(env or os.environ), cwd
        self.rows, self.cols = rows, cols
        self.server_pid: int | None = None
        self.status_file = self.socket + ".status"

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True, text=True,
                              env=self.env, timeout=30, check=check)

    def __enter__(self) -> TmuxTerminal:
        # the pane keeps its content and exit status after the command ends (remain-on-exit)
        conf = self.socket + ".conf"
        with open(conf, "w") as f:
            f.write("set -g remain-on-exit on\nset -g history-limit 5000\n")
        # bash runs the command and writes its status to a file: tmux's own pane_dead_status
        # is not reliable here (tmux 3.3a at times leaves the exited pane process a zombie it
        # never reaps, so the status never arrives)
        self._tmux("-f", conf, "new-session", "-d", "-x", str(self.cols), "-y", str(self.rows),
                   "-c", self.cwd or os.getcwd(), "bash", "--norc", "-c",
                   f"{self.command}; echo $? > {self.status_file}.tmp && "
                   f"mv {self.status_file}.tmp {self.status_file}")
        self.server_pid = int(self._tmux("display-message", "-p", "#{pid}").stdout.strip())
        return self

    def __exit__(self, *exc: object) -> None:
        self._tmux("kill-server", check=False)
        if self.server_pid:
            try:
                os.kill(self.server_pid, 9)
            except ProcessLookupError:
                pass
        for path in (self.socket, self.socket + ".conf", self.status_file):
            if os.path.exists(path):
                os.unlink(path)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-200").stdout

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            s = self.screen()
            if text in s:
                return s
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the screen of {self.command!r}:\n{s}")
            time.sleep(0.1)

    def type(self, text: str) -> None:
        """Characters as typed (a newline is the Enter key)."""
        lines = text.split("\n")
        for i, chunk in enumerate(lines):
            if chunk:
                self._tmux("send-keys", "-l", "--", chunk)
            if i < len(lines) - 1:
                self._tmux("send-keys", "Enter")

    def keys(self, *names: str) -> None:
        """Named keys, one after another: C-p, C-q, Enter, Up."""
        for k in names:
            self._tmux("send-keys", k)

    def resize(self, rows: int, cols: int) -> None:
        self._tmux("resize-window", "-x", str(cols), "-y", str(rows))

    def exit_status(self, timeout: float = 30.0) -> int:
        """The command's exit status once it has ended."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.status_file) as f:
                    return int(f.read())
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.command!r} still runs:\n{self.screen()}")
            time.sleep(0.1)
