"""Services: replicas (busybox httpd serving their hostnames) behind a real nginx in its own
network namespace, reached from 127.0.0.1 through the published port.

The scenario tests run in order on one service (module fixture): two replicas answer, scale
to three, a killed replica costs no request and comes back, a rolling update under load costs
no request, and `service rm` leaves nothing. Bad-input tests check that a refused create
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from tests.conftest import run_cocker
from tests.support.net import free_port, unique_subnet
from tests.support.services import (
    HTTPD,
    Load,
    answers,
    force_cleanup,
    get,
    leftovers,
    make_home,
    unique_name,
    wait_for,
)
from tests.support.tools import tool

NGINX = tool("nginx", "/usr/sbin/nginx")
pytestmark = [pytest.mark.root]


@pytest.fixture(scope="module")
def shome(tmp_path_factory) -> str:
    return make_home(str(tmp_path_factory.mktemp("svc")))


def cocker_in(home: str, *args: str, check: bool = True):
    return run_cocker(*args, check=check, env={"COCKER_HOME": home, "COCKER_QUIET": "1"})


@pytest.fixture(scope="module")
def svc(shome):
    """A service of 2 replicas published on 127.0.0.1:<free port>."""
    name, port = unique_name("web"), free_port()
    state = {"name": name, "port": port, "home": shome}
    try:
        cocker_in(shome, "service", "create", name, "--image", "web:1.0", "--replicas", "2",
                  "--publish", f"127.0.0.1:{port}:8080", "--", *HTTPD)
        state["bridge"] = json.loads(cocker_in(shome, "service", "inspect", name, "--json").stdout)["bridge"]
        yield state
    finally:
        force_cleanup(shome, name)
        assert leftovers(shome, name, state.get("bridge")) == []


def replicas(home: str, name: str) -> list[dict]:
    return json.loads(cocker_in(home, "service", "inspect", name, "--json").stdout)["replicas"]


def test_two_replicas_both_answer(svc):
    seen = answers(svc["port"], 30)
    names = {r["name"] for r in replicas(svc["home"], svc["name"])}
    assert seen == names and len(seen) == 2


def test_replicas_find_each_other_and_the_service_by_name(svc):
    """A replica reaches another by its container name, and the service by the service's
    name, which is its nginx (so a request by that name is load-balanced)."""
    home, name = svc["home"], svc["name"]
    a, b = sorted(r["name"] for r in replicas(home, name))[:2]
    r = cocker_in(home, "container", "exec", a, "wget", "-qO-", f"http://{b}:8080/", check=False)
    assert r.returncode == 0 and r.stdout.strip() == b, r.stderr
    seen = set()
    for _ in range(6):
        r = cocker_in(home, "container", "exec", a, "wget", "-qO-", f"http://{name}/", check=False)
        assert r.returncode == 0, r.stderr
        seen.add(r.stdout.strip())
    assert seen <= {a, b} and seen


def test_ls_and_container_ls_show_the_service(svc):
    out = json.loads(cocker_in(svc["home"], "service", "ls", "--json").stdout)
    mine = [s for s in out if s["name"] == svc["name"]]
    assert mine and mine[0]["running_replicas"] == 2 and mine[0]["image_ref"] == "web:1.0"
    cs = json.loads(cocker_in(svc["home"], "container", "ls", "--json").stdout)
    members = [c for c in cs if c.get("service") == svc["name"]]
    assert len(members) == 2 and all(c["status"] == "running" for c in members)


def test_scale_to_three(svc):
    cocker_in(svc["home"], "service", "scale", svc["name"], "3")
    seen = answers(svc["port"], 45)
    assert len(seen) == 3
    assert seen == {r["name"] for r in replicas(svc["home"], svc["name"])}


def test_killed_replica_costs_no_request_and_comes_back(svc):
    home, name = svc["home"], svc["name"]
    victim = replicas(home, name)[0]
    restarts = victim.get("restarts", 0)

    def back() -> bool:
        r = next(r for r in replicas(home, name) if r["name"] == victim["name"])
        return r.get("restarts", 0) > restarts and r["status"] == "running" and r["active"]

    with Load(svc["port"]) as load:
        cocker_in(home, "container", "kill", victim["name"])
        # it leaves the rotation, is restarted and, once it serves, is back in the rotation
        wait_for(back, timeout=30)
        with load._lock:
            load.bodies.clear()
        wait_for(lambda: victim["name"] in load.bodies or None, timeout=10)
    assert load.failures == []
    assert load.ok > 20
    assert answers(svc["port"], 45) == {r["name"] for r in replicas(home, name)}


def test_rolling_update_costs_no_request(svc):
    home, name = svc["home"], svc["name"]
    before = {r["name"] for r in replicas(home, name)}
    with Load(svc["port"]) as load:
        cocker_in(home, "service", "update", name, "--image", "web:2.0")
    assert load.failures == []
    assert load.ok > 20
    after = replicas(home, name)
    assert len(after) == 3 and not ({r["name"] for r in after} & before)
    info = json.loads(cocker_in(home, "service", "inspect", name, "--json").stdout)
    assert info["image_ref"] == "web:2.0"
    cs = {c["name"]: c for c in json.loads(cocker_in(home, "container", "ls", "--json").stdout)}
    assert all(cs[r["name"]]["image"] == "web:2.0" for r in after)
    assert not (before & set(cs))                     # the old replicas are gone


def test_failed_update_keeps_the_service(svc, tmp_path):
    """An update whose new replica never serves stops there: the old replicas keep serving."""
    from builder.testimage import make_busybox_rootfs
    home, name = svc["home"], svc["name"]
    rootfs = make_busybox_rootfs(str(tmp_path / "rootfs"))
    with open(os.path.join(rootfs, "www"), "w") as f:      # `mkdir -p /www` fails: no httpd
        f.write("not a directory\n")
    cocker_in(home, "image", "import", rootfs, "broken:1.0")
    before = {r["name"] for r in replicas(home, name)}
    with Load(svc["port"]) as load:
        p = cocker_in(home, "service", "update", name, "--image", "broken:1.0", check=False)
    assert p.returncode != 0 and "0 of 3 replicas updated" in p.stderr, p.stderr
    assert load.failures == [] and load.ok > 5
    assert {r["name"] for r in replicas(home, name)} == before
    info = json.loads(cocker_in(home, "service", "inspect", name, "--json").stdout)
    assert info["image_ref"] == "web:2.0"
    cs = json.loads(cocker_in(home, "container", "ls", "--json").stdout)
    assert {c["name"] for c in cs if c.get("service") == name} == before   # the failed one is gone


def test_killed_nginx_comes_back(svc):
    """nginx killed with -9 (master and workers): the monitor starts it again."""
    home, name = svc["home"], svc["name"]
    pid = json.loads(cocker_in(home, "service", "inspect", name, "--json").stdout)["nginx"]["pid"]
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        workers = [int(x) for x in f.read().split()]
    for p in [pid, *workers]:
        os.kill(p, 9)

    def serving():
        try:
            return get(svc["port"], timeout=2)[0] == 200
        except OSError:
            return False
    wait_for(serving, timeout=15)
    info = json.loads(cocker_in(home, "service", "inspect", name, "--json").stdout)
    assert info["nginx"]["running"] and info["nginx"]["pid"] != pid
    assert answers(svc["port"], 45) == {r["name"] for r in replicas(home, name)}


def test_rm_leaves_nothing(svc):
    home, name = svc["home"], svc["name"]
    info = json.loads(cocker_in(home, "service", "inspect", name, "--json").stdout)
    veths = []
    for r in info["replicas"]:
        veths.append(r["name"])
    cocker_in(home, "service", "rm", name)
    assert leftovers(home, name, svc["bridge"]) == []
    with pytest.raises(OSError):
        get(svc["port"], timeout=2)
    out = cocker_in(home, "service", "inspect", name, check=False)
    assert out.returncode != 0 and "no such service" in out.stderr


# ---- bad input: a clear message and nothing half-created ---------------------------------

def _refused(home: str, name: str, *args: str, expect: str) -> None:
    p = cocker_in(home, *args, check=False)
    assert p.returncode != 0, p.stdout
    assert expect in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert leftovers(home, name) == []


def test_bad_input_leaves_nothing(shome, tmp_path):
    name = unique_name("bad")
    try:
        # an image that does not exist
        _refused(shome, name, "service", "create", name, "--image", "nosuch:1.0",
                 expect="does not exist")
        # nginx not installed
        p = run_cocker("service", "create", name, "--image", "web:1.0", check=False,
                       env={"COCKER_HOME": shome, "COCKER_NGINX": str(tmp_path / "no-nginx")})
        assert p.returncode != 0 and "nginx is not installed" in p.stderr
        assert leftovers(shome, name) == []
        # a port already bound
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            _refused(shome, name, "service", "create", name, "--image", "web:1.0",
                     "--publish", f"127.0.0.1:{port}:8080", "--", *HTTPD, expect="already in use")
        # a replica that never serves: created, then everything undone
        _refused(shome, name, "service", "create", name, "--image", "web:1.0", "--", "false",
                 expect="replica")
        # a JSON file with a wrong type, and one with an unknown field
        f = tmp_path / "svc.json"
        f.write_text(json.dumps({"name": name, "bridge-ip": "10.0.1.1", "replicas": "2"}))
        _refused(shome, name, "service", "add", str(f), expect="'replicas' must be a whole number")
        f.write_text(json.dumps({"name": name, "bridge_ip": "10.0.1.1"}))
        _refused(shome, name, "service", "add", str(f), expect="unknown field 'bridge_ip'")
    finally:
        force_cleanup(shome, name)


def test_duplicate_name_and_overlapping_subnet(shome):
    a, b = unique_name("dup"), unique_name("ovl")
    subnet = unique_subnet()
    try:
        cocker_in(shome, "service", "create", a, "--image", "web:1.0", "--replicas", "0",
                  "--subnet", subnet)
        bridge = json.loads(cocker_in(shome, "service", "inspect", a, "--json").stdout)["bridge"]
        p = cocker_in(shome, "service", "create", a, "--image", "web:1.0", check=False)
        assert p.returncode != 0 and f"service {a} already exists" in p.stderr
        # the first service is untouched
        assert json.loads(cocker_in(shome, "service", "inspect", a, "--json").stdout)["nginx"]["running"]
        _refused(shome, b, "service", "create", b, "--image", "web:1.0", "--replicas", "0",
                 "--subnet", subnet, expect="overlap")
        cocker_in(shome, "service", "rm", a)
        assert leftovers(shome, a, bridge) == []
    finally:
        force_cleanup(shome, a)
        force_cleanup(shome, b)


def test_brocker_files(shome, tmp_path):
    """brocker's service file (+ cocker's fields) and a container file joining it, whose
    `file` is served from /app."""
    name, port = unique_name("brk"), free_port()
    subnet = unique_subnet()
    gw = subnet.rsplit(".", 1)[0] + ".1"
    page = tmp_path / "index.html"
    page.write_text("hello from brocker's file\n")
    sfile, cfile = tmp_path / "service.json", tmp_path / "container.json"
    sfile.write_text(json.dumps({"name": name, "bridge-ip": gw, "image": "web:1.0", "replicas": 0,
                                 "publish": f"127.0.0.1:{port}:8080"}))
    cfile.write_text(json.dumps({"service-name": name, "command": "httpd -f -p 8080 -h /app",
                                 "copy-file": True, "file": str(page)}))
    member = "-"
    try:
        cocker_in(shome, "service", "add", str(sfile))
        info = json.loads(cocker_in(shome, "service", "inspect", name, "--json").stdout)
        assert info["subnet"] == subnet and info["nginx"]["running"]
        p = cocker_in(shome, "container", "run", "-f", str(cfile))
        member = p.stdout.strip()
        assert len(member) == 8                               # brocker's sha1 name
        assert get(port) == (200, "hello from brocker's file")
        cs = json.loads(cocker_in(shome, "container", "ls", "--json").stdout)
        assert [c["service"] for c in cs if c["name"] == member] == [name]
        assert os.path.exists(os.path.join(shome, "brocker", member, "app", "index.html"))
        # without a service and without copy-file: a lone container, the file bind-mounted
        lone = tmp_path / "lone.json"
        lone.write_text(json.dumps({"name": f"{name}-lone", "image": "web:1.0",
                                    "command": ["cat", "/app/index.html"], "file": str(page)}))
        p = cocker_in(shome, "container", "run", "-f", str(lone))
        assert p.stdout == "hello from brocker's file\n"
        cocker_in(shome, "container", "rm", f"{name}-lone")
    finally:
        force_cleanup(shome, name)
    assert leftovers(shome, name) == []
    assert not os.path.exists(os.path.join(shome, "brocker", member))
