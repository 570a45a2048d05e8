"""cocker image edit, driven through a real pty like a user at a terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest

from tests.support.builder import busybox_image, cleanup_containers

pytestmark = pytest.mark.root


def drive(args: list[str], lines: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run the real CLI on a pty; type each line once the shell shows a prompt."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(sys.executable, [sys.executable, "-m", "cocker.main", *args], os.environ)
    out = b""
    deadline = time.monotonic() + timeout
    todo = list(lines)
    sent_at = 0
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break                       # EIO: the child closed the pty
                if not chunk:
                    break
                out += chunk
            # the busybox shell prompt ends in "# "; type the next line after each prompt
            prompts = out.count(b"# ")
            if todo and prompts > sent_at:
                os.write(fd, todo.pop(0).encode() + b"\n")
                sent_at = prompts
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_edit_commits_the_next_version(store, busybox_image, cleanup_containers):
    code, out = drive(["image", "edit", "busybox:1.0", "-m", "edited by hand",
                       "--net", "none"],
                      ["echo edited > /edited; rm /etc/motd", "exit"])
    assert code == 0, out
    assert "busybox:1.0.1" in out
    from runtime.container import lifecycle, record
    from runtime.container.spec import ContainerSpec
    assert record.list_containers(store) == []           # removed without --keep
    spec = ContainerSpec(image="busybox:1.0.1", net="none",
                                    command=["/bin/sh", "-c", "cat /edited; ls /etc"])
    rc, text = lifecycle.run_captured(store, spec)
    assert rc == 0 and b"edited" in text and b"motd" not in text
    assert store.get_ref("busybox", "1.0") == busybox_image.digest


def test_edit_without_changes_and_keep(store, busybox_image, cleanup_containers):
    name = f"ed{os.getpid()}"
    code, out = drive(["image", "edit", "busybox:1.0", "--keep", "--name", name,
                       "--to", "kept:1", "--net", "none"], ["ls /", "exit"])
    assert code == 0, out
    assert "no changes" in out and store.get_ref("kept", "1") is None
    from runtime.container import record
    assert record.load(store, name).state() == "exited"   # kept for later commits
