"""A service's monitor: `python -m runtime.services.monitor --home HOME NAME`.

One small detached process per service (started by `cocker service create`, and again by any
service command or the daemon if it is gone). It holds `monitor.lock` for its whole life, so
there is never more than one, and writes its pid next to it.

Every POLL seconds it looks at the replicas' states. A replica in rotation that is no longer
running leaves nginx's upstream at once (graceful reload); then, per the restart policy, it is
started again (with a growing delay if it keeps dying), waited for until it answers on its
port, and put back into rotation. The monitor exits when its service is removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from common.errors import CockerError, LockBusy, NotFound
from registry.repo.store import Store
from runtime.container import lifecycle
from runtime.services import state as st
from runtime.services.manager import (
    apply_rotation,
    container_state,
    flush_neighbours,
    monitor_paths,
    nginx_for,
    revive_frontend,
)

POLL = 0.2
LOCK_WAIT = 0.5
MAX_BACKOFF = 10.0


def log(msg: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%S"), msg, file=sys.stderr, flush=True)


class Monitor:
    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name
        self.next_try: dict[str, float] = {}     # replica -> when it may be restarted
        self.failures: dict[str, int] = {}       # replica -> quick deaths in a row
        self.started: dict[str, float] = {}

    def run(self) -> None:
        while st.exists(self.store, self.name):
            _reap()
            try:
                self.tick()
            except LockBusy:
                pass                       # a service command is at work; look again soon
            except CockerError as e:
                log(f"error: {e}")
            except Exception as e:  # noqa: BLE001 - never die on one bad round: the next one may do better
                log(f"unexpected error: {type(e).__name__}: {e}")
            time.sleep(POLL)
        log("service removed; monitor exits")

    def tick(self) -> None:
        rec = st.load(self.store, self.name)
        if rec.get("state") != "running":
            return
        self.check_nginx(rec)
        for r in rec["replicas"]:
            state, code, ip = container_state(self.store, r["name"])
            if state == "running":
                if not r.get("active") and ip and _answers(ip, r["port"]):
                    self.readmit(r["name"], ip)        # started again by hand, or late to serve
                continue
            if r.get("active"):
                self.out_of_rotation(r["name"], state, code)
            if r.get("held"):
                continue                                # stopped by a user: stays stopped
            if self.should_restart(rec, state, code) and time.monotonic() >= self.next_try.get(r["name"], 0):
                self.restart(r["name"])

    def check_nginx(self, rec: dict) -> None:
        """nginx died (killed, OOM, a reboot): bring the service's front end back."""
        if nginx_for(self.store, rec).running():
            return
        with st.service_lock(self.store, self.name, timeout=LOCK_WAIT):
            rec = st.load(self.store, self.name)
            if nginx_for(self.store, rec).running() or rec.get("state") != "running":
                return
            revive_frontend(self.store, rec)
            st.save(self.store, rec)
            log(f"nginx was not running: started again (pid {rec['nginx']['pid']})")

    def should_restart(self, rec: dict, state: str, code: int | None) -> bool:
        policy = rec["spec"].get("restart", "always")
        if state == "missing":
            return False
        if policy == "always":
            return True
        if policy == "on-failure":
            return code != 0
        return False

    def out_of_rotation(self, cname: str, state: str, code: int | None) -> None:
        with st.service_lock(self.store, self.name, timeout=LOCK_WAIT):
            rec = st.load(self.store, self.name)
            changed = False
            for r in rec["replicas"]:
                if r["name"] == cname and r.get("active"):
                    r["active"] = False
                    changed = True
            if changed:
                apply_rotation(self.store, rec)
                st.save(self.store, rec)
                log(f"replica {cname} {state} (exit code {code}): out of rotation")

    def readmit(self, cname: str, ip: str) -> None:
        with st.service_lock(self.store, self.name, timeout=LOCK_WAIT):
            rec = st.load(self.store, self.name)
            for r in rec["replicas"]:
                if r["name"] == cname and not r.get("active"):
                    r["ip"], r["active"], r["held"] = ip, True, False
                    apply_rotation(self.store, rec)
                    st.save(self.store, rec)
                    log(f"replica {cname} serves again: back in rotation at {ip}")

    def restart(self, cname: str) -> None:
        now = time.monotonic()
        # a replica that dies soon after a restart waits longer before the next one
        if now - self.started.get(cname, 0) < 10:
            self.failures[cname] = self.failures.get(cname, 0) + 1
        else:
            self.failures[cname] = 0
        delay = min(MAX_BACKOFF, 0.25 * (2 ** self.failures[cname])) if self.failures[cname] else 0
        self.next_try[cname] = now + delay
        self.started[cname] = now
        with st.service_lock(self.store, self.name, timeout=LOCK_WAIT):
            rec = st.load(self.store, self.name)
            r = next((r for r in rec["replicas"] if r["name"] == cname), None)
            if r is None:
                return
            try:
                with _quiet_stop():
                    lifecycle.stop(self.store, cname, timeout=1)
                lifecycle.start(self.store, cname)
            except CockerError as e:
                log(f"replica {cname}: restart failed: {e}")
                return
            r["restarts"] = r.get("restarts", 0) + 1
            st.save(self.store, rec)
        ip = container_state(self.store, cname)[2]
        if ip:
            flush_neighbours(None, ip)     # a new veth, a new MAC behind the same address
        log(f"replica {cname} restarted; back in rotation once it serves")


class _quiet_stop:
    """Stopping a container that already died may complain; its leftovers are what we want gone."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et, ev, tb) -> bool:
        return et is not None and issubclass(et, (CockerError, OSError))


def _answers(ip: str, port: int) -> bool:
    import socket
    try:
        with socket.create_connection((ip, port), timeout=0.2):
            return True
    except OSError:
        return False


def _reap() -> None:
    # containers started from here may be our children until they detach
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cocker-service-monitor")
    ap.add_argument("--home", required=True)
    ap.add_argument("name")
    a = ap.parse_args(argv)
    store = Store(a.home)
    try:
        lock, pidfile = _paths(store, a.name)
    except CockerError as e:
        log(str(e))
        return 2
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    # a POSIX lock, not flock: the containers this process restarts are forked from it and
    # must not inherit the monitor's lock (see service_state.process_lock)
    if not st.try_lock(fd):
        return 0                                  # another monitor is on duty
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()}\n")
    # SIGTERM keeps its default action (die at once): a Python handler would also run in the
    # short-lived children that libraries fork (pyroute2 enters namespaces that way), turning
    # such a child into a second copy of this loop instead of letting it exit
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log(f"monitoring service {a.name} (pid {os.getpid()})")
    try:
        Monitor(store, a.name).run()
    except NotFound:
        pass
    return 0


def _paths(store: Store, name: str) -> tuple[str, str]:
    return monitor_paths(store, name)


if __name__ == "__main__":
    sys.exit(main())
