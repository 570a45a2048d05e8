"""Containers: the record, the lifecycle and the state a crash leaves behind.

    containers/<name>/container.json   what to run: the image DIGEST pinned at create, its layer
                                       diff_ids, the effective command/env/workdir, limits, network
    containers/<name>/state.json       the last start: supervisor pid, address, exit code
    containers/<name>/upper work rootfs L/   overlay upper and work dirs, mount point, layer links
    containers/<name>/running.lock     flock'd by the live supervisor (liveness, immune to pid reuse)
    containers/<name>/lock             flock'd while a command changes the container
    containers/<name>/log              output of detached containers; attach.sock when it has a tty
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from common.errors import (
    AlreadyExists,
    CockerError,
    Conflict,
    NotFound,
    PermissionDenied,
    RuntimeFailure,
    UsageError,
)
from runtime.supervisor import write_json

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
HOST_NETS = ("host", "none")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry",
        "nimble", "proud", "quiet", "rapid", "sharp", "tidy", "vivid", "witty", "zesty", "bold")
_NOUN = ("otter", "falcon", "panda", "lynx", "heron", "badger", "koala", "walrus", "gecko",
         "marmot", "ibis", "yak", "tapir", "quokka", "okapi", "bison", "crane", "dingo")


class StartFailed(RuntimeFailure):
    """The workload could not be started (command missing, not executable, setup failed)."""

    def __init__(self, msg: str, code: int) -> None:
        super().__init__(msg)
        self.exit_code = code


@dataclass
class ContainerSpec:
    image: str
    name: str | None = None
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    hostname: str | None = None
    net: str = "bridge"
    ip: str | None = None
    ports: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    cpus: str | None = None
    cpu_quota: int | None = None
    memory: str | None = None
    pids_limit: int | None = None
    tty: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    restart: str = "no"
    user: str | None = None


class Container:
    def __init__(self, store, name: str, record: dict) -> None:
        self.store = store
        self.name = name
        self.record = record
        self.dir = store.paths.container(name)

    # record ------------------------------------------------------------------------------
    @property
    def upper_dir(self) -> str:
        return os.path.join(self.dir, "upper")

    @property
    def work_dir(self) -> str:
        return os.path.join(self.dir, "work")

    @property
    def rootfs(self) -> str:
        return os.path.join(self.dir, "rootfs")

    @property
    def layer_paths(self) -> list[str]:
        """Layer trees bottom -> top."""
        return [os.path.join(self.store.layers_dir, d.split(":")[-1])
                for d in self.record.get("layers", [])]

    @property
    def lower_dirs(self) -> list[str]:
        """Layer trees top -> bottom, as overlay's lowerdir lists them."""
        return list(reversed(self.layer_paths))

    @property
    def digest(self) -> str:
        return self.record["digest"]

    @property
    def image(self) -> str:
        return self.record["image"]

    @property
    def net(self) -> str:
        return self.record.get("net", "bridge")

    @property
    def labels(self) -> dict:
        return dict(self.record.get("labels") or {})

    # runtime state -------------------------------------------------------------------------
    def runtime_state(self) -> dict:
        try:
            with open(os.path.join(self.dir, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def supervisor_alive(self) -> bool:
        try:
            fd = os.open(os.path.join(self.dir, "running.lock"), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def state(self) -> str:
        st = self.runtime_state()
        if self.supervisor_alive():
            return "running"
        if not st:
            return "created"
        if st.get("status") == "exited":
            return "exited"
        return "dead"

    @property
    def pid(self) -> int | None:
        """The supervisor's host pid while it runs."""
        st = self.runtime_state()
        pid = st.get("pid")
        if not pid or not self.supervisor_alive():
            return None
        from runtime.syscalls import process_start_time
        if st.get("pid_start") and process_start_time(pid) != st["pid_start"]:
            return None
        return int(pid)

    def workload_pid(self) -> int | None:
        """Host pid of the container's main process (the supervisor's child)."""
        sup = self.pid
        if sup is None:
            return None
        try:
            with open(f"/proc/{sup}/task/{sup}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:               # kernels without CONFIG_PROC_CHILDREN: scan for them
            kids = sorted(_children_by_scan(sup), key=lambda p: _start_or_max(p))
        return kids[0] if kids else None

    @property
    def ip(self) -> str | None:
        return self.runtime_state().get("ip") if self.state() == "running" else None

    @property
    def exit_code(self) -> int | None:
        st = self.runtime_state()
        return st.get("exit_code") if st.get("status") == "exited" else None

    def cgroup(self):
        from runtime import cgroups
        return cgroups.Cgroup(self.name, cpus=self.record.get("cpus"),
                              cpu_quota=self.record.get("cpu_quota"))

    def info(self) -> dict:
        st = self.runtime_state()
        state = self.state()
        r = self.record
        paused = False
        if state == "running":
            with contextlib.suppress(Exception):
                paused = self.cgroup().frozen()
        labels = self.labels
        out = {
            "name": self.name, "image": r.get("image"), "digest": r.get("digest"),
            "status": state, "paused": paused,
            "pid": self.pid if state == "running" else None,
            "ip": st.get("ip") if state == "running" else None,
            "net": self.net, "ports": r.get("ports", []), "hostname": r.get("hostname"),
            "command": r.get("argv"), "created": r.get("created"),
            "started_at": st.get("started_at"), "finished_at": st.get("finished_at"),
            "exit_code": st.get("exit_code") if state == "exited" else None,
            "oom_killed": bool(st.get("oom_killed")),
            "labels": labels, "tty": bool(r.get("tty")),
        }
        if "service" in labels:
            out["service"] = labels["service"]
        return out

    def inspect(self) -> dict:
        out = self.info()
        out["record"] = self.record
        out["state"] = self.runtime_state()
        out["dir"] = self.dir
        out["upper_dir"] = self.upper_dir
        out["workload_pid"] = self.workload_pid() if out["status"] == "running" else None
        return out


# helpers --------------------------------------------------------------------------------
def _children_by_scan(ppid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    data = f.read()
                if int(data[data.rindex(b")") + 2:].split()[1]) == ppid:
                    out.append(int(d))
            except (OSError, ValueError):
                continue
    return out


def _start_or_max(pid: int) -> int:
    from runtime.syscalls import process_start_time
    t = process_start_time(pid)
    return t if t is not None else 1 << 62


def _require_root() -> None:
    if os.geteuid() != 0:
        raise PermissionDenied("containers need root (namespaces, mounts and cgroups)")


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise UsageError(f"invalid container name {name!r}: letters, digits and . _ - "
                         "(first a letter or digit, at most 63)")
    return name


def new_name(store) -> str:
    for _ in range(100):
        r = os.urandom(4)
        n = f"{_ADJ[r[0] % len(_ADJ)]}_{_NOUN[r[1] % len(_NOUN)]}_{r[2:].hex()}"
        if not os.path.exists(os.path.join(store.containers_dir, n)):
            return n
    raise RuntimeFailure("could not find a free container name")


@contextlib.contextmanager
def _locked(c_dir: str, timeout: float | None = None) -> Iterator[None]:
    from common.fsutil import flock
    with flock(os.path.join(c_dir, "lock"), timeout=timeout, what="the container"):
        yield


def load(store, name: str) -> Container:
    validate_name(name)
    path = store.paths.container_record(name)
    try:
        with open(path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        raise NotFound(f"container {name} not found") from None
    except ValueError as e:
        raise RuntimeFailure(f"container {name}: unreadable record ({e})") from None
    return Container(store, name, rec)


def list_containers(store, all: bool = True) -> list[Container]:
    _sweep_removed(store)
    out = []
    with contextlib.suppress(FileNotFoundError):
        for n in sorted(os.listdir(store.containers_dir)):
            if n.startswith(".") or not NAME_RE.match(n):
                continue
            try:
                c = load(store, n)
            except CockerError:
                continue
            if all or c.state() == "running":
                out.append(c)
    return out


def _merge_env(image_env: list[str], extra: list[str], tty: bool) -> list[str]:
    env: dict[str, str] = {}
    for e in image_env:
        k, _, v = e.partition("=")
        env[k] = v
    for e in extra:
        k, sep, v = e.partition("=")
        if not k:
            raise UsageError(f"bad environment entry {e!r}: expected KEY=VALUE")
        if not sep:                      # `-e KEY`: take it from the caller's environment
            if k not in os.environ:
                continue
            v = os.environ[k]
        env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    if tty:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def _check_net(store, net: str, ip: str | None, ports: list[str]) -> None:
    if net in HOST_NETS:
        if ip:
            raise UsageError(f"--ip needs a bridge network, not --net {net}")
        if ports:
            raise UsageError(f"-p needs a bridge network, not --net {net}")
        return
    from runtime import ipam, network, portmap
    ipam.validate_network_name(net)
    if net != network.DEFAULT_NETWORK:
        network.get_network(store, net)          # NotFound for an unknown network
    portmap.parse_all(list(ports))
    if ip:
        import ipaddress
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise UsageError(f"--ip {ip!r} is not an IPv4 address") from None


# lifecycle ---------------------------------------------------------------------------------
def create(store, spec: ContainerSpec, *, durable: bool = True) -> Container:
    """Resolve the image to its digest, check every option, then make the container's directory.
    `durable=False` (a throw-away container) skips the fsyncs of its record."""
    _require_root()
    from registry.repo import image as imagemod
    from runtime import cgroups, layers, mounts
    name = validate_name(spec.name) if spec.name else new_name(store)
    cdir = store.paths.container(name)
    if os.path.exists(cdir):
        raise AlreadyExists(f"container name {name} is already taken")
    img = imagemod.load(store, spec.image)
    cfg = img.runtime_config
    for v in spec.volumes:
        mounts.parse_volume(v)
    cgroups.validate_limits(spec.cpus, spec.cpu_quota, spec.memory, spec.pids_limit)
    net = spec.net or "bridge"
    _check_net(store, net, spec.ip, spec.ports)
    if spec.entrypoint is not None:
        entry = list(spec.entrypoint)
        cmd = list(spec.command) if spec.command else []
    else:
        entry = list(cfg.get("Entrypoint") or [])
        cmd = list(spec.command) if spec.command else list(cfg.get("Cmd") or [])
    argv = entry + cmd
    if not argv:
        raise UsageError(f"{spec.image}: no command given and the image defines none")
    hostname = spec.hostname or name[:63].replace("_", "-")
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62})", hostname):
        raise UsageError(f"invalid hostname {hostname!r}")
    if spec.restart not in ("no", "always", "on-failure", "unless-stopped"):
        raise UsageError(f"--restart {spec.restart!r}: no, always, on-failure or unless-stopped")
    layers.ensure_layers(store, img)
    labels = dict(cfg.get("Labels") or {})
    labels.update(spec.labels or {})
    record = {
        "name": name,
        "image": (f"{img.name}@{img.digest}" if img.version.startswith("sha256:")
                  else f"{img.name}:{img.version}"),
        "digest": img.digest,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "layers": img.diff_ids,
        "argv": argv,
        "env": _merge_env(list(cfg.get("Env") or []), spec.env, spec.tty),
        "workdir": spec.workdir or cfg.get("WorkingDir") or "/",
        "user": spec.user if spec.user is not None else (cfg.get("User") or ""),
        "hostname": hostname,
        "net": net, "ip": spec.ip, "ports": list(spec.ports),
        "volumes": list(spec.volumes),
        "cpus": spec.cpus, "cpu_quota": spec.cpu_quota, "memory": spec.memory,
        "pids_limit": spec.pids_limit,
        "tty": bool(spec.tty), "labels": labels, "restart": spec.restart,
        "spec": asdict(spec),
    }
    try:
        os.mkdir(cdir, 0o700)
    except FileExistsError:
        raise AlreadyExists(f"container name {name} is already taken") from None
    try:
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(cdir, sub), 0o755)
        if durable:
            from common.fsutil import atomic_write
            atomic_write(os.path.join(cdir, "container.json"),
                         json.dumps(record, indent=1, sort_keys=True).encode())
        else:
            write_json(os.path.join(cdir, "container.json"), record)
    except BaseException:
        import shutil
        shutil.rmtree(cdir, ignore_errors=True)
        raise
    return Container(store, name, record)


def _plan(c: Container, detached: bool):
    from runtime import mounts
    from runtime.supervisor import Plan
    r = c.record
    paths = c.layer_paths
    missing = [p for p in paths if not os.path.isdir(p)]
    if missing:                       # removed by a gc since create: unpack them again
        from registry.repo import image as imagemod
        from registry.repo.repository import RefRecord
        from runtime import layers
        name = re.split(r"[:@]", c.image, maxsplit=1)[0]
        img = imagemod.load_record(c.store, RefRecord(name, "_", c.digest))
        paths = layers.ensure_layers(c.store, img)
    lowerdir = mounts.lower_links(c.dir, paths)
    volumes = [mounts.parse_volume(v) for v in r.get("volumes", [])]
    cg = c.cgroup()
    net = c.net
    return Plan(
        name=c.name, cdir=c.dir, argv=list(r["argv"]), env=list(r["env"]),
        workdir=r.get("workdir") or "/", hostname=r.get("hostname") or c.name[:63],
        lowerdir=lowerdir, volumes=volumes, own_netns=net != "host",
        cgroup_dirs=list(cg.dirs.values()), tty=bool(r.get("tty")), detached=detached,
        user=r.get("user") or "", home=c.store.home,
        network=None if net in HOST_NETS else net, published=bool(r.get("ports"))), cg


def _start(store, name: str, *, detached: bool, stdio=None, before_go=None,
           foreground: bool = False, volatile: bool = False,
           autoremove: bool = False) -> tuple[Container, int]:
    """Start the container; returns it and the supervisor's pid once the workload exec'd."""
    _require_root()
    c = load(store, name)
    with _locked(c.dir):
        state = c.state()
        if state == "running":
            raise Conflict(f"container {name} is already running")
        if state == "dead":
            _cleanup_leftovers(c)
        plan, cg = _plan(c, detached)
        plan.volatile = volatile or autoremove
        plan.autoremove = autoremove
        r = c.record
        cg.create(cpus=r.get("cpus"), cpu_quota=r.get("cpu_quota"), memory=r.get("memory"),
                  pids_limit=r.get("pids_limit"))
        from runtime import supervisor
        try:
            launched = supervisor.spawn(plan, stdio, reparent_to_caller=foreground)
        except BaseException:
            cg.remove()
            raise
        pid = launched.pid
        from runtime.syscalls import process_start_time
        state = {"status": "running", "pid": pid, "pid_start": process_start_time(pid),
                 "started_at": time.time(), "ip": None, "network": plan.network}
        try:
            if plan.network:
                from runtime import network
                ep = network.connect(store, plan.network, c.name, f"/proc/{pid}/ns/net",
                                     ip=r.get("ip"))
                state["ip"] = ep["ip"]
                state["endpoint"] = ep
                write_json(os.path.join(c.dir, "state.json"), state)
                if r.get("ports"):
                    network.publish(store, c.name, ep["ip"], list(r["ports"]))
            else:
                write_json(os.path.join(c.dir, "state.json"), state)
            if before_go is not None:
                before_go(c)
            os.write(launched.go_w, b"g")
        except BaseException:
            os.close(launched.go_w)
            os.close(launched.err_r)
            _kill(pid, signal.SIGKILL)
            if foreground:
                _waitpid(pid)
            _wait_unlocked(c, 10)
            _cleanup_leftovers(c)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(c.dir, "state.json"))
            raise
        os.close(launched.go_w)
        with os.fdopen(launched.err_r, "rb") as f:
            msg = f.read().decode(errors="replace").strip()
    if msg:
        code = _waitpid(pid) if foreground else None
        if code is None:
            wait(store, name, timeout=10)
            code = c.exit_code
        code = code if code is not None else 125
        raise StartFailed(f"container {name}: {msg}", code if code in (125, 126, 127) else 125)
    return c, pid


def _waitpid(pid: int) -> int | None:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def start(store, name: str, *, attach: bool = False) -> int | None:
    """Start a created or stopped container in the background. With `attach`, stay connected
    (pty when it has one, else its log) and return its exit code."""
    c = load(store, name)
    if attach and c.record.get("tty"):
        return _run_tty(store, name)
    if not attach:
        _start(store, name, detached=True)
        return None
    from runtime import attach as attachmod
    offset = attachmod.log_size(c)
    _start(store, name, detached=True)
    attachmod.follow_log(c, offset=offset)     # this run's output only
    return wait(store, name)


def _run_tty(store, name: str, autoremove: bool = False) -> int:
    from runtime import attach as attachmod
    holder: dict = {}

    def connect_first(c: Container) -> None:
        holder["sock"] = attachmod.connect(c)
        attachmod.send_winsize(holder["sock"])     # the pty has its size before the shell starts

    c, _ = _start(store, name, detached=True, before_go=connect_first, autoremove=autoremove)
    code = attachmod.session(holder["sock"])
    if code is None:               # detached by the user (ctrl-p ctrl-q): it keeps running
        return 0
    # the exit frame comes before the supervisor's last breath: wait for it to finish tearing
    # down (with autoremove, the container may be gone already)
    _wait_unlocked(c, 30)
    return code


def run(store, spec: ContainerSpec, *, rm: bool = False, detach: bool = False,
        interactive: bool = False) -> int:
    """create + start; in the foreground, return the command's exit code."""
    c = create(store, spec, durable=not rm)
    name = c.name
    clean = False
    try:
        if detach:
            _start(store, name, detached=True, autoremove=rm)
            return 0
        if spec.tty:
            return _run_tty(store, name, autoremove=rm)
        stdin = 0 if interactive else os.open(os.devnull, os.O_RDONLY)
        try:
            code = _foreground(store, name, (stdin, 1, 2), volatile=rm)
        finally:
            if stdin:
                os.close(stdin)
        clean = True
        return code
    except StartFailed:
        rm = True                       # nothing of a container that could not start is kept
        raise
    except BaseException:
        if c.state() != "running":
            rm = True
        raise
    finally:
        if rm and (not detach or c.state() != "running"):
            with contextlib.suppress(CockerError):
                remove(store, name, force=True, background=clean)


def _foreground(store, name: str, stdio: tuple[int, int, int], volatile: bool = False) -> int:
    c, pid = _start(store, name, detached=False, stdio=stdio, foreground=True, volatile=volatile)
    old = {}

    def forward(sig, _frame):
        _kill(pid, sig)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        with contextlib.suppress(ValueError):     # not the main thread
            old[sig] = signal.signal(sig, forward)
    try:
        code = _waitpid(pid)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    st = c.runtime_state()
    if st.get("status") == "exited" and st.get("exit_code") is not None:
        return int(st["exit_code"])
    if code is None:
        code = wait(store, name)
    return 255 if code is None else code


def run_captured(store, spec: ContainerSpec, *, rm: bool = True) -> tuple[int, bytes]:
    """Run non-interactively with stdout and stderr captured together (build steps)."""
    import threading
    spec = ContainerSpec(**{**asdict(spec), "tty": False})
    c = create(store, spec)
    r, w = os.pipe()
    chunks: list[bytes] = []

    def reader() -> None:
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        try:
            code = _foreground(store, c.name, (null, w, w), volatile=rm)
        finally:
            os.close(w)
            os.close(null)
            t.join()
            os.close(r)
    except StartFailed as e:
        chunks.append(str(e).encode() + b"\n")
        code = e.exit_code
        rm = True
    finally:
        if rm:
            with contextlib.suppress(CockerError):
                remove(store, c.name, force=True)
    return code, b"".join(chunks)


def wait(store, name: str, timeout: float | None = None) -> int | None:
    """Block until the container stops; its exit code (None on timeout)."""
    c = load(store, name)
    if not _wait_unlocked(c, timeout):
        return None
    return c.exit_code


def _wait_unlocked(c: Container, timeout: float | None) -> bool:
    path = os.path.join(c.dir, "running.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        if timeout is None:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    return True
                except InterruptedError:
                    continue
        deadline = time.monotonic() + timeout
        if _try_shared(fd):
            return True
        _wait_exit(c, timeout)
        delay = 0.002
        while not _try_shared(fd):
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return True
    finally:
        os.close(fd)


def _try_shared(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait_exit(c: Container, timeout: float) -> None:
    """Until the supervisor exits (at most `timeout` s), through a pidfd: it wakes at once,
    where polling the lock would add up to its back-off (50 ms) to every stop. The kernel
    drops a process's flocks before its pidfd turns readable. Best effort: the lock decides."""
    pid = c.pid
    if pid is None:
        return
    try:
        pfd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return
    try:
        import select
        select.select([pfd], [], [], timeout)
    except (OSError, ValueError):
        pass
    finally:
        os.close(pfd)


def kill(store, name: str, sig: int = signal.SIGKILL) -> None:
    c = load(store, name)
    if c.state() != "running":
        raise Conflict(f"container {name} is not running")
    wpid = c.workload_pid()
    if wpid is None:
        raise Conflict(f"container {name} is not running")
    _kill(wpid, sig)


def stop(store, name: str, timeout: float = 10) -> None:
    """SIGTERM the workload; after `timeout` seconds SIGKILL everything left in the container."""
    c = load(store, name)
    if c.state() != "running":
        return
    wpid = c.workload_pid()
    if wpid is not None:
        _kill(wpid, signal.SIGTERM)
        with contextlib.suppress(OSError, RuntimeFailure):
            if c.cgroup().frozen():
                c.cgroup().thaw()
    if _wait_unlocked(c, timeout):
        return
    _force_down(c)


def _force_down(c: Container) -> None:
    wpid = c.workload_pid()
    with contextlib.suppress(Exception):
        c.cgroup().kill_all(signal.SIGKILL)
    if wpid is not None:
        _kill(wpid, signal.SIGKILL)
    if _wait_unlocked(c, 10):
        return
    sup = c.pid                     # a supervisor that does not tear down: end it
    if sup is not None:
        _kill(sup, signal.SIGKILL)
    _wait_unlocked(c, 5)


def _cleanup_leftovers(c: Container) -> None:
    """Whatever a supervisor killed with -9 could not tear down: cgroup, network, mounts."""
    with contextlib.suppress(Exception):
        cg = c.cgroup()
        if cg.exists():
            cg.kill_all(signal.SIGKILL)
            cg.remove()
    if c.net not in HOST_NETS:
        from runtime import network
        network.cleanup_owner(c.store, c.name)
    from runtime import mounts
    mounts.unmount_all(c.rootfs)
    st = c.runtime_state()
    if st and st.get("status") != "exited":
        st.update({"status": "exited", "exit_code": st.get("exit_code", 255),
                   "finished_at": time.time(), "dead": True})
        write_json(os.path.join(c.dir, "state.json"), st)


def remove(store, name: str, force: bool = False, *, background: bool = False) -> None:
    """Delete the container (with `force`, stop a running one first, and clean what a crashed
    supervisor left behind). With `background`, the container is gone at once (renamed away)
    and its files are deleted by a detached process (`run --rm` need not wait for the disk)."""
    _require_root()
    c = load(store, name)
    state = c.state()
    if state == "running":
        if not force:
            raise Conflict(f"container {name} is running; stop it first or use --force")
        _force_down(c)
        if c.supervisor_alive():
            raise RuntimeFailure(f"container {name}: could not stop its supervisor")
    with _locked(c.dir):
        _cleanup_leftovers(c)
        doomed = os.path.join(store.containers_dir, f".rm-{name}.{os.getpid()}")
        try:
            os.rename(c.dir, doomed)
        except FileNotFoundError:
            return
    if background and not _nothing_written(doomed) and _rmtree_detached(doomed):
        return
    _rmtree(doomed)
    if os.path.exists(doomed):
        raise RuntimeFailure(f"could not remove {doomed} completely")


def _nothing_written(cdir: str) -> bool:
    """Whether the container left its upper dir empty: then its directory is a handful of
    empty dirs and small files, quicker to delete here than to fork a process for."""
    try:
        with os.scandir(os.path.join(cdir, "upper")) as it:
            return next(it, None) is None
    except OSError:
        return False


def _rmtree_detached(path: str) -> bool:
    from runtime import syscalls as sc
    try:
        pid = sc.fork()
    except OSError:
        return False
    if pid == 0:
        try:
            os.setsid()
            if sc.fork() == 0:
                # hold none of the caller's pipes open: its reader must see EOF now
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.closerange(3, 65536)
                _rmtree(path)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True


def _sweep_removed(store, grace: float = 600.0) -> None:
    """Directories of removals that died halfway (.rm-*), after a grace period."""
    now = time.time()
    with contextlib.suppress(OSError):
        for e in os.scandir(store.containers_dir):
            if e.name.startswith(".rm-") and now - e.stat(follow_symlinks=False).st_mtime > grace:
                _rmtree(e.path)


def _rmtree(path: str) -> None:
    """shutil.rmtree without importing shutil (and with it bz2/lzma) on `run --rm`'s path."""
    try:
        for root, dirs, files in os.walk(path, topdown=False):
            for f in files:
                os.unlink(os.path.join(root, f))
            for d in dirs:
                p = os.path.join(root, d)
                if os.path.islink(p):
                    os.unlink(p)
                else:
                    os.rmdir(p)
        os.rmdir(path)
    except OSError:
        import shutil
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def paused(store, name: str) -> Iterator[Container]:
    """Freeze the container's processes for the block (a consistent upper dir for commit)."""
    c = load(store, name)
    cg = c.cgroup()
    if c.state() != "running" or not cg.exists():
        yield c
        return
    cg.freeze()
    try:
        yield c
    finally:
        with contextlib.suppress(RuntimeFailure, OSError):
            cg.thaw()


# exec, attach, cp ----------------------------------------------------------------------------
def exec_(store, name: str, argv: list[str], *, tty: bool = False, env: list[str] | None = None,
          workdir: str | None = None, interactive: bool = False) -> int:
    """Run `argv` inside the running container (its namespaces and cgroup); the exit code."""
    _require_root()
    if not argv:
        raise UsageError("exec needs a command")
    c = load(store, name)
    wpid = c.workload_pid() if c.state() == "running" else None
    if wpid is None:
        raise Conflict(f"container {name} is not running")
    from runtime import nsexec
    full_env = _merge_env(list(c.record.get("env") or []), list(env or []), tty)
    return nsexec.run_in(wpid, argv, env=full_env, workdir=workdir or c.record.get("workdir") or "/",
                         tty=tty, interactive=interactive or tty,
                         cgroup_dirs=list(c.cgroup().dirs.values()), user=c.record.get("user") or "")


def attach(store, name: str) -> int | None:
    c = load(store, name)
    if c.state() != "running":
        raise Conflict(f"container {name} is not running")
    from runtime import attach as attachmod
    if not c.record.get("tty"):
        attachmod.follow_log(c, from_start=False)
        return c.exit_code
    return attachmod.session(attachmod.connect(c))


@contextlib.contextmanager
def mounted_rootfs(store, name: str) -> Iterator[str]:
    """The container's merged tree: its live root while it runs, else the overlay mounted for
    the duration of the block."""
    c = load(store, name)
    if c.state() == "running":
        wpid = c.workload_pid()
        if wpid is not None:
            yield f"/proc/{wpid}/root"
            return
    _require_root()
    from runtime import mounts
    from runtime import syscalls as sc
    with _locked(c.dir):
        plan, _ = _plan(c, True)
        mounts.unmount_all(c.rootfs)
        mounts.mount_overlay(c.dir, plan.lowerdir, c.rootfs)
        try:
            yield c.rootfs
        finally:
            with contextlib.suppress(OSError):
                sc.umount2(c.rootfs, sc.MNT_DETACH)


def copy_in(store, name: str, src: str, dest: str) -> None:
    """cocker's putfile: host `src` (file or directory) to `dest` inside the container."""
    from runtime import mounts
    if not os.path.lexists(src):
        raise NotFound(f"{src} does not exist")
    with mounted_rootfs(store, name) as root:
        target = mounts.secure_join(root, dest)
        if os.path.isdir(target):
            target = mounts.secure_join(root, os.path.join(dest, os.path.basename(src.rstrip("/"))))
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise NotFound(f"{name}:{os.path.dirname(dest) or '/'}: no such directory")
        _copy(src, target)


def copy_out(store, name: str, src: str, dest: str) -> None:
    """cocker's getfile: `src` inside the container to host `dest`."""
    from runtime import mounts
    with mounted_rootfs(store, name) as root:
        source = mounts.secure_join(root, src)
        if not os.path.lexists(source):
            raise NotFound(f"{name}:{src}: no such file or directory")
        target = dest
        if os.path.isdir(dest):
            target = os.path.join(dest, os.path.basename(source.rstrip("/")) or "root")
        _copy(source, target)


def _copy(src: str, dst: str) -> None:
    import shutil
    try:
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        elif os.path.islink(src):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dst)
            os.symlink(os.readlink(src), dst)
        else:
            if os.path.islink(dst):
                os.unlink(dst)            # never write through a link planted in the container
            shutil.copy2(src, dst)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CockerError(f"no space left on device while copying to {dst}") from e
        raise
