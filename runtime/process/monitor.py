"""The monitor of a container (like podman's conmon): it holds the pty master, the log, the
exit status and the attach socket, and it stays OUTSIDE the container's namespaces, so nothing
a process of the container can see leads back to it.

    cocker (CLI/API)             host namespaces
      └─ fork: intermediate      closes what is not passed on, forks, reports the pid, exits
           └─ monitor            host PID, mount and network namespaces, plain python
                └─ PID 1         the container's first process (process.child): namespaces,
                                 root, user, capabilities, seccomp, then exec of the image's
                                 command (or of --init, which runs the command)

Everything is fork(): no second interpreter starts, which keeps `run` close to runc's time.
A caller that waits for the monitor itself (a foreground `run`) forks it directly: the
intermediate only serves to leave a detached monitor parentless.
The monitor holds an flock on `running.lock` for its whole life (so `ls` can tell a live
container from one whose monitor was killed), forwards signals, relays the pty or the output
to the log, serves `attach` on `attach.sock` (when the container has a tty), and tears down the
cgroup and network when PID 1 ends (the kernel ends the rest of the namespace with it). Mounts
live only in the container's mount namespace, so they vanish with it.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import struct
import termios
import time
from typing import TYPE_CHECKING

from common.errors import RuntimeFailure
from common.fsutil import write_all
from registry.repo.store import Store
from runtime import syscalls as sc
from runtime.cgroup.group import Cgroup
from runtime.fs.rmtree import rmtree
from runtime.fs.state_file import read_json, write_json
from runtime.process import userns
from runtime.process.child import ChildPipes, start_workload
from runtime.process.plan import Launched, Plan
from runtime.process.startup import FORWARDED, describe, exit_code, say
from runtime.tty import stdio_relay
from runtime.tty.frames import T_DATA, T_EXIT, T_WINSIZE, FrameReader, frame

if TYPE_CHECKING:
    import socket


def spawn(plan: Plan, stdio: tuple[int, int, int] | None = None, *,
          child_of_caller: bool = False) -> Launched:
    """Fork the monitor and the container's PID 1 (which waits, in its namespaces, until
    released through `go_w`). `child_of_caller`: the monitor is the caller's child, which
    reaps it (a foreground run); otherwise it is left without a parent."""
    if plan.idmap is not None and plan.userns_fd < 0:
        # made here, by host root in the host's namespaces: PID 1 idmaps the layers with it and
        # joins it once its root is in place
        plan = plan._replace(userns_fd=userns.make_userns(plan.idmap))
    info_r, info_w = os.pipe()
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = sc.fork()
    if pid == 0:
        _intermediate(plan, stdio, info_r, info_w, go_r, go_w, err_r, err_w,
                      direct=child_of_caller)
    if plan.userns_fd >= 0:
        os.close(plan.userns_fd)
    os.close(info_w)
    os.close(go_r)
    os.close(err_w)
    if not child_of_caller:
        os.waitpid(pid, 0)              # the intermediate, gone once the monitor is forked
    mon_pid, init_pid, msg = 0, 0, ""
    with os.fdopen(info_r, "rb") as f:
        # "P<pid>" (from the intermediate) and "R<pid>" (from the monitor) come in either order
        for line in f:
            if line.startswith(b"P"):
                mon_pid = int(line[1:])
            elif line.startswith(b"E"):
                msg = line[1:].decode(errors="replace").strip()
                break
            elif line.startswith(b"R"):
                init_pid = int(line[1:])
            if mon_pid and init_pid:
                break
        else:
            if not msg:
                msg = "the container's monitor died while starting"
    if msg or not mon_pid or not init_pid:
        os.close(go_w)
        os.close(err_r)
        if child_of_caller:
            _kill_quietly(pid, signal.SIGKILL)
            _reap(pid)
        elif mon_pid:
            _kill_quietly(mon_pid, signal.SIGKILL)
        raise RuntimeFailure(msg or "could not start the container's monitor")
    return Launched(mon_pid, init_pid, go_w, err_r)


def _kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap(pid: int) -> int | None:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _intermediate(plan, stdio, info_r, info_w, go_r, go_w, err_r, err_w, *,
                  direct: bool) -> None:
    """Close what is not passed on, then become the monitor (`direct`) or fork it and exit."""
    try:
        os.close(info_r)
        os.close(go_w)
        os.close(err_r)
        # nothing of the caller's may live on in the container: above all not an flock'd fd
        # (the container lock held around start), which a long-lived supervisor would keep held
        keep = {0, 1, 2, info_w, go_r, err_w, *(stdio or ()), plan.userns_fd}
        _close_fds_except(keep)
        pid = 0 if direct else sc.fork()
        if pid == 0:
            if direct:
                say(info_w, f"P{os.getpid()}\n")
            try:
                _monitor(plan, stdio, info_w, go_r, err_w)
            except BaseException as e:           # noqa: BLE001 - must never return into the CLI
                say(info_w, f"E{describe(e)}\n")
            finally:
                os._exit(125)
        say(info_w, f"P{pid}\n")
        os._exit(0)
    except BaseException as e:                   # noqa: BLE001
        say(info_w, f"E{describe(e)}\n")
        os._exit(1)


def _close_fds_except(keep: set[int]) -> None:
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


# the monitor ---------------------------------------------------------------------------
class _Sup:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.child = 0
        self.status: int | None = None
        self.master = -1            # the pty master, or the read end of the output pipe
        self.listener: socket.socket | None = None
        self.client: socket.socket | None = None
        self.final_client: socket.socket | None = None
        self.reader = FrameReader()
        self.log_fd = -1


def _monitor(plan: Plan, stdio: tuple[int, int, int] | None, info_w: int, go_r: int,
             err_w: int) -> None:
    os.setsid()
    sc.set_name("cocker-monitor")
    lock = os.open(os.path.join(plan.cdir, "running.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    S = _Sup(plan)
    for sig in FORWARDED:
        signal.signal(sig, lambda s, f: _kill_quietly(S.child, s) if S.child else None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    console_mon = console_child = None
    out_w = -1
    if plan.tty:
        from runtime.tty import console  # with a tty only (start-up time: see the module)
        console_mon, console_child = console.pair()
        S.listener = console.listen(os.path.join(plan.cdir, "attach.sock"))
    if plan.detached or plan.tty:
        S.log_fd = os.open(os.path.join(plan.cdir, "log"),
                           os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    relay = None
    if plan.tty:
        child_stdio = (-1, -1, -1)
    elif stdio is not None:
        # in the foreground the caller's stdio stays with the monitor and the container gets
        # pipes (as under conmon): no terminal or file of the caller is open inside
        child_stdio, relay = stdio_relay.pipes_for(stdio)
    else:
        # the workload writes into a pipe, the monitor into the log: no host file is open in
        # the container, not even its own log
        S.master, out_w = os.pipe()
        child_stdio = (-1, out_w, out_w)
    sync_r, sync_w = os.pipe()
    start_r, start_w = os.pipe()
    host_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    sc.unshare(sc.CLONE_NEWPID)             # for the next child only: it becomes PID 1
    S.child = sc.fork()
    if S.child == 0:
        if console_mon is not None:
            console_mon.close()
        os.close(sync_r)
        os.close(start_w)
        start_workload(plan, ChildPipes(sync_w, start_r, console_child, err_w, child_stdio))
    # back to the host's PID namespace for what this process forks later (iptables at teardown)
    sc.setns(host_pidns, sc.CLONE_NEWPID)
    os.close(host_pidns)
    os.close(sync_w)
    os.close(start_r)
    os.close(err_w)
    if plan.userns_fd >= 0:
        os.close(plan.userns_fd)           # PID 1 holds it now
    if out_w >= 0:
        os.close(out_w)
    if relay is not None:
        for fd in {*child_stdio} - {-1}:
            os.close(fd)                # the container's ends of the stdio pipes
    if console_child is not None:
        console_child.close()
    ready = os.read(sync_r, 1) == b"N"
    os.close(sync_r)
    if ready:
        os.write(info_w, f"R{S.child}\n".encode())
    os.close(info_w)
    go = os.read(go_r, 1)
    os.close(go_r)
    if go != b"g" or not ready:
        os.close(start_w)               # PID 1 reads EOF and ends, and its namespace with it
        _reap(S.child)
        os._exit(125)
    if console_mon is not None:
        S.master = console.receive_master(console_mon)
        console_mon.close()
    if S.listener is not None:                  # a client that connected before "go"
        S.listener.setblocking(False)
        _accept(S)
        if S.master >= 0:
            _early_client_frames(S)
    try:
        os.write(start_w, b"g")
    except OSError:
        pass                                    # PID 1 failed already: its message is on err_w
    os.close(start_w)
    if relay is not None:
        S.status = stdio_relay.run(relay, S.child)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)       # the caller's pipes see EOF now, not when the teardown ends
    os.close(null)
    for fd in {*(stdio or ())} - {-1, 0, 1, 2}:
        os.close(fd)
    if S.master >= 0:
        _relay_loop(S)
    elif relay is None:
        _wait_loop(S)
    code = exit_code(S.status)
    _finish(S, code)
    os._exit(code)


def _reap_all(S: _Sup, block: bool) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == S.child:
            S.status = status
            if block:
                return


def _wait_loop(S: _Sup) -> None:
    while S.status is None:
        _reap_all(S, block=True)


def _accept(S: _Sup) -> None:
    if S.client is not None or S.listener is None:
        return
    try:
        conn, _ = S.listener.accept()
    except (BlockingIOError, InterruptedError):
        return
    conn.setblocking(True)
    S.client = conn
    S.reader = FrameReader()


def _drop_client(S: _Sup) -> None:
    if S.client is not None:
        try:
            S.client.close()
        except OSError:
            pass
        S.client = None
        _accept(S)     # the next one waiting in turn


def _send_client(S: _Sup, data: bytes) -> None:
    if S.client is None:
        return
    try:
        S.client.sendall(data)
    except OSError:
        _drop_client(S)


def _relay_loop(S: _Sup) -> None:
    """Relay the pty (or the output pipe) to the log and the attached client until PID 1 ends."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    sel = selectors.DefaultSelector()
    sel.register(S.master, selectors.EVENT_READ, "master")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    if S.listener is not None:
        sel.register(S.listener, selectors.EVENT_READ, "listen")
    registered_client = None
    master_open = True
    while True:
        if S.client is not registered_client:
            if registered_client is not None:
                try:
                    sel.unregister(registered_client)
                except (KeyError, ValueError, OSError):
                    pass
            if S.client is not None:
                sel.register(S.client, selectors.EVENT_READ, "client")
            registered_client = S.client
        _reap_all(S, block=False)
        if S.status is not None:
            break
        for key, _ in sel.select(timeout=1.0):
            what = key.data
            if what == "wake":
                try:
                    os.read(wake_r, 512)
                except OSError:
                    pass
            elif what == "listen":
                _accept(S)
            elif what == "master" and master_open:
                try:
                    data = os.read(S.master, 65536)
                except OSError:
                    data = b""
                if not data:          # every slave closed: the workload is going
                    master_open = False
                    sel.unregister(S.master)
                    continue
                _log(S, data)
                _send_client(S, frame(T_DATA, data))
            elif what == "client" and S.client is not None:
                try:
                    data = S.client.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    _drop_client(S)
                    continue
                _client_frames(S, data)
    # drain what the workload wrote last
    if master_open:
        os.set_blocking(S.master, False)
        while True:
            try:
                data = os.read(S.master, 65536)
            except OSError:
                break
            if not data:
                break
            _log(S, data)
            _send_client(S, frame(T_DATA, data))
    S.final_client = S.client


