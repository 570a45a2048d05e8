"""The runtime's Python API (used by builds, services and the daemon) and the network modes."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from common.errors import Conflict, NotFound
from runtime.container import lifecycle, record
from runtime.container.spec import ContainerSpec
from runtime.fs import layers
from tests.support.runtime import assert_no_leftovers, cname, force_remove, rt, rt_home

pytestmark = pytest.mark.root


def test_run_captured_and_exec_api(rt, cname):
    store, _ = rt
    code, out = lifecycle.run_captured(store, ContainerSpec(
        image="busybox:1.0", name=cname, net="none", env=["A=1"],
        command=["sh", "-c", "echo out-$A; echo err >&2; exit 9"]))
    assert code == 9
    assert b"out-1\n" in out and b"err\n" in out
    assert not os.path.exists(os.path.join(store.containers_dir, cname))
    code, out = lifecycle.run_captured(store, ContainerSpec(
        image="busybox:1.0", name=cname, net="none", command=["/nope"]))
    assert code == 127 and b"not found" in out


def test_states_and_api_errors(rt, cname):
    store, _ = rt
    c = lifecycle.create(store, ContainerSpec(image="busybox:1.0", name=cname, net="none",
                                               command=["sleep", "60"]))
    assert c.state() == "created" and c.digest.startswith("sha256:")
    assert len(c.lower_dirs) == 1 and os.path.isdir(c.lower_dirs[0])
    lifecycle.stop(store, cname)                     # stopping a stopped container: no-op
    lifecycle.start(store, cname)
    assert record.load(store, cname).state() == "running"
    with pytest.raises(Conflict):
        lifecycle.start(store, cname)
    with pytest.raises(Conflict):
        lifecycle.remove(store, cname)               # running: needs force
    assert lifecycle.wait(store, cname, timeout=0.2) is None
    lifecycle.kill(store, cname)
    assert lifecycle.wait(store, cname, timeout=10) == 137
    with pytest.raises(NotFound):
        record.load(store, cname + "-nope")
    lifecycle.remove(store, cname)
    assert_no_leftovers(store, cname)


def test_layer_gc_keeps_used_trees(rt, cname):
    store, _ = rt
    from tests.support.runtime import build_image
    d = os.path.join(store.home, "..", f"gc-{cname}")
    os.makedirs(os.path.join(d, "only-here"))
    with open(os.path.join(d, "only-here", "x"), "w") as f:
        f.write(cname)
    img = build_image(store, f"gc-{cname}", "1.0", [d])
    tree = layers.ensure_layers(store, img)[0]
    assert os.path.isfile(os.path.join(tree, "only-here", "x"))
    used_busybox = layers.ensure_layers(store, __import__("registry.repo.image", fromlist=["x"])
                                        .load(store, "busybox:1.0"))[0]
    assert layers.gc(store) == 0 or os.path.isdir(tree)       # still referenced by its image
    store.delete_ref(f"gc-{cname}", "1.0")
    assert layers.gc(store, dry_run=True) >= 1 and os.path.isdir(tree)
    layers.gc(store)
    assert not os.path.exists(tree)
    assert os.path.isdir(used_busybox)


def test_net_none_and_host(rt, cname):
    _, cli = rt
    p = cli("container", "run", "--rm", "--name", cname, "--net", "none", "busybox:1.0",
            "sh", "-c", "cat /proc/net/dev; ip addr show lo")
    ifaces = [line.split(":")[0].strip() for line in p.stdout.splitlines() if ":" in line
              and "|" not in line and line.strip().split(":")[0].isalnum()]
    assert "lo" in ifaces and "eth0" not in ifaces and "UP" in p.stdout
    p = cli("container", "run", "--rm", "--name", cname, "--net", "host", "busybox:1.0",
            "cat", "/proc/net/dev")
    host = Path("/proc/net/dev").read_text()
    assert len(p.stdout.splitlines()) == len(host.splitlines())


def test_bridge_containers_talk_and_port_mapping(rt, cname):
    store, cli = rt
    from tests.support.net import free_port
    port = free_port()
    a, b = cname + "a", cname + "b"
    try:
        cli("container", "run", "-d", "--name", a, "-p", f"127.0.0.1:{port}:80", "busybox:1.0",
            "sh", "-c", f"echo served-by-{a} > /var/www/index.html; exec httpd -f -p 80 -h /var/www")
        cli("container", "run", "-d", "--name", b, "busybox:1.0", "sleep", "60")
        ls = {c["name"]: c for c in json.loads(cli("container", "ls", "--json").stdout)}
        ip_a, ip_b = ls[a]["ip"], ls[b]["ip"]
        assert ip_a and ip_b and ip_a != ip_b
        body = None
        for _ in range(50):
            p = cli("container", "exec", b, "wget", "-qO-", f"http://{ip_a}/", check=False)
            if p.returncode == 0:
                body = p.stdout
                break
            time.sleep(0.1)
        assert body == f"served-by-{a}\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.read().decode() == f"served-by-{a}\n"
    finally:
        force_remove(store, a)
        force_remove(store, b)
    assert_no_leftovers(store, a)
    assert_no_leftovers(store, b)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert f":{port}" not in rules and f"--dport {port}" not in rules


def test_bad_network_input_leaves_nothing(rt, cname):
    import socket
    store, cli = rt
    before = sorted(os.listdir(store.containers_dir))
    with socket.socket() as s:                       # a port a host process holds
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        p = cli("container", "run", "-d", "--name", cname, "-p", f"127.0.0.1:{port}:80",
                "busybox:1.0", "sleep", "60", check=False)
    assert p.returncode != 0 and str(port) in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(store.containers_dir)) == before
    assert_no_leftovers(store, cname)
    p = cli("container", "run", "--rm", "--name", cname, "--ip", "192.0.2.7", "busybox:1.0",
            "true", check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert sorted(os.listdir(store.containers_dir)) == before
    assert_no_leftovers(store, cname)
