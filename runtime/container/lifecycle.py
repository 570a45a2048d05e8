"""A container's life: create (the record pinned to an image digest), start (the monitor and
the container's processes), run, wait, stop, kill, pause and remove, and the clean-up of what a
crash leaves behind.

Bridge networking (runtime.net.network and its iptables/socket/ipaddress dependencies) and the
terminal side of attach are imported only by the paths that use them: `run --net none` without
a tty is timed against runc.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from common.errors import AlreadyExists, CockerError, Conflict, RuntimeFailure, UsageError
from common.fsutil import atomic_write
from registry.repo import image as imagemod
from registry.repo.repository import RefRecord
from registry.repo.store import Store
from runtime.cgroup.group import Cgroup, validate_limits
from runtime.container import restart_policy, security
from runtime.container.record import (
    HOST_NETS,
    Container,
    load,
    locked,
    new_name,
    require_root,
    validate_name,
)
from runtime.container.spec import ContainerSpec, check_net, merge_env
from runtime.fs import layers, mounts
from runtime.fs.rmtree import rmtree, rmtree_detached
from runtime.fs.state_file import write_json
from runtime.process import kernel_views, monitor, userns
from runtime.process.plan import INIT_PATH, Plan
from runtime.process.startup import StartFailed, exit_code
from runtime.syscalls import process_start_time
from runtime.tty.detach_keys import DETACH_KEYS


def create(store: Store, spec: ContainerSpec, *, durable: bool = True) -> Container:
    """Resolve the image to its digest, check every option, then make the container's directory.
    `durable=False` (a throw-away container) skips the fsyncs of its record."""
    require_root()
    name = validate_name(spec.name) if spec.name else new_name(store)
    cdir = store.paths.container(name)
    if os.path.exists(cdir):
        raise AlreadyExists(f"container name {name} is already taken")
    img = imagemod.load(store, spec.image)
    cfg = img.runtime_config
    for v in spec.volumes:
        mounts.parse_volume(v)
    validate_limits(spec.cpus, spec.cpu_quota, spec.memory, spec.pids_limit)
    net = spec.net or "bridge"
    check_net(store, net, spec.ip, spec.ports)
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
    for alias in spec.aliases:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,62})", alias):
            raise UsageError(f"invalid network alias {alias!r}")
    if spec.aliases and net in HOST_NETS:
        raise UsageError(f"--network-alias needs a bridge network, not --net {net}")
    restart_policy.parse(spec.restart)
    if spec.userns == "host":
        spec = spec._replace(userns="")
    if spec.userns not in ("", "auto"):
        raise UsageError(f"--userns {spec.userns!r}: host or auto")
    if spec.userns == "auto":
        userns.check_kernel()
    opt_ins = security.record_fields(
        privileged=spec.privileged, cap_add=list(spec.cap_add), cap_drop=list(spec.cap_drop),
        security_opt=list(spec.security_opt), read_only=spec.read_only,
        devices=list(spec.devices), init=spec.init)
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
        "env": merge_env(list(cfg.get("Env") or []), spec.env, spec.tty, hostname),
        "workdir": spec.workdir or cfg.get("WorkingDir") or "/",
        "user": spec.user if spec.user is not None else (cfg.get("User") or ""),
        "hostname": hostname,
        "net": net, "ip": spec.ip, "ports": list(spec.ports), "aliases": list(spec.aliases),
        "volumes": list(spec.volumes),
        "cpus": spec.cpus, "cpu_quota": spec.cpu_quota, "memory": spec.memory,
        "pids_limit": spec.pids_limit,
        "tty": bool(spec.tty), "labels": labels, "restart": spec.restart,
        "spec": spec._asdict(),
        **opt_ins,
    }
    try:
        os.mkdir(cdir, 0o700)
    except FileExistsError:
        raise AlreadyExists(f"container name {name} is already taken") from None
    try:
        for sub in ("upper", "work", "rootfs"):
            os.mkdir(os.path.join(cdir, sub), 0o755)
        if spec.userns == "auto":
            idmap = userns.allocate(store.paths, name)
            record["userns"] = {"mode": "auto", "uid": idmap.uid_start, "gid": idmap.gid_start,
                                "size": idmap.size}
        if durable:
            atomic_write(os.path.join(cdir, "container.json"),
                         json.dumps(record, indent=1, sort_keys=True).encode())
        else:
            write_json(os.path.join(cdir, "container.json"), record)
    except BaseException:
        rmtree(cdir)
        userns.release(store.paths, name)
        raise
    return Container(store, name, record)


def plan_for(c: Container, detached: bool) -> tuple[Plan, Cgroup]:
    """What the monitor needs to start `c`; the layer trees a gc removed are unpacked again."""
    r = c.record
    paths = c.layer_paths
    missing = [p for p in paths if not os.path.isdir(p)]
    if missing:                       # removed by a gc since create: unpack them again
        name = re.split(r"[:@]", c.image, maxsplit=1)[0]
        img = imagemod.load_record(c.store, RefRecord(name, "_", c.digest))
        paths = layers.ensure_layers(c.store, img)
    lowerdir = mounts.lower_links(c.dir, paths)
    volumes = [mounts.parse_volume(v) for v in r.get("volumes", [])]
    cg = c.cgroup()
    net = c.net
    hostname = r.get("hostname") or c.name[:63]
    if net not in HOST_NETS:
        # its /etc/hosts: the others on its network by name, kept in step (net/names.py)
        from runtime.net import names  # bridge networks only (start-up time)
        hosts = c.store.paths.container_hosts(c.name)
        names.prepare(hosts, hostname)
        volumes.append((hosts, "/etc/hosts", False))
    argv = list(r["argv"])
    init = None
    if r.get("init"):
        init = security.init_binary()
        argv = [INIT_PATH, "--", *argv]
    return Plan(
        name=c.name, cdir=c.dir, argv=argv, env=list(r["env"]),
        workdir=r.get("workdir") or "/", hostname=hostname,
        lowerdir=lowerdir, volumes=volumes, own_netns=net != "host",
        cgroup_dirs=list(cg.dirs.values()), tty=bool(r.get("tty")), detached=detached,
        user=r.get("user") or "", home=c.store.home,
        network=None if net in HOST_NETS else net, published=bool(r.get("ports")),
        confinement=security.confinement_for(c.store.paths, r),
        privileged=bool(r.get("privileged")), read_only=bool(r.get("read_only")),
        init_binary=init, devices=tuple(security.devices_for(r)), idmap=userns.from_record(r)), cg


def _start(store, name: str, *, detached: bool, stdio=None, before_go=None,
           foreground: bool = False, volatile: bool = False,
           autoremove: bool = False) -> tuple[Container, int]:
    """Start the container; returns it and the monitor's pid once the workload exec'd."""
    require_root()
    c = load(store, name)
    with locked(c.dir):
        current = c.state()
        if current == "running":
            raise Conflict(f"container {name} is already running")
        if current == "dead":
            _cleanup_leftovers(c)
        plan, cg = plan_for(c, detached)
        plan = plan._replace(volatile=volatile or autoremove, autoremove=autoremove)
        r = c.record
        cg.create(cpus=r.get("cpus"), cpu_quota=r.get("cpu_quota"), memory=r.get("memory"),
                  pids_limit=r.get("pids_limit"))
        try:
            if "devices" in cg.dirs and not plan.privileged:
                kernel_views.restrict_devices_v1(cg.dirs["devices"],
                                                 tuple(d.cgroup_rule for d in plan.devices))
        except BaseException:
            cg.remove()
            raise
        try:
            launched = monitor.spawn(plan, stdio, child_of_caller=foreground)
        except BaseException:
            cg.remove()
            raise
        pid = launched.pid
        state: dict[str, Any] = {
            "status": "running", "pid": pid, "pid_start": process_start_time(pid),
            "init_pid": launched.init_pid, "started_at": time.time(), "ip": None,
            "network": plan.network}
        try:
            if plan.network:
                from runtime.net import network  # start-up time
                ep = network.connect(store, plan.network, c.name,
                                     f"/proc/{launched.init_pid}/ns/net",
                                     ip=r.get("ip"), aliases=[plan.hostname,
                                                              *r.get("aliases", [])])
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
        return exit_code(status)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def start(store, name: str, *, attach: bool = False,
          detach_keys: bytes = DETACH_KEYS) -> int | None:
    """Start a created or stopped container in the background. With `attach`, stay connected
    (pty when it has one, else its log) and return its exit code (0 when detached)."""
    from runtime.tty import attach as attachmod  # attached starts only (start-up time)
    c = load(store, name)
    restart_policy.started_by_hand(store.paths.container_restarts(name))
    if attach and c.record.get("tty"):
        code = _run_tty(store, name, keys=detach_keys)
        return 0 if code is None else code
    if not attach:
        _start(store, name, detached=True)
        return None
    offset = attachmod.log_size(c)
    _start(store, name, detached=True)
    attachmod.follow_log(c, offset=offset)     # this run's output only
    return wait(store, name)


def _run_tty(store, name: str, autoremove: bool = False,
             keys: bytes = DETACH_KEYS) -> int | None:
    """Start it on this terminal; its exit code, or None when the user detached (it keeps
    running, and with `autoremove` its monitor removes it when it ends)."""
    from runtime.tty import attach as attachmod  # tty runs only (start-up time)
    holder: dict = {}

    def connect_first(c: Container) -> None:
        holder["sock"] = attachmod.connect(c)
        attachmod.send_winsize(holder["sock"])     # the pty has its size before the shell starts

    c, _ = _start(store, name, detached=True, before_go=connect_first, autoremove=autoremove)
    code = attachmod.session(holder["sock"], keys=keys)
    if code is None:               # detached by the user (ctrl-p ctrl-q): it keeps running
        return None
    # the exit frame comes before the supervisor's last breath: wait for it to finish tearing
    # down (with autoremove, the container may be gone already)
    _wait_unlocked(c, 30)
    return code


def run(store, spec: ContainerSpec, *, rm: bool = False, detach: bool = False,
        interactive: bool = False, detach_keys: bytes = DETACH_KEYS) -> int:
    """create + start; in the foreground, return the command's exit code."""
    c = create(store, spec, durable=not rm)
    name = c.name
    clean = False
    detached_by_user = False
    try:
        if detach:
            _start(store, name, detached=True, autoremove=rm)
            return 0
        if spec.tty:
            code = _run_tty(store, name, autoremove=rm, keys=detach_keys)
            if code is None:        # it keeps running; with --rm its monitor removes it later
                detached_by_user = True
                return 0
            return code
        # without -i the container reads its own /dev/null
        code = _foreground(store, name, (0 if interactive else -1, 1, 2), volatile=rm)
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
        if rm and not detached_by_user and (not detach or c.state() != "running"):
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
    spec = spec._replace(tty=False)
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
    try:
        try:
            code = _foreground(store, c.name, (-1, w, w), volatile=rm)
        finally:
            os.close(w)
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
    """SIGTERM the workload; after `timeout` seconds SIGKILL everything left in the container.
    A stop by hand: its restart policy does not bring it back (restart_policy.py)."""
    c = load(store, name)
    restart_policy.stopped_by_hand(store.paths.container_restarts(name))
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


