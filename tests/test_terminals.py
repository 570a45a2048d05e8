"""Terminals as a person types into them, through tmux: detach keys as docker has them (a
prefix key not followed by the rest reaches the shell), `exec -it` with a pty of its own inside
the container and its size following the window, detaching from `run --rm -it`, and `attach`
to a container started without -t."""

from __future__ import annotations

import json
import os
import shlex
import time

import pytest

from tests.support.runtime import cli_path, cname, rt, rt_home
from tests.support.tmux import TmuxTerminal

pytestmark = pytest.mark.root

PROMPT = "/ #"


def term(tmp_path, *args: str, rows: int = 30, cols: int = 100) -> TmuxTerminal:
    return TmuxTerminal(str(tmp_path), shlex.join([*cli_path(), *args]), env=dict(os.environ),
                        cwd=str(tmp_path), rows=rows, cols=cols)


def status(cocker, name: str) -> str | None:
    p = cocker("container", "inspect", name, "--json", check=False)
    return json.loads(p.stdout)["status"] if p.returncode == 0 else None


def wait_until(pred, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)


def test_ctrl_p_reaches_the_shell_and_detaching_from_run_rm_it_leaves_it_running(
        rt, cname, tmp_path):
    _, cocker = rt
    with term(tmp_path, "container", "run", "--rm", "-it", "--name", cname, "busybox:1.0",
              "sh") as t:
        t.wait_for(PROMPT)
        t.type("echo first-$((40+2))\n")
        t.wait_for("first-42")
        t.keys("C-p")                    # history: the shell gets ctrl-p once Enter follows
        time.sleep(0.3)
        t.keys("Enter")
        wait_until(lambda: t.screen().count("first-42") >= 2)
        t.type("echo half")              # a line in progress, then ctrl-p ctrl-q
        t.keys("C-p", "C-q")
        assert t.exit_status() == 0
    assert status(cocker, cname) == "running"          # detached, not stopped, not removed
    with term(tmp_path, "container", "attach", cname) as t:
        time.sleep(0.5)
        t.type("-line\n")                # the line typed before detaching, untouched
        t.wait_for("half-line")
        assert "^P" not in t.screen()
        t.type("exit\n")
        assert t.exit_status() == 0
    wait_until(lambda: status(cocker, cname) is None)  # --rm: removed once it exited


def test_custom_detach_keys(rt, cname, tmp_path):
    _, cocker = rt
    cocker("container", "run", "-d", "-t", "--name", cname, "busybox:1.0", "sh")
    with term(tmp_path, "container", "attach", "--detach-keys", "ctrl-x,x", cname) as t:
        t.type("\n")
        t.wait_for(PROMPT)
        t.keys("C-p", "C-q")             # not the detach keys now: they go to the shell
        t.type("echo still-$((6*7))\n")
        t.wait_for("still-42")
        t.keys("C-x")
        t.type("x")
        assert t.exit_status() == 0
    assert status(cocker, cname) == "running"
    p = cocker("container", "attach", "--detach-keys", "ctrl-", cname, check=False)
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "--detach-keys" in p.stderr


def test_exec_it_has_its_own_pty_inside_that_follows_the_window(rt, cname, tmp_path):
    _, cocker = rt
    cocker("container", "run", "-d", "--name", cname, "busybox:1.0", "sleep", "300")
    with term(tmp_path, "container", "exec", "-it", cname, "sh", rows=30, cols=100) as t:
        t.wait_for(PROMPT)
        t.type("tty; stty size\n")
        t.wait_for("30 100")
        screen = t.screen()
        assert "/dev/pts/" in screen and "not a tty" not in screen
        t.resize(20, 70)
        time.sleep(0.5)
        t.type("stty size\n")
        t.wait_for("20 70")
        t.type("ls -l /proc/self/fd/0\n")   # its terminal is the container's own devpts
        t.wait_for("-> /dev/pts/")
        t.type("exit 3\n")
        assert t.exit_status() == 3
    assert status(cocker, cname) == "running"


def test_attach_without_tty_relays_output_and_detaches(rt, cname, tmp_path):
    _, cocker = rt
    cocker("container", "run", "-d", "--name", cname, "busybox:1.0", "sh", "-c",
           "i=0; while true; do echo tick-$i; echo tock-$i >&2; i=$((i+1)); sleep 0.3; done")
    with term(tmp_path, "container", "attach", cname) as t:
        t.wait_for("tick-")
        t.wait_for("tock-")              # stderr too
        before = t.screen().count("tick-")
        wait_until(lambda: t.screen().count("tick-") > before + 2)   # it keeps relaying
        t.keys("C-p", "C-q")
        assert t.exit_status() == 0
    assert status(cocker, cname) == "running"
