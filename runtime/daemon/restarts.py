"""The daemon carries out containers' --restart policies (runtime/container/restart_policy.py).

At its start (its own restart, or the host's: monitors gone, containers "dead") it brings back
what the policies want up, then it looks again every second. Each restart runs in a worker
process, as every start through the daemon does, so containers never become its children.
A service's replicas are left to the service's own monitor.
"""

from __future__ import annotations

import sys
import threading
import time

from common.errors import CockerError
from registry.repo.store import Store
from runtime.container import record, restart_policy

INTERVAL = 1.0


def due(store: Store, *, at_daemon_start: bool) -> list[str]:
    """The containers whose policy wants them started now."""
    out = []
    now = time.time()
    for c in record.list_containers(store, all=True):
        if "service" in c.labels:
            continue
        try:
            policy = restart_policy.parse(str(c.record.get("restart") or "no"))
        except CockerError:
            continue
        if policy.kind == "no":
            continue
        # the state first: a stop by hand is marked before the container goes down, so a
        # container seen down here has its mark, if any, in what is read next
        state = c.state()
        st = restart_policy.load(store.paths.container_restarts(c.name))
        if not restart_policy.wants_restart(policy, state, c.exit_code, st,
                                            at_daemon_start=at_daemon_start):
            continue
        if at_daemon_start or now - st.last >= restart_policy.backoff(st):
            out.append(c.name)
    return out


def keep_policies(home: str, stop: threading.Event, restart_one) -> None:
    """Until `stop` is set: restart what is due (`restart_one(name, at_daemon_start)` does one
    restart, True if it happened)."""
    at_start = True
    while not stop.is_set():
        try:
            names = due(Store(home), at_daemon_start=at_start)
        except (CockerError, OSError) as e:
            print(f"cocker daemon: restart policies: {e}", file=sys.stderr)
            names = []
        for name in names:
            try:
                if restart_one(name, at_start):
                    print(f"cocker daemon: restarted {name} (its --restart policy)",
                          file=sys.stderr, flush=True)
            except (CockerError, OSError) as e:
                print(f"cocker daemon: restarting {name}: {e}", file=sys.stderr)
        at_start = False
        stop.wait(INTERVAL)
