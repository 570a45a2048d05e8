"""The daemon: brocker's routes, cocker's own, commands through `--host`, a restart that loses
nothing, and the rules for who may connect. All traffic on 127.0.0.1 or the unix socket."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import run_cocker
from tests.support.net import free_port, unique_subnet
from tests.support.services import force_cleanup, get, leftovers, make_home, unique_name, wait_for
from tests.support.tools import tool

NGINX = tool("nginx", "/usr/sbin/nginx")
pytestmark = [pytest.mark.root]


class Daemon:
    def __init__(self, home: str, sock: str, port: int | None, token_file: str | None = None,
                 host: str = "127.0.0.1"):
        self.home, self.sock, self.port, self.token_file = home, sock, port, token_file
        self.host = host
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        argv = [sys.executable, "-m", "cocker.main", "daemon", "--socket", self.sock]
        if self.port:
            argv += ["--listen", f"[{self.host}]:{self.port}"]
        if self.token_file:
            argv += ["--token-file", self.token_file]
        env = dict(os.environ, COCKER_HOME=self.home)
        env.pop("COCKER_HOST", None)
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.proc.stderr.read()}")
            if os.path.exists(self.sock):
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(self.sock)
                    if self.port:           # the TCP door is made just after the socket
                        socket.create_connection((self.host, self.port), timeout=1).close()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError("daemon did not come up")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def unix(self) -> str:
        return f"unix://{self.sock}"

    def call(self, method: str, path: str, body=None, *, tcp: bool = False, headers=None):
        if tcp:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        else:
            from runtime.daemon.client import UnixHTTPConnection
            conn = UnixHTTPConnection(self.sock, timeout=120)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers or {})
            r = conn.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw.strip() else None)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def dhome(tmp_path_factory) -> str:
    return make_home(str(tmp_path_factory.mktemp("daemon")))


@pytest.fixture(scope="module")
def daemon(dhome, tmp_path_factory):
    sock = str(tmp_path_factory.mktemp("sock") / "cocker.sock")
    d = Daemon(dhome, sock, free_port()).start()
    try:
        yield d
    finally:
        d.stop()
        assert not os.path.exists(sock)


@pytest.fixture(scope="module")
def brocker_service(daemon, dhome, tmp_path_factory):
    """A service added through brocker's route, with one container joined through brocker's
    container route (its `file` served from /app)."""
    name, port = unique_name("dsv"), free_port()
    gw = unique_subnet().rsplit(".", 1)[0] + ".1"
    page = tmp_path_factory.mktemp("page") / "index.html"
    page.write_text("served through the daemon\n")
    state = {"name": name, "port": port}
    try:
        status, out = daemon.call("POST", "/api/v1/service/add",
                                  {"name": name, "bridge-ip": gw, "image": "web:1.0",
                                   "replicas": 0, "publish": f"127.0.0.1:{port}:8080"})
        assert status == 201, out
        state["bridge"] = out["bridge"]
        status, out = daemon.call("POST", "/api/v1/container/run",
                                  {"service-name": name, "command": "httpd -f -p 8080 -h /app",
                                   "copy-file": True, "file": str(page)})
        assert status == 201, out
        state["member"] = out["name"]
        yield state
    finally:
        force_cleanup(dhome, name)
        assert leftovers(dhome, name, state.get("bridge")) == []


def test_socket_is_root_only(daemon):
    mode = os.stat(daemon.sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def brocker_client(port: int, method: str, path: str, raw: bytes | None = None) -> tuple[int, bytes]:
    """A request as brocker's Go client makes it: localhost:3000-style URL, the JSON file's bytes
    as they are, the whole response body kept raw."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/json"} if raw is not None else {}
        conn.request(method, path, body=raw, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# brocker-client's Container struct: key -> the one JSON type its decoder accepts
BROCKER_CONTAINER = {"Name": str, "service-name": str, "command": str, "copy-file": bool,
                     "file": str, "Pid": int, "IP": str, "StartTime": str, "VEth": str,
                     "Directory": str, "Active": bool}


def test_brocker_service_and_container_routes(daemon, brocker_service):
    port, member = brocker_service["port"], brocker_service["member"]
    assert get(port) == (200, "served through the daemon")
    for method in ("GET", "POST"):
        status, raw = brocker_client(daemon.port, method, "/api/v1/container/list")
        assert status == 200
        out = json.loads(raw)
        assert isinstance(out, list) and out
        for c in out:
            assert {k: type(v) for k, v in c.items()} == BROCKER_CONTAINER, c
            # Go's time.Time accepts RFC 3339 only
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)",
                                c["StartTime"]), c["StartTime"]
        mine = [c for c in out if c["Name"] == member]
        assert len(mine) == 1
        c = mine[0]
        assert c["service-name"] == brocker_service["name"] and c["Active"] is True
        assert c["command"] == "httpd -f -p 8080 -h /app"
        assert c["copy-file"] is True and c["file"].endswith("/index.html")
        assert c["Directory"] and c["IP"] and c["VEth"] and c["Pid"] > 0


