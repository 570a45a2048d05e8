"""Lifecycle: detached runs, logs, stop/kill, exec, cgroups, OOM, crashes, cp, pause."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.runtime import assert_no_leftovers, cgroup_dirs, cname, mounts_under, rt, rt_home

pytestmark = pytest.mark.root


def info(cli, name):
    return json.loads(cli("container", "inspect", name, "--json").stdout)


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_detached_logs_exec_stop(rt, cname):
    store, cli = rt
    out = cli("container", "run", "-d", "--name", cname, "--net", "none", "busybox:1.0", "sh", "-c",
              "trap 'echo got-term; exit 0' TERM; echo started; while true; do sleep 0.1; done")
    assert out.stdout.strip() == cname
    ls = json.loads(cli("container", "ls", "--json").stdout)
    me = [c for c in ls if c["name"] == cname][0]
    assert me["status"] == "running" and me["pid"] > 1 and me["image"] == "busybox:1.0"
    assert me["digest"].startswith("sha256:")
    assert wait_for(lambda: "started" in cli("container", "logs", cname).stdout)
    # exec joins the namespaces: same hostname, sees PID 1, exit code comes back
    p = cli("container", "exec", cname, "sh", "-c", "hostname; cat /proc/1/comm; exit 5",
            check=False)
    assert p.returncode == 5
    assert p.stdout.split() == [cname, "sh"]     # PID 1 is the image's command
    p = cli("container", "exec", cname, "nonexistent-cmd", check=False)
    assert p.returncode == 127 and "not found" in p.stderr
    t0 = time.monotonic()
    cli("container", "stop", "-t", "5", cname)
    assert time.monotonic() - t0 < 4            # the trap ended it, no need for SIGKILL
    i = info(cli, cname)
    assert i["status"] == "exited" and i["exit_code"] == 0
    assert "got-term" in cli("container", "logs", cname).stdout
    assert cgroup_dirs(cname) == []             # cgroups go when the container stops
    # start it again: same container, a second run
    cli("container", "boot", cname)
    assert info(cli, cname)["status"] == "running"
    cli("container", "shutdown", "-t", "5", cname)
    assert cli("container", "logs", cname).stdout.count("started") == 2


def test_stop_kills_after_timeout_a_process_that_ignores_term(rt, cname):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none", "busybox:1.0", "sh", "-c",
        "trap '' TERM; while true; do sleep 0.1; done")
    t0 = time.monotonic()
    cli("container", "stop", "-t", "1", cname)
    took = time.monotonic() - t0
    assert 1.0 <= took < 8, took
    i = info(cli, cname)
    assert i["status"] == "exited" and i["exit_code"] == 137
    assert cgroup_dirs(cname) == []


def test_kill_with_signal(rt, cname):
    _, cli = rt
    # --init: PID 1 is tini, which forwards the signal; a bare `sleep` as PID 1 would ignore
    # it (the kernel drops signals PID 1 has no handler for, as under docker)
    cli("container", "run", "-d", "--init", "--name", cname, "--net", "none", "busybox:1.0",
        "sleep", "100")
    cli("container", "kill", "-s", "USR1", cname)
    assert wait_for(lambda: info(cli, cname)["status"] == "exited")
    assert info(cli, cname)["exit_code"] == 128 + signal.SIGUSR1


def test_cgroup_limits_saved_and_applied(rt, cname):
    _, cli = rt
    cli("container", "create", "--name", cname, "--net", "none", "--cpus", "0",
        "--cpu-quota", "50", "--memory", "64m", "--pids-limit", "20", "busybox:1.0",
        "sleep", "100")
    for n in range(2):                           # applied at every start
        cli("container", "start", cname)
        base = "/sys/fs/cgroup"
        if os.path.exists(f"{base}/cgroup.controllers"):
            d = f"{base}/cocker/{cname}"
            assert Path(f"{d}/memory.max").read_text().strip() == str(64 << 20)
            assert Path(f"{d}/pids.max").read_text().strip() == "20"
            assert Path(f"{d}/cpu.max").read_text().split()[0] == "50000"
        else:
            assert Path(f"{base}/memory/cocker/{cname}/memory.limit_in_bytes").read_text().strip() \
                == str(64 << 20)
            assert Path(f"{base}/pids/cocker/{cname}/pids.max").read_text().strip() == "20"
            assert Path(f"{base}/cpu/cocker/{cname}/cpu.cfs_quota_us").read_text().strip() == "50000"
            assert Path(f"{base}/cpuset/cocker/{cname}/cpuset.cpus").read_text().strip() == "0"
        if n == 0:
            p = cli("container", "exec", cname, "sh", "-c",
                    "for i in $(seq 40); do sleep 5 & done 2>&1; echo done", check=False)
            assert "can't fork" in p.stdout + p.stderr or "Resource" in p.stdout + p.stderr
        cli("container", "stop", "-t", "1", cname)
        assert cgroup_dirs(cname) == []


def test_memory_limit_stops_an_allocating_process(rt, cname):
    _, cli = rt
    # tail must hold the whole newline-free input in memory: 96 MiB against a 16 MiB limit
    p = cli("container", "run", "--name", cname, "--net", "none", "--memory", "16m",
            "busybox:1.0", "sh", "-c", "head -c 96m /dev/zero | tail >/dev/null; echo rc=$?",
            check=False)
    assert "rc=137" in p.stdout, p.stdout + p.stderr
    i = info(cli, cname)
    assert i["oom_killed"] is True


def test_supervisor_killed_shows_dead_and_rm_force_cleans(rt, cname):
    store, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "bridge", "busybox:1.0",
        "sleep", "100")
    i = info(cli, cname)
    assert i["ip"] and i["status"] == "running"
    os.kill(i["pid"], signal.SIGKILL)
    assert wait_for(lambda: info(cli, cname)["status"] == "dead")
    ls = json.loads(cli("container", "ls", "--all", "--json").stdout)
    assert [c["status"] for c in ls if c["name"] == cname] == ["dead"]
    assert cgroup_dirs(cname)                    # left behind by the crash ...
    cli("container", "rm", "-f", cname)
    assert_no_leftovers(store, cname)            # ... and gone now
    from runtime.net import ipam
    for rec in ipam.all_records(store):
        assert cname not in rec["endpoints"]


def test_cp_in_and_out_stays_inside(rt, cname, tmp_path):
    store, cli = rt
    cli("container", "create", "--name", cname, "--net", "none", "busybox:1.0",
        "sh", "-c", "cat /etc/greeting; exec sleep 100")
    src = tmp_path / "greeting"
    src.write_text("hello in\n")
    cli("container", "cp", str(src), f"{cname}:/etc/greeting")      # stopped: putfile
    assert mounts_under(os.path.join(store.containers_dir, cname)) == []
    cli("container", "start", cname)
    assert wait_for(lambda: "hello in" in cli("container", "logs", cname).stdout)
    # a link inside the container that points at / must resolve to the CONTAINER's root
    cli("container", "exec", cname, "ln", "-s", "/", "/escape")
    marker = f"cocker-cp-test-{cname}"
    cli("container", "cp", str(src), f"{cname}:/escape/tmp/{marker}")
    assert not os.path.exists(f"/tmp/{marker}")
    p = cli("container", "exec", cname, "cat", f"/tmp/{marker}", check=False)
    assert p.stdout == "hello in\n"
    cli("container", "cp", f"{cname}:/escape/etc/passwd", str(tmp_path / "pw"))
    assert (tmp_path / "pw").read_text().startswith("root:x:0:0:root:/root:/bin/sh\nnobody")
    cli("container", "stop", "-t", "1", cname)
    out = tmp_path / "out"
    cli("container", "cp", f"{cname}:/etc/greeting", str(out))         # stopped: getfile
    assert out.read_text() == "hello in\n"
    assert mounts_under(os.path.join(store.containers_dir, cname)) == []
    p = cli("container", "cp", f"{cname}:/no/such", str(out), check=False)
    assert p.returncode != 0 and "no such file" in p.stderr


def test_paused_freezes(rt, cname):
    store, cli = rt
    from runtime.container import lifecycle
    cli("container", "run", "-d", "--name", cname, "--net", "none", "busybox:1.0", "sh", "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.05; done")
    time.sleep(0.3)
    with lifecycle.paused(store, cname) as c:
        assert c.info()["paused"] is True
        upper = os.path.join(c.upper_dir, "tmp", "tick")
        first = Path(upper).read_text()
        time.sleep(0.3)
        assert Path(upper).read_text() == first
    assert wait_for(lambda: Path(upper).read_text() != first, 5)
    lifecycle.stop(store, cname, timeout=2)


def test_detached_rm_removes_itself(rt, cname):
    store, cli = rt
    cli("container", "run", "-d", "--rm", "--name", cname, "--net", "none", "busybox:1.0",
        "sh", "-c", "sleep 0.3; exit 3")
    # the monitor renames the directory away, then deletes it: wait for both
    assert wait_for(lambda: not [n for n in os.listdir(store.containers_dir) if cname in n], 15)
    assert_no_leftovers(store, cname)
