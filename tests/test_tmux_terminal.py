"""The terminal that the terminal tests type into (tests/support/tmux.py) reports the exit status
a command really had, even when the tmux server loses track of its pane's process, and a command
killed by signal N as a shell would (128 + N).

tmux (built with libutempter, as Debian's is) sets SIGCHLD to SIG_DFL while a helper removes the
utmp record of a pane whose pty closed: a pane process whose exit completes in that window is left
a zombie that tmux never reaps, and the pane stays dead without a status. `cocker container exec
-it` hit it about one run in three: its exit closes the pty, wakes the tmux server on the same CPU
and is preempted by it before its own exit is complete. Hence the status is not tmux's to tell.
"""

from __future__ import annotations

import shlex
import sys

from tests.support.tmux import TmuxTerminal

# closes the pty, then exits once the tmux server (named in $TMUX) has SIGCHLD at SIG_DFL; deaf to
# the hangup that follows when tmux closes the pane, should it come first
EXITS_WHILE_TMUX_IGNORES_SIGCHLD = r"""
import os, signal, time
signal.signal(signal.SIGHUP, signal.SIG_IGN)
server = os.environ["TMUX"].split(",")[1]
for fd in (0, 1, 2):
    os.close(fd)
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    with open(f"/proc/{server}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    if not caught & (1 << (signal.SIGCHLD - 1)):
        break
os._exit(3)
"""


def test_exit_status_of_a_command_exiting_while_tmux_ignores_sigchld(tmp_path):
    command = shlex.join([sys.executable, "-c", EXITS_WHILE_TMUX_IGNORES_SIGCHLD])
    for _ in range(2):
        with TmuxTerminal(str(tmp_path), command) as t:
            assert t.exit_status(timeout=10) == 3


def test_exit_status_of_a_command_killed_by_a_signal(tmp_path):
    with TmuxTerminal(str(tmp_path), "sh -c 'kill -TERM $$'") as t:
        assert t.exit_status(timeout=10) == 128 + 15