def test_brocker_exec_gives_a_pid_inside_the_container(daemon, brocker_service):
    status, body = brocker_client(daemon.port, "POST", "/api/v1/container/exec",
                                  json.dumps({"name": brocker_service["member"]}).encode())
    assert status == 200
    assert re.fullmatch(rb"[0-9]+", body), body             # the client uses the body as it is
    pid = body.decode()
    for ns in ("pid", "net", "mnt"):                        # the namespaces nsenter joins
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    # what brocker's client then runs: the command sees the container's /app, not the host's
    p = subprocess.run(["nsenter", "--target", pid, "--pid", "--net", "--mount",
                        "cat", "/app/index.html"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout == "served through the daemon\n", p.stderr
    p = subprocess.run(["nsenter", "--target", pid, "--pid", "--net", "--mount",
                        "cat", "/etc/motd"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout == "--- Welcome to a cocker container ---\n"


def test_brocker_standalone_container_run_and_stop(daemon, dhome):
    name = unique_name("solo")
    try:
        status, out = daemon.call("POST", "/api/v1/container/run",
                                  {"name": name, "image": "web:1.0", "command": "sleep 300"})
        assert status == 201 and out["status"] == "running", out
        status, out = daemon.call("POST", "/api/v1/container/stop", {"name": name})
        assert status == 200, out
        status, info = daemon.call("GET", f"/api/v2/containers/{name}")
        assert status == 200 and info["status"] == "exited"
    finally:
        run_cocker("container", "rm", "-f", name, check=False, env={"COCKER_HOME": dhome})


def test_errors_are_json_with_statuses(daemon):
    status, out = daemon.call("POST", "/api/v1/container/stop", {"name": "nosuch"})
    assert status == 404 and "nosuch" in out["error"]
    status, out = daemon.call("POST", "/api/v1/service/add", {"name": "x", "bridge-ip": 10})
    assert status == 400 and "'bridge-ip'" in out["error"]
    status, out = daemon.call("POST", "/api/v1/service/add", {"name": "x", "colour": "red"})
    assert status == 400 and "unknown field 'colour'" in out["error"]
    status, out = daemon.call("POST", "/api/v1/container/run", {"command": "true"})
    assert status == 400 and "image" in out["error"]
    status, out = daemon.call("GET", "/api/v1/nothing")
    assert status == 404
    status, out = daemon.call("DELETE", "/api/v1/container/list")
    assert status == 405


def test_v2_routes(daemon, brocker_service):
    status, svcs = daemon.call("GET", "/api/v2/services")
    assert status == 200 and brocker_service["name"] in [s["name"] for s in svcs]
    status, imgs = daemon.call("GET", "/api/v2/images")
    assert status == 200 and {"1.0", "2.0"} <= {i["version"] for i in imgs if i["name"] == "web"}
    status, img = daemon.call("GET", "/api/v2/images/web%3A1.0")
    assert status == 200 and img["digest"].startswith("sha256:")
    status, out = daemon.call("POST", f"/api/v2/services/{brocker_service['name']}/scale",
                              {"replicas": "two"})
    assert status == 400


def test_v2_container_routes(daemon, dhome):
    name = unique_name("v2c")
    try:
        status, out = daemon.call("POST", "/api/v2/containers/run",
                                  {"image": "web:1.0", "command": ["sleep", "300"], "name": name})
        assert status == 201 and out["status"] == "running", out
        status, out = daemon.call("POST", f"/api/v2/containers/{name}/exec", {"argv": ["hostname"]})
        assert status == 200 and out == {"exit_code": 0, "stdout": f"{name}\n", "stderr": ""}
        status, out = daemon.call("POST", "/api/v2/containers/run", {"image": "web:1.0", "name": name,
                                                                      "command": ["true"]})
        assert status == 409, out
        status, _ = daemon.call("DELETE", f"/api/v2/containers/{name}")
        assert status == 409                                   # running, no force
        status, _ = daemon.call("DELETE", f"/api/v2/containers/{name}?force=1")
        assert status == 200
        status, _ = daemon.call("GET", f"/api/v2/containers/{name}")
        assert status == 404
    finally:
        run_cocker("container", "rm", "-f", name, check=False, env={"COCKER_HOME": dhome})


def test_commands_through_host(daemon, dhome, brocker_service):
    env = {"COCKER_HOME": "/nonexistent-home-not-used"}        # the daemon's store is used
    p = run_cocker("--host", daemon.unix, "service", "ls", "--json", env=env)
    assert brocker_service["name"] in [s["name"] for s in json.loads(p.stdout)]
    p = run_cocker("--host", f"http://127.0.0.1:{daemon.port}", "container", "ls", "--json", env=env)
    assert brocker_service["member"] in [c["name"] for c in json.loads(p.stdout)]
    p = run_cocker("service", "inspect", "nosuch", check=False,
                   env={**env, "COCKER_HOST": daemon.unix})
    assert p.returncode == 1 and p.stderr.strip() == "cocker: error: no such service: nosuch"
    p = run_cocker("--host", daemon.unix, "container", "run", "-it", "web:1.0", "sh", check=False)
    assert p.returncode != 0 and "cannot go through a daemon" in p.stderr
    assert not os.path.exists("/nonexistent-home-not-used")


def test_restarted_daemon_loses_nothing(daemon, brocker_service):
    _, before_c = daemon.call("GET", "/api/v2/containers")
    _, before_s = daemon.call("GET", f"/api/v2/services/{brocker_service['name']}")
    daemon.stop()
    assert not os.path.exists(daemon.sock)
    # the service keeps serving without the daemon: nothing lived in it
    assert get(brocker_service["port"]) == (200, "served through the daemon")
    daemon.start()
    _, after_c = daemon.call("GET", "/api/v2/containers")
    _, after_s = daemon.call("GET", f"/api/v2/services/{brocker_service['name']}")
    key = lambda cs: sorted((c["name"], c["status"], c["ip"]) for c in cs)  # noqa: E731
    assert key(after_c) == key(before_c)
    assert after_s["replicas"] == before_s["replicas"]
    assert after_s["monitor_pid"] == before_s["monitor_pid"]
    p = run_cocker("--host", daemon.unix, "service", "inspect", brocker_service["name"])
    assert brocker_service["member"] in p.stdout


def test_tcp_rules(dhome, tmp_path):
    p = run_cocker("daemon", "--socket", str(tmp_path / "x.sock"), "--listen", "0.0.0.0:1",
                   check=False, env={"COCKER_HOME": dhome})
    assert p.returncode != 0 and "without --token-file" in p.stderr
    tok = tmp_path / "token"
    tok.write_text("s3cret-token-for-the-test\n")
    tok.chmod(0o600)
    d = Daemon(dhome, str(tmp_path / "t.sock"), free_port(), str(tok)).start()
    try:
        status, _ = d.call("GET", "/api/v2/version", tcp=True)
        assert status == 401
        status, _ = d.call("GET", "/api/v2/version", tcp=True,
                           headers={"Authorization": "Bearer wrong"})
        assert status == 401
        status, out = d.call("GET", "/api/v2/version", tcp=True,
                             headers={"Authorization": "Bearer s3cret-token-for-the-test"})
        assert status == 200 and out["api"] == [1, 2]
        status, _ = d.call("GET", "/api/v2/version")            # the unix socket: uid checked
        assert status == 200
        p = run_cocker("--host", f"http://127.0.0.1:{d.port}", "image", "ls", check=False,
                       env={"COCKER_TOKEN": "s3cret-token-for-the-test"})
        assert p.returncode == 0 and "web" in p.stdout
    finally:
        d.stop()


def test_tcp_without_token_serves_root_only(daemon):
    """Every local user can reach loopback: without a token only root's sockets are served."""
    url = f"http://127.0.0.1:{daemon.port}/api/v1/container/list"
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    p = subprocess.run([*as_nobody, "curl", "-s", "-w", "\n%{http_code}", url],
                       capture_output=True, text=True, timeout=60)
    body, _, code = p.stdout.rpartition("\n")
    assert code == "403", p.stdout
    assert "without --token-file" in body and "uid 65534" in body
    p = subprocess.run([*as_nobody, "curl", "-s", "-X", "POST", "-d", '{"name": "x"}',
                        f"http://127.0.0.1:{daemon.port}/api/v1/container/stop"],
                       capture_output=True, text=True, timeout=60)
    assert "PermissionDenied" in p.stdout
    p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url],
                       capture_output=True, text=True, timeout=60)
    assert p.stdout == "200"


def test_restart_policies_survive_daemon_and_host_restarts(daemon, dhome):
    from registry.repo.store import Store
    env = {"COCKER_HOME": dhome}
    fail, always, unless = unique_name("rfail"), unique_name("ralw"), unique_name("runl")

    def info(name: str) -> dict:
        return json.loads(run_cocker("container", "inspect", name, "--json", env=env).stdout)

    def restarts(name: str) -> int:
        try:
            with open(Store(dhome).paths.container_restarts(name)) as f:
                return int(json.load(f).get("count", 0))
        except FileNotFoundError:
            return 0

    try:
        for name, policy, cmd in ((fail, "on-failure:2", ["sh", "-c", "sleep 0.3; exit 3"]),
                                  (always, "always", ["sleep", "300"]),
                                  (unless, "unless-stopped", ["sleep", "300"])):
            run_cocker("container", "run", "-d", "--name", name, "--restart", policy,
                       "web:1.0", *cmd, env=env)
        # on-failure:2 -- restarted twice, then left exited with its code
        wait_for(lambda: restarts(fail) == 2 and info(fail)["status"] == "exited", timeout=40)
        time.sleep(2.5)
        assert restarts(fail) == 2 and info(fail)["exit_code"] == 3
        # always -- killed, it comes back
        first = info(always)["pid"]
        run_cocker("container", "kill", always, env=env)

        def restarted() -> bool:
            i = info(always)
            return restarts(always) == 1 and i["status"] == "running" and i["pid"] not in (None, first)
        wait_for(restarted)
        # stopped by hand: left stopped while the daemon runs
        run_cocker("container", "stop", "-t", "2", always, unless, env=env)
        time.sleep(2.5)
        assert info(always)["status"] == "exited" and info(unless)["status"] == "exited"
        # the daemon restarts: `always` comes back even so (as docker's), `unless-stopped` not
        daemon.stop()
        daemon.start()
        wait_for(lambda: info(always)["status"] == "running")
        time.sleep(2.5)
        assert info(unless)["status"] == "exited"
        # the host restarts: with the daemon down, the container's monitor and processes
        # vanish as in a power cut; the daemon's start brings it back
        run_cocker("container", "start", unless, env=env)
        daemon.stop()
        full = json.loads(run_cocker("container", "inspect", unless, "--json", env=env).stdout)
        for pid in (full["pid"], full.get("workload_pid")):
            if pid:
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: info(unless)["status"] == "dead")
        daemon.start()
        wait_for(lambda: info(unless)["status"] == "running")
    finally:
        if daemon.proc is None or daemon.proc.poll() is not None:
            daemon.start()
        for name in (fail, always, unless):
            run_cocker("container", "rm", "-f", name, check=False, env=env)


def test_container_restart(daemon, dhome):
    env = {"COCKER_HOME": dhome}
    name = unique_name("rst")
    try:
        run_cocker("container", "run", "-d", "--name", name, "web:1.0", "sleep", "300", env=env)
        before = json.loads(run_cocker("container", "inspect", name, "--json", env=env).stdout)
        t0 = time.monotonic()
        assert run_cocker("container", "restart", "-t", "1", name, env=env).stdout == f"{name}\n"
        after = json.loads(run_cocker("container", "inspect", name, "--json", env=env).stdout)
        assert after["status"] == "running" and after["pid"] != before["pid"]
        assert time.monotonic() - t0 < 20      # `sleep` ignores SIGTERM as PID 1: -t 1 then KILL
        p = run_cocker("container", "restart", "nosuch", check=False, env=env)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and "nosuch" in p.stderr
    finally:
        run_cocker("container", "rm", "-f", name, check=False, env=env)


def test_image_rm_route_refuses_a_version_in_use(daemon, dhome):
    env = {"COCKER_HOME": dhome}
    name = unique_name("pin")
    run_cocker("image", "tag", "web:1.0", f"{name}:1", env=env)
    try:
        run_cocker("container", "create", "--name", name, f"{name}:1", "true", env=env)
        status, out = daemon.call("DELETE", f"/api/v2/images/{name}%3A1")
        assert status == 409 and out["type"] == "Conflict" and name in out["error"], out
        status, out = daemon.call("DELETE", "/api/v2/images/nosuch%3A1")
        assert status == 404, out
        status, out = daemon.call("DELETE", f"/api/v2/images/{name}%3A1?force=1")
        assert status == 200 and out["removed"] == [f"{name}:1"], out
    finally:
        run_cocker("container", "rm", "-f", name, check=False, env=env)
        run_cocker("image", "rm", "--force", f"{name}:1", check=False, env=env)


def test_tcp_door_on_ipv6_loopback_serves_root_only(dhome, tmp_path):
    """brocker's client dials localhost, which may be ::1: the door listens there too, and the
    owner of the client's socket is found in /proc/net/tcp6."""
    d = Daemon(dhome, str(tmp_path / "six.sock"), free_port(), host="::1").start()
    try:
        url = f"http://[::1]:{d.port}/_ping"
        p = subprocess.run(["curl", "-s", "-g", url], capture_output=True, text=True, timeout=60)
        assert json.loads(p.stdout)["api"] == [1, 2]
        p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            "--", "curl", "-s", "-g", url], capture_output=True, text=True,
                           timeout=60)
        assert json.loads(p.stdout)["type"] == "PermissionDenied"
    finally:
        d.stop()