def _client_frames(S: _Sup, data: bytes) -> None:
    for kind, payload in S.reader.feed(data):
        if kind == T_DATA:
            write_all(S.master, payload)
        elif kind == T_WINSIZE and len(payload) == 4:
            rows, cols = struct.unpack(">HH", payload)
            fcntl.ioctl(S.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _early_client_frames(S: _Sup) -> None:
    """What a client sent before "go" (its window size): applied before the workload starts."""
    if S.client is None:
        return
    S.client.setblocking(False)
    try:
        while True:
            data = S.client.recv(65536)
            if not data:
                break
            _client_frames(S, data)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        _drop_client(S)
        return
    finally:
        if S.client is not None:
            S.client.setblocking(True)


def _log(S: _Sup, data: bytes) -> None:
    if S.log_fd >= 0:
        try:
            write_all(S.log_fd, data)
        except OSError:
            pass


def _finish(S: _Sup, code: int) -> None:
    """The workload ended: end every other process, release cgroup and network, record it."""
    plan = S.plan
    # the rest of the container's PID namespace ended with its PID 1 (the kernel kills it);
    # this process lives in the host's, so there is nothing here to kill
    _reap_all_blocking()
    oom = False
    errors = []
    if plan.cgroup_dirs:
        cg = Cgroup(plan.name)
        oom = cg.oom_killed()
        try:
            cg.remove()
        except Exception as e:  # noqa: BLE001 - record it, keep tearing down
            errors.append(str(e))
    if plan.network:
        from runtime.net import network  # bridge networks only (start-up time)
        try:
            store = Store(plan.home)
            if plan.published:
                network.unpublish(store, plan.name)
            network.disconnect(store, plan.network, plan.name)
        except Exception as e:  # noqa: BLE001
            errors.append(f"network: {e}")
    state_path = os.path.join(plan.cdir, "state.json")
    state = read_json(state_path)
    state.update({"status": "exited", "exit_code": code, "finished_at": time.time(),
                  "oom_killed": oom})
    if errors:
        state["teardown_errors"] = errors
    write_json(state_path, state)
    client = S.final_client
    if client is not None:
        try:
            client.sendall(frame(T_EXIT, str(code).encode()))
            client.close()
        except OSError:
            pass
    if S.listener is not None:
        try:
            os.unlink(os.path.join(plan.cdir, "attach.sock"))
        except OSError:
            pass
    if plan.autoremove:
        doomed = os.path.join(os.path.dirname(plan.cdir), f".rm-{plan.name}.{time.time_ns()}")
        try:
            os.rename(plan.cdir, doomed)
            rmtree(doomed)
        except OSError:
            pass


def _reap_all_blocking() -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


