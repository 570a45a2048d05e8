"""Services: N replicas of one image version behind a real nginx, on a bridge of their own.

A service is made of, in creation order:
  1. a named network (bridge + private subnet) of its own        network.create_network
  2. a network namespace for nginx, connected to that network    network.new_netns / connect
  3. nginx (the host's binary) running in that namespace         runtime.services.nginx
  4. the published host ports, mapped to nginx's port 80        network.publish
  5. the replicas: containers labelled {"service": NAME}        containers.create / start
  6. a monitor process that takes dead replicas out of nginx's rotation at once and restarts
     them per the restart policy                                runtime.services.monitor
Creation is all-or-nothing: what was made is undone, last first, when a step fails. Removal
undoes everything in reverse order and tolerates any part being gone already.

The record (runtime.services.state) is the only state; every change is made under the
service's lock, so a command, the daemon and the monitor never trip over each other.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from common.errors import AlreadyExists, CockerError, Conflict, NotFound, UsageError
from registry.repo import image as imagemod
from runtime.container import lifecycle, record
from runtime.container.spec import ContainerSpec
from runtime.net import network
from runtime.net.netns import iproute
from runtime.services import state as st
from runtime.services.app_dirs import remove_app_dir
from runtime.services.nginx import Nginx, nginx_binary
from runtime.services.state import ServiceSpec

READY_TIMEOUT = float(os.environ.get("COCKER_SERVICE_READY_TIMEOUT", "30"))
NGINX_PORT = 80


# ---- names of the things a service owns ------------------------------------------------

def network_name(name: str) -> str:
    return f"svc-{name}"


def netns_name(name: str) -> str:
    return f"cocker-svc-{name}"


def nginx_owner(name: str) -> str:
    """The owner name nginx's endpoint and port mappings are recorded under."""
    return f"svc-{name}-nginx"


def nginx_for(store, rec: dict) -> Nginx:
    return Nginx(os.path.join(st.service_dir(store, rec["name"]), "nginx"),
                 rec.get("nginx", {}).get("netns_path"))


# ---- checks made before anything is created ---------------------------------------------

def parse_publish(spec: ServiceSpec) -> list[tuple[str, int]]:
    """--publish [HOSTIP:]PORT[:CTRPORT] -> [(host ip, host port)]; CTRPORT sets spec.port."""
    out: list[tuple[str, int]] = []
    ctr_ports: set[int] = set()
    for p in spec.publish:
        if not isinstance(p, str):
            raise UsageError(f"invalid publish {p!r}")
        text = p.removesuffix("/tcp")
        if "/" in text:
            raise UsageError(f"invalid publish {p!r}: services publish TCP only")
        parts = text.split(":")
        host_ip = "0.0.0.0"
        if len(parts) == 3:
            host_ip, parts = parts[0], parts[1:]
        elif len(parts) not in (1, 2):
            raise UsageError(f"invalid publish {p!r}: expected [HOSTIP:]PORT:CTRPORT")
        try:
            ipaddress.IPv4Address(host_ip)
            nums = [int(x) for x in parts]
        except ValueError:
            raise UsageError(f"invalid publish {p!r}: expected [HOSTIP:]PORT:CTRPORT") from None
        host_port = st.validate_port(nums[0], f"published port in {p!r}")
        if len(nums) == 2:
            ctr_ports.add(st.validate_port(nums[1], f"container port in {p!r}"))
        out.append((host_ip, host_port))
    if len(ctr_ports) > 1:
        raise UsageError("all published ports of a service must go to the same replica port")
    if ctr_ports:
        spec.port = ctr_ports.pop()
    return out


