"""--restart no|always|on-failure[:N]|unless-stopped: what each policy asks, and the little state
it needs next to the container (who stopped it, how many restarts so far).

The policies are carried out by `cocker daemon` (runtime/daemon/restarts.py), as dockerd carries
out docker's: while it runs it restarts containers that end as their policy says, and when it
starts (after its own restart or the host's) it brings back those whose policy wants them up:
- always: whenever it ends; at daemon start even if it had been stopped by hand;
- unless-stopped: whenever it ends, unless it was stopped by hand (`container stop`);
- on-failure[:N]: when it ends with a non-zero exit code, or was running when the host went
  down, at most N times in a row (unlimited without N); a stop by hand ends it;
- no: never.
A start by hand (`container start`/`restart`) clears "stopped by hand" and the count.
"""

import contextlib
import json
import os
import re
import time
from typing import NamedTuple

from common.errors import UsageError
from common.fsutil import atomic_write

KINDS = ("no", "always", "on-failure", "unless-stopped")
MAX_BACKOFF = 30.0


class Policy(NamedTuple):
    kind: str
    max_retries: int | None = None      # on-failure:N


def parse(text: str) -> Policy:
    m = re.fullmatch(r"(no|always|unless-stopped|on-failure)(?::(\d+))?", text or "no")
    if not m or (m.group(2) is not None and m.group(1) != "on-failure"):
        raise UsageError(f"--restart {text!r}: no, always, on-failure[:N] or unless-stopped")
    return Policy(m.group(1), int(m.group(2)) if m.group(2) is not None else None)


class RestartState:
    # a plain class, not a dataclass: this module is imported on every container start
    __slots__ = ("stopped_by_hand", "count", "last")

    def __init__(self, stopped_by_hand: bool = False, count: int = 0, last: float = 0.0) -> None:
        self.stopped_by_hand = stopped_by_hand
        self.count = count                  # restarts since the last start by hand
        self.last = last                    # when the daemon last restarted it


def load(path: str) -> RestartState:
    try:
        with open(path) as f:
            d = json.load(f)
        return RestartState(bool(d.get("stopped_by_hand")), int(d.get("count", 0)),
                            float(d.get("last", 0.0)))
    except (OSError, ValueError, TypeError, AttributeError):
        return RestartState()


def save(path: str, st: RestartState) -> None:
    with contextlib.suppress(FileNotFoundError):      # the container was removed meanwhile
        atomic_write(path, json.dumps({"stopped_by_hand": st.stopped_by_hand,
                                              "count": st.count, "last": st.last}).encode())


def stopped_by_hand(path: str) -> None:
    st = load(path)
    st.stopped_by_hand = True
    save(path, st)


def started_by_hand(path: str) -> None:
    if os.path.exists(path):
        save(path, RestartState())


def wants_restart(policy: Policy, state: str, exit_code: int | None, st: RestartState, *,
                  at_daemon_start: bool) -> bool:
    """Should a container in `state` ("exited" or "dead": its monitor vanished, as in a host
    restart) be started again?"""
    if state not in ("exited", "dead") or policy.kind == "no":
        return False
    if policy.kind == "always":
        return at_daemon_start or not st.stopped_by_hand
    if st.stopped_by_hand:
        return False
    if policy.kind == "unless-stopped":
        return True
    failed = state == "dead" or exit_code not in (0, None)
    return failed and (policy.max_retries is None or st.count < policy.max_retries)


def backoff(st: RestartState) -> float:
    """Seconds to wait after the last restart before the next: doubling, as docker's."""
    return 0.0 if st.count == 0 else min(0.1 * 2 ** st.count, MAX_BACKOFF)


def note_restart(path: str) -> None:
    st = load(path)
    st.count += 1
    st.last = time.time()
    st.stopped_by_hand = False
    save(path, st)
