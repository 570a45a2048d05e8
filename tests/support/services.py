"""Service test support: a store with a busybox web image, HTTP probes and a load generator on
127.0.0.1, and a check (plus a fallback cleanup) that nothing of a service is left on the host."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

from tests.conftest import run_cocker
from tests.support.net import unique, unique_subnet

# each replica serves its own hostname (= its container name) with busybox httpd
HTTPD = ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid() % 10000}{uuid.uuid4().hex[:4]}"


def make_home(base: str) -> str:
    """A store holding web:1.0 and web:2.0 (a busybox rootfs)."""
    from builder.testimage import make_busybox_rootfs
    home = os.path.join(base, "home")
    rootfs = make_busybox_rootfs(os.path.join(base, "rootfs"))
    env = {"COCKER_HOME": home, "COCKER_QUIET": "1"}
    # the store's own default bridge: a lone container never meets another store's cocker0
    os.makedirs(os.path.join(home, "config"), exist_ok=True)
    with open(os.path.join(home, "config", "network.json"), "w") as f:
        json.dump({"bridge": unique("cks"), "subnet": unique_subnet()}, f)
    run_cocker("image", "import", rootfs, "web:1.0", env=env)
    with open(os.path.join(rootfs, "etc", "motd"), "w") as f:
        f.write("version 2\n")
    run_cocker("image", "import", rootfs, "web:2.0", env=env)
    return home


def get(port: int, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace").strip()
    finally:
        conn.close()


def answers(port: int, n: int = 30) -> set[str]:
    """The distinct bodies of n requests (every one must be a 200)."""
    seen = set()
    for _ in range(n):
        status, body = get(port)
        assert status == 200, (status, body)
        seen.add(body)
    return seen


def wait_for(pred, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class Load:
    """Requests in a loop (several clients) while something happens; every outcome recorded."""

    def __init__(self, port: int, clients: int = 3) -> None:
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.bodies: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.port, timeout=10)
                with self._lock:
                    if status == 200:
                        self.ok += 1
                        self.bodies.add(body)
                    else:
                        self.failures.append(f"HTTP {status}: {body[:80]}")
            except Exception as e:  # a refused or reset connection is a failed request too
                with self._lock:
                    self.failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.01)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def monitor_pids(home: str, name: str) -> list[int]:
    """Processes running `runtime.service_monitor --home HOME NAME` (also the supervisors of
    containers it restarted, which are forked from it: they mean a container is left)."""
    want = ["-m", "runtime.services.monitor", "--home", home, name]
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        if argv[-len(want):] == want:
            out.append(int(p))
    return out


def _nginx_pids_for(prefix: str) -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "nginx" in cmd and prefix in cmd:
            pids.append(int(p))
    return pids


def leftovers(home: str, name: str, bridge: str | None = None) -> list[str]:
    """What of service `name` is still on the host or in the store (empty: nothing)."""
    from registry.repo.store import Store
    from runtime.container import record
    from runtime.net import network
    from runtime.services.manager import netns_name, network_name
    store = Store(home)
    left = []
    sdir = os.path.join(home, "services", name)
    if os.path.exists(sdir):
        left.append(f"service dir {sdir}")
    if os.path.exists(f"/run/netns/{netns_name(name)}"):
        left.append(f"netns {netns_name(name)}")
    if bridge and bridge in _links():
        left.append(f"bridge {bridge}")
    try:
        network.get_network(store, network_name(name))
        left.append(f"network {network_name(name)}")
    except Exception:  # gone, which is what is checked
        pass
    for c in record.list_containers(store, all=True):
        if c.labels.get("service") == name:
            left.append(f"container {c.name}")
    pids = _nginx_pids_for(os.path.join(sdir, "nginx"))
    if pids:
        left.append(f"nginx processes {pids}")
    mon = monitor_pids(home, name)
    if mon:
        left.append(f"monitor {mon}")
    return left


def force_cleanup(home: str, name: str) -> None:
    """Teardown of last resort: `service rm`, then whatever it could not remove, by pid/name."""
    env = {"COCKER_HOME": home}
    run_cocker("service", "rm", name, check=False, env=env)
    sdir = os.path.join(home, "services", name)
    from registry.repo.store import Store
    from runtime.container import lifecycle, record
    from runtime.net import network
    from runtime.services.manager import netns_name, network_name, nginx_owner
    store = Store(home)
    pidfile = os.path.join(sdir, "monitor.pid")
    if os.path.exists(pidfile):
        try:
            pid = int(Path(pidfile).read_text())
            if monitor_pids(home, name) == [pid]:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass
    for pid in _nginx_pids_for(os.path.join(sdir, "nginx")):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for c in record.list_containers(store, all=True):
        if c.labels.get("service") == name:
            try:
                lifecycle.remove(store, c.name, force=True)
            except Exception:  # teardown goes on whatever one step raises
                pass
    for fn in (lambda: network.cleanup_owner(store, nginx_owner(name)),
               lambda: network.delete_netns(netns_name(name)),
               lambda: network.remove_network(store, network_name(name))):
        try:
            fn()
        except Exception:  # teardown goes on whatever one step raises
            pass
    shutil.rmtree(sdir, ignore_errors=True)