def check_port_free(host_ip: str, port: int) -> None:
    """A port some process already listens on is refused before anything is made."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host_ip, port))
        except OSError as e:
            raise Conflict(f"port {host_ip}:{port} is already in use ({e.strerror})") from None


def resolve_image(store, ref: str) -> tuple[str, str]:
    """An image reference -> (exact name:version, manifest digest). Every replica runs that
    version, whatever is published later under the same name."""
    try:
        img = imagemod.load(store, ref)
    except NotFound:
        raise NotFound(f"image {ref} does not exist in the local store") from None
    return f"{img.name}:{img.version}", img.digest


# ---- replicas ---------------------------------------------------------------------------

def _container_spec(rec: dict, cname: str):
    s = rec["spec"]
    return ContainerSpec(
        image=rec["image_ref"], name=cname, command=s.get("command"),
        entrypoint=s.get("entrypoint"), hostname=cname, net=rec["network"],
        env=list(s.get("env") or []), volumes=list(s.get("volumes") or []),
        workdir=s.get("workdir"), cpus=s.get("cpus"), cpu_quota=s.get("cpu_quota"),
        memory=s.get("memory"), pids_limit=s.get("pids_limit"),
        labels={"service": rec["name"]},
        # the service's monitor restarts replicas itself, after taking them out of nginx
        restart="no")


def _new_replica_name(rec: dict) -> str:
    rec["seq"] = rec.get("seq", 0) + 1
    return f"{rec['name']}-{rec['seq']}"


def container_state(store, cname: str) -> tuple[str, int | None, str | None]:
    """(state, exit code, ip) of a container; ("missing", None, None) when it is gone."""
    try:
        c = record.load(store, cname)
    except NotFound:
        return "missing", None, None
    return c.state(), getattr(c, "exit_code", None), getattr(c, "ip", None)


def flush_neighbours(netns_path: str | None = None, ip: str | None = None) -> None:
    """Forget cached MAC addresses (all, or `ip`'s) in the host or in a namespace.

    A replica that comes back (a restart, or a new replica given a freed address) has a new
    veth with a new MAC; a stale ARP entry would send nginx's (or the host's) packets to the
    old one until the kernel notices, seconds later."""
    import socket as _socket

    try:
        with iproute(netns_path) as ipr:
            for n in ipr.get_neighbours(family=_socket.AF_INET):
                dst = n.get_attr("NDA_DST")
                if dst and (ip is None or dst == ip):
                    with contextlib.suppress(Exception):   # gone already, or a permanent entry
                        ipr.neigh("del", dst=dst, ifindex=n["ifindex"])
    except (CockerError, OSError):
        pass          # no cache to clean is no reason to fail a reload


def wait_ready(store, cname: str, port: int, timeout: float = READY_TIMEOUT) -> str:
    """Wait until the replica accepts TCP connections on its port; returns its IP."""
    deadline = time.monotonic() + timeout
    flushed = None
    while True:
        state, code, ip = container_state(store, cname)
        if state != "running":
            raise CockerError(f"replica {cname} is {state}"
                              + (f" (exit code {code})" if code is not None else "")
                              + f" instead of serving on port {port}; see `cocker container logs {cname}`")
        if ip:
            if flushed != ip:
                flush_neighbours(None, ip)
                flushed = ip
            try:
                with socket.create_connection((ip, port), timeout=0.3):
                    return ip
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise CockerError(f"replica {cname} does not answer on {ip}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


def start_replica(store, rec: dict, cname: str | None = None, *, origin: str = "template") -> dict:
    """Create and start one replica, wait until it serves. Not yet in nginx's rotation.
    On failure the container is removed again."""
    cname = cname or _new_replica_name(rec)
    lifecycle.create(store, _container_spec(rec, cname))
    try:
        lifecycle.start(store, cname)
        ip = wait_ready(store, cname, rec["spec"]["port"])
    except BaseException:
        _remove_container(store, cname)
        raise
    return {"name": cname, "ip": ip, "port": rec["spec"]["port"], "origin": origin,
            "active": False}


def _remove_container(store, cname: str) -> None:
    with contextlib.suppress(NotFound):
        lifecycle.remove(store, cname, force=True)
    remove_app_dir(store, cname)


def upstream(rec: dict) -> list[str]:
    return [f"{r['ip']}:{r['port']}" for r in rec["replicas"] if r.get("active") and r.get("ip")]


def apply_rotation(store, rec: dict, *, drain: bool = False) -> None:
    """Make nginx's upstream what the record says, gracefully."""
    ng = nginx_for(store, rec)
    nspath = rec.get("nginx", {}).get("netns_path")
    if nspath and os.path.exists(nspath):
        flush_neighbours(nspath)
    ng.reload(upstream(rec), drain=drain)


# ---- create -----------------------------------------------------------------------------