def restart(store, name: str, timeout: float = 10) -> None:
    """`container restart`: stop (SIGTERM, SIGKILL after `timeout`), then start in the
    background."""
    stop(store, name, timeout=timeout)
    start(store, name)


def restart_by_policy(store, name: str, *, at_daemon_start: bool = False) -> bool:
    """The daemon carrying out the container's --restart policy (counted, not by hand).
    Decided again here, under the container's lock: a stop by hand since the daemon looked
    wins. True if it was started."""
    c = load(store, name)
    path = store.paths.container_restarts(name)
    with locked(c.dir):
        policy = restart_policy.parse(str(c.record.get("restart") or "no"))
        state = c.state()
        if not restart_policy.wants_restart(policy, state, c.exit_code, restart_policy.load(path),
                                            at_daemon_start=at_daemon_start):
            return False
        # counted before it runs: a stop by hand as soon as it is up must not be overwritten
        restart_policy.note_restart(path)
    _start(store, name, detached=True)
    return True


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
        from runtime.net import network  # start-up time
        network.cleanup_owner(c.store, c.name)
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
    require_root()
    c = load(store, name)
    state = c.state()
    if state == "running":
        if not force:
            raise Conflict(f"container {name} is running; stop it first or use --force")
        _force_down(c)
        if c.supervisor_alive():
            raise RuntimeFailure(f"container {name}: could not stop its supervisor")
    with locked(c.dir):
        _cleanup_leftovers(c)
        doomed = os.path.join(store.containers_dir, f".rm-{name}.{os.getpid()}")
        try:
            os.rename(c.dir, doomed)
        except FileNotFoundError:
            return
    if background and not _nothing_written(doomed) and rmtree_detached(doomed):
        userns.release(store.paths, name)
        return
    rmtree(doomed)
    userns.release(store.paths, name)
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