class _Undo:
    """Steps to undo, last first, when creation fails half-way."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, what: str, fn: Callable[[], None]) -> None:
        self.steps.append((what, fn))

    def run(self) -> list[str]:
        failed = []
        for what, fn in reversed(self.steps):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - keep undoing the rest; report what could not be undone
                failed.append(f"{what}: {e}")
        self.steps.clear()
        return failed


def create_from_options(store, name: str, image: str, *, replicas: int = 1,
                        publish: list[str] | None = None, port: int | None = None,
                        subnet: str | None = None, restart: str = "always",
                        env: list[str] | None = None, volumes: list[str] | None = None,
                        workdir: str | None = None, entrypoint: str | None = None,
                        cpus: str | None = None, cpu_quota: int | None = None,
                        memory: str | None = None, pids_limit: int | None = None,
                        command: list[str] | None = None) -> dict:
    """What `cocker service create` does: a spec from its options (an explicit port must
    agree with --publish's container port), then create()."""
    for e in env or []:
        if "=" not in e:
            raise UsageError(f"-e {e!r}: expected KEY=VALUE")
    spec = ServiceSpec(name=name, image=image, replicas=replicas, port=port or st.DEFAULT_PORT,
                       publish=list(publish or []), subnet=subnet, command=command or None,
                       entrypoint=[entrypoint] if entrypoint else None, env=list(env or []),
                       volumes=list(volumes or []), workdir=workdir, cpus=cpus,
                       cpu_quota=cpu_quota, memory=memory, pids_limit=pids_limit,
                       restart=restart)
    if port is not None:
        parse_publish(spec)  # sets spec.port from --publish
        if spec.port != port:
            raise UsageError(f"--port {port} disagrees with --publish's container port {spec.port}")
    return create(store, spec)


def create(store, spec: ServiceSpec, *, start_monitor: bool = True) -> dict:
    """Create a service and everything it needs; all or nothing. Returns its record."""
    spec.validate()
    ports = parse_publish(spec)
    nginx_binary()                                   # nginx missing: say so before making anything
    image_ref = digest = None
    if spec.image:
        image_ref, digest = resolve_image(store, spec.image)
    for host_ip, port in ports:
        check_port_free(host_ip, port)
    os.makedirs(st.services_dir(store), exist_ok=True)
    with st.global_lock(store), st.service_lock(store, spec.name):
        if st.exists(store, spec.name):
            state = st.load(store, spec.name).get("state")
            hint = "" if state == "running" else \
                f" ({state}: left by a crash; `cocker service rm {spec.name}` cleans it up)"
            raise AlreadyExists(f"service {spec.name} already exists{hint}")
        sdir = st.service_dir(store, spec.name)
        netname = network_name(spec.name)
        rec: dict[str, Any] = {
            "name": spec.name, "spec": st.spec_to_record(spec), "image_ref": image_ref,
            "digest": digest, "network": netname, "publish": [f"{h}:{p}" for h, p in ports],
            "replicas": [], "seq": 0, "state": "creating",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "nginx": {"netns": netns_name(spec.name)},
        }
        undo = _Undo()
        try:
            if os.path.exists(sdir):             # leftovers of a crashed create: not a service
                shutil.rmtree(sdir)
            os.makedirs(sdir)
            undo.push("service directory", lambda: shutil.rmtree(sdir, ignore_errors=True))
            # the record exists from the start, so `service rm` can clean up after a crash
            st.save(store, rec)

            net = network.create_network(store, netname, spec.subnet)
            undo.push(f"network {netname}", lambda: network.remove_network(store, netname))
            rec["subnet"] = net.get("subnet")
            rec["bridge"] = net.get("bridge")

            nspath = network.new_netns(netns_name(spec.name))
            undo.push("nginx's network namespace", lambda: network.delete_netns(netns_name(spec.name)))
            rec["nginx"]["netns_path"] = nspath
            # the service's name is its nginx's: replicas reach the service through it
            ep = network.connect(store, netname, nginx_owner(spec.name), nspath,
                                 aliases=[spec.name])
            undo.push("nginx's network endpoint",
                      lambda: network.disconnect(store, netname, nginx_owner(spec.name)))
            rec["nginx"]["ip"] = ep["ip"]
            st.save(store, rec)

            ng = nginx_for(store, rec)
            ng.write_config([])
            rec["nginx"]["pid"] = ng.start()
            undo.push("nginx", ng.stop)
            st.save(store, rec)

            if ports:
                network.publish(store, nginx_owner(spec.name), ep["ip"],
                                [f"{h}:{p}:{NGINX_PORT}" for h, p in ports])
                undo.push("published ports", lambda: network.unpublish(store, nginx_owner(spec.name)))

            for _ in range(spec.replicas):
                r = start_replica(store, rec)
                undo.push(f"replica {r['name']}", functools.partial(_remove_container, store, r["name"]))
                r["active"] = True
                rec["replicas"].append(r)
                st.save(store, rec)
            ng.reload(upstream(rec))
            rec["state"] = "running"
            st.save(store, rec)
        except BaseException as e:
            left = undo.run()
            if left:
                raise CockerError(f"{_msg(e)}; and could not undo: {'; '.join(left)}") from None
            raise
    if start_monitor:
        ensure_monitor(store, spec.name)
    return rec


def _msg(e: BaseException) -> str:
    return str(e) if isinstance(e, CockerError) else f"{type(e).__name__}: {e}"


# ---- inspect / ls -----------------------------------------------------------------------

def inspect(store, name: str) -> dict:
    rec = st.load(store, name)
    out = dict(rec)
    reps = []
    for r in rec["replicas"]:
        state, code, _ip = container_state(store, r["name"])
        reps.append({**r, "status": state, "exit_code": code})
    out["replicas"] = reps
    # the template's replicas plus the containers that joined (brocker's container files)
    out["desired_replicas"] = rec["spec"]["replicas"] + sum(
        1 for r in rec["replicas"] if r.get("origin") == "joined")
    out["running_replicas"] = sum(1 for r in reps if r["status"] == "running")
    ng = nginx_for(store, rec)
    out["nginx"] = {**rec.get("nginx", {}), "running": ng.running(), "pid": ng.pid(),
                    "upstream": upstream(rec)}
    out["monitor_pid"] = monitor_pid(store, name)
    return out


def list_services(store) -> list[dict]:
    out = []
    for n in st.list_names(store):
        try:
            out.append(inspect(store, n))
        except NotFound:
            continue
    return out


# ---- scale / update / join --------------------------------------------------------------

def _template(rec: dict) -> list[dict]:
    return [r for r in rec["replicas"] if r.get("origin", "template") == "template"]


def _retire(store, rec: dict, victims: list[dict],
            background: list[threading.Thread] | None = None) -> None:
    """Out of rotation first (waiting for nginx's old workers), then stop and remove.
    With `background`, the containers are removed in threads the caller joins."""
    names = {v["name"] for v in victims}
    for r in rec["replicas"]:
        if r["name"] in names:
            r["active"] = False
    apply_rotation(store, rec, drain=True)
    # out of the record before the containers go: a crash in between leaves a container
    # labelled with the service, which `service rm` still finds
    rec["replicas"] = [r for r in rec["replicas"] if r["name"] not in names]
    st.save(store, rec)
    for v in victims:
        if background is None:
            _remove_container(store, v["name"])
        else:
            t = threading.Thread(target=_remove_quietly, args=(store, v["name"]), daemon=True)
            t.start()
            background.append(t)


def _remove_quietly(store, cname: str) -> None:
    try:
        _remove_container(store, cname)
    except Exception as e:  # noqa: BLE001 - the replica is out of rotation already; say what is left over
        print(f"cocker: warning: could not remove old replica {cname}: {_msg(e)}", file=sys.stderr)


def scale(store, name: str, replicas: int) -> dict:
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise UsageError(f"replicas must be a whole number >= 0, not {replicas!r}")
    with st.service_lock(store, name):
        rec = _loaded_running(store, name)
        if replicas > 0 and not rec.get("image_ref"):
            raise UsageError(f"service {name} has no image; give it one with "
                             f"`cocker service update {name} --image REF`")
        current = _template(rec)
        if replicas > len(current):
            for _ in range(replicas - len(current)):
                r = start_replica(store, rec)
                r["active"] = True
                rec["replicas"].append(r)
                st.save(store, rec)             # seq and the replica, before nginx sees it
                apply_rotation(store, rec)
        elif replicas < len(current):
            pending: list[threading.Thread] = []
            _retire(store, rec, current[replicas:][::-1], pending)
            for t in pending:
                t.join()
        rec["spec"]["replicas"] = replicas
        st.save(store, rec)
    ensure_monitor(store, name)
    return rec


def update(store, name: str, image: str) -> dict:
    """Rolling update: for each replica, a new one serves before the old one goes."""
    with st.service_lock(store, name):
        rec = _loaded_running(store, name)
        image_ref, digest = resolve_image(store, image)
        old_ref, old_digest = rec.get("image_ref"), rec.get("digest")
        rec["image_ref"], rec["digest"] = image_ref, digest
        rec["spec"]["image"] = image
        olds = _template(rec)
        pending: list[threading.Thread] = []
        try:
            for old in olds:
                r = start_replica(store, rec)
                r["active"] = True
                rec["replicas"].append(r)
                st.save(store, rec)
                apply_rotation(store, rec)
                # the old replica's container goes while the next new one starts
                _retire(store, rec, [old], pending)
        except BaseException as e:  # noqa: BLE001 - state the partial update, then re-raise
            for t in pending:
                t.join()
            left = [r for r in _template(rec) if r["name"] in {o["name"] for o in olds}]
            if len(left) == len(olds):          # nothing replaced: the service is as it was
                rec["image_ref"], rec["digest"] = old_ref, old_digest
            st.save(store, rec)
            raise CockerError(f"update of service {name} stopped: {_msg(e)} "
                              f"({len(olds) - len(left)} of {len(olds)} replicas updated)") from None
        for t in pending:
            t.join()
        st.save(store, rec)
    ensure_monitor(store, name)
    return rec


def join(store, name: str, spec, port: int | None = None) -> dict:
    """brocker's `container run` with a service-name: a container of its own making becomes
    a member of the service (on its network, in nginx's rotation, watched by its monitor)."""
    with st.service_lock(store, name):
        rec = _loaded_running(store, name)
        spec = spec._replace(net=rec["network"], labels={**(spec.labels or {}), "service": name},
                             restart="no", hostname=spec.hostname or spec.name)
        c = lifecycle.create(store, spec)
        cname = c.name
        port = port or rec["spec"]["port"]
        try:
            lifecycle.start(store, cname)
            ip = wait_ready(store, cname, port)
        except BaseException:
            _remove_container(store, cname)
            raise
        rec["replicas"].append({"name": cname, "ip": ip, "port": port, "origin": "joined",
                                "active": True})
        st.save(store, rec)
        apply_rotation(store, rec)
    ensure_monitor(store, name)
    return rec


def stop_member(store, name: str, cname: str, timeout: float = 10) -> None:
    """`container stop` of a service's replica: out of rotation first, and held — the monitor
    does not restart what a user stopped (it takes it back once it runs and serves again)."""
    with st.service_lock(store, name):
        rec = st.load(store, name)
        for r in rec["replicas"]:
            if r["name"] == cname:
                r["active"], r["held"] = False, True
        if rec.get("state") == "running":
            apply_rotation(store, rec, drain=True)
        st.save(store, rec)
    lifecycle.stop(store, cname, timeout=timeout)


def _loaded_running(store, name: str) -> dict:
    rec = st.load(store, name)
    if rec.get("state") != "running":
        raise Conflict(f"service {name} is {rec.get('state')}; remove it with `cocker service rm {name}`")
    return rec


def revive_frontend(store, rec: dict) -> None:
    """nginx is not running (killed; or a reboot took its namespace, veth and port mappings
    while the record stayed): make what is missing again — the namespace, its endpoint at the
    same address, the port mappings — and start nginx with the current upstream list.
    The caller holds the service's lock and saves the record."""
    name = rec["name"]
    owner = nginx_owner(name)
    nginx_for(store, rec).stop()
    nspath = rec.get("nginx", {}).get("netns_path")
    if not nspath or not os.path.exists(nspath):
        network.unpublish(store, owner)
        network.disconnect(store, rec["network"], owner)      # the endpoint of a lost namespace
        nspath = network.new_netns(netns_name(name))
        ep = network.connect(store, rec["network"], owner, nspath, ip=rec["nginx"].get("ip"),
                             aliases=[name])
        rec["nginx"].update(netns_path=nspath, ip=ep["ip"])
        if rec.get("publish"):
            network.publish(store, owner, ep["ip"], [f"{p}:{NGINX_PORT}" for p in rec["publish"]])
    ng = nginx_for(store, rec)
    ng.write_config(upstream(rec))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ng.pid_file)
    rec["nginx"]["pid"] = ng.start()


# ---- rm ---------------------------------------------------------------------------------

def remove(store, name: str) -> None:
    """Remove a service and everything it made, last made first; whatever is already gone is
    skipped. Errors are collected; the record stays only if something could not be removed."""
    st.validate_name(name)
    if not st.exists(store, name):
        raise NotFound(f"no such service: {name}")
    stop_monitor(store, name)
    errors: list[str] = []

    def step(what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except NotFound:
            pass
        except Exception as e:  # noqa: BLE001 - removal goes on; every failure is reported
            errors.append(f"{what}: {_msg(e)}")

    with st.global_lock(store), st.service_lock(store, name):
        try:
            rec = st.load(store, name)
        except NotFound:
            # an unreadable record: remove what a service of this name would have made
            rec = {"name": name, "network": network_name(name), "replicas": [],
                   "nginx": {"netns": netns_name(name),
                             "netns_path": os.path.join("/run/netns", netns_name(name))}}
        rec["state"] = "removing"
        st.save(store, rec)
        owner = nginx_owner(name)
        step("published ports", lambda: network.unpublish(store, owner))
        step("nginx", nginx_for(store, rec).stop)
        members = {r["name"] for r in rec.get("replicas", [])}
        # containers labelled with the service but missing from the record (a crash between
        # create and save) go too
        with contextlib.suppress(Exception):
            for c in record.list_containers(store, all=True):
                if (getattr(c, "labels", None) or {}).get("service") == name:
                    members.add(c.name)
        for cname in sorted(members):
            step(f"replica {cname}", functools.partial(_remove_container, store, cname))
        step("nginx's network endpoint", lambda: network.disconnect(store, rec["network"], owner))
        step("nginx's network namespace", lambda: _delete_netns(rec))
        step(f"network {rec['network']}", lambda: _remove_network(store, rec["network"]))
        if errors:
            raise CockerError(f"service {name} was not removed completely: {'; '.join(errors)}; "
                              f"run `cocker service rm {name}` again")
        shutil.rmtree(st.service_dir(store, name), ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(st.services_dir(store), f".{name}.lock"))


def _delete_netns(rec: dict) -> None:
    ns = rec.get("nginx", {}).get("netns")
    if ns and os.path.exists(os.path.join("/run/netns", ns)):
        network.delete_netns(ns)


def _remove_network(store, netname: str) -> None:
    try:
        network.get_network(store, netname)
    except NotFound:
        return
    network.remove_network(store, netname)


# ---- the monitor process ----------------------------------------------------------------

def monitor_paths(store, name: str) -> tuple[str, str]:
    d = st.service_dir(store, name)
    return os.path.join(d, "monitor.lock"), os.path.join(d, "monitor.pid")


def monitor_pid(store, name: str) -> int | None:
    """The monitor's pid if one is alive (it holds a lock on monitor.lock for its whole life)."""
    lock, pidfile = monitor_paths(store, name)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if st.try_lock(fd):
            return None
        try:
            with open(pidfile) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None
    finally:
        os.close(fd)        # also drops the lock if we just took it


def ensure_monitor(store, name: str) -> int | None:
    """Start the service's monitor unless one is running; returns its pid."""
    pid = monitor_pid(store, name)
    if pid:
        return pid
    log = open(os.path.join(st.service_dir(store, name), "monitor.log"), "ab")  # noqa: SIM115 - handed to the monitor process, closed below
    try:
        env = dict(os.environ)
        env.pop("COCKER_HOST", None)
        p = subprocess.Popen([sys.executable, "-m", "runtime.services.monitor", "--home", store.home,
                              name], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, close_fds=True, env=env,
                             cwd="/")
    finally:
        log.close()
    # wait until it holds its lock, so a following `rm` can find and stop it
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if monitor_pid(store, name):
            break
        if p.poll() is not None:
            break
        time.sleep(0.02)
    return p.pid


def stop_monitor(store, name: str) -> None:
    pid = monitor_pid(store, name)
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and monitor_pid(store, name):
        time.sleep(0.02)
    if monitor_pid(store, name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def ensure_all_monitors(store) -> None:
    """After a reboot or a daemon restart: every running service gets its monitor back."""
    for n in st.list_names(store):
        with contextlib.suppress(CockerError, OSError):
            if st.load(store, n).get("state") == "running":
                ensure_monitor(store, n)


__all__ = ["create", "inspect", "list_services", "scale", "update", "join", "stop_member",
           "remove", "ensure_monitor", "ensure_all_monitors", "revive_frontend"]
