"""Booting containers: isolation, command, exit codes, volumes, many layers, bad input."""

from __future__ import annotations

import json
import os

import pytest

from tests.support.runtime import assert_no_leftovers, build_many_layers, cgroup_dirs, cname, rt, rt_home

pytestmark = pytest.mark.root


def run(cli, name, *args, net="none", check=False):
    return cli("container", "run", "--rm", "--name", name, "--net", net, *args, check=check)


def test_pid_namespace_hostname_exit_code(rt, cname):
    _, cli = rt
    p = run(cli, cname, "--hostname", "box1", "busybox:1.0", "sh", "-c",
            "echo pid=$$; hostname; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; exit 7")
    assert p.returncode == 7, p.stderr
    lines = p.stdout.split()
    assert lines[0] == "pid=1"                 # the command is PID 1: its monitor stays outside
    assert lines[1] == "box1"
    assert lines[2] == "sh"
    assert int(lines[3]) <= 3                  # only the container's processes are visible


def test_filesystem_isolation_and_readonly_sys(rt, cname):
    _, cli = rt
    p = run(cli, cname, "busybox:1.0", "sh", "-c",
            "cat /proc/mounts; touch /sys/x 2>/dev/null && echo SYSRW; ls /dev; "
            "echo data > /root/f; cat /root/f; test -e /home/nothing-of-the-host || echo ok")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.splitlines()[0].startswith("overlay / overlay")
    assert "SYSRW" not in out
    for dev in ("null", "zero", "urandom", "tty", "pts", "ptmx", "shm"):
        assert dev in out.split()
    assert "devpts /dev/pts devpts" in out
    assert "data" in out


def test_env_workdir_and_signal_default(rt, cname):
    _, cli = rt
    # under --init the shell is not PID 1, which the kernel would keep from dying of TERM
    p = run(cli, cname, "--init", "-e", "FOO=bar", "-w", "/tmp/wd", "busybox:1.0", "sh", "-c",
            "echo $FOO; pwd; echo $PATH; kill -TERM $$")
    assert p.stdout.split()[:2] == ["bar", "/tmp/wd"]
    assert "/bin" in p.stdout.split()[2]
    assert p.returncode == 128 + 15           # a signal death is reported as 128+N


def test_zombies_are_reaped(rt, cname):
    _, cli = rt
    # the subshell exits at once, its sleep is orphaned to PID 1 and must be reaped there
    p = run(cli, cname, "busybox:1.0", "sh", "-c",
            "(sleep 0.2 &); sleep 1; cat /proc/[0-9]*/stat")
    assert p.returncode == 0, p.stderr
    states = [line.rsplit(")", 1)[1].split()[0] for line in p.stdout.splitlines() if ")" in line]
    assert states and "Z" not in states, p.stdout


def test_volumes_rw_and_ro(rt, cname, tmp_path):
    _, cli = rt
    rw = tmp_path / "rw"
    ro = tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "in.txt").write_text("from host\n")
    p = run(cli, cname, "-v", f"{rw}:/data", "-v", f"{ro}:/conf:ro", "busybox:1.0", "sh", "-c",
            "echo written > /data/out.txt; cat /conf/in.txt; "
            "echo x > /conf/nope 2>/dev/null && echo RO-BROKEN; true")
    assert p.returncode == 0, p.stderr
    assert "from host" in p.stdout and "RO-BROKEN" not in p.stdout
    assert (rw / "out.txt").read_text() == "written\n"
    assert not (ro / "nope").exists()


def test_fifty_layers_boot(rt, cname):
    store, cli = rt
    build_many_layers(store, 50, name="layered50")
    p = run(cli, cname, "layered50:1.0", "sh", "-c", "ls /layers | wc -l; cat /layers/49")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["49", "49"]


def test_digest_is_pinned_at_create(rt, cname):
    store, cli = rt
    import tempfile

    from tests.support.runtime import build_image
    with tempfile.TemporaryDirectory() as d:
        from tests.conftest import make_busybox_rootfs
        root = make_busybox_rootfs(os.path.join(d, "r"))
        with open(os.path.join(root, "etc", "ver"), "w") as f:
            f.write("one\n")
        v1 = build_image(store, "pinned", "1.0", [root])
        cli("container", "create", "--name", cname, "--net", "none", "pinned", "cat", "/etc/ver")
        with open(os.path.join(root, "etc", "ver"), "w") as f:
            f.write("two\n")
        build_image(store, "pinned", "2.0", [root])
    info = json.loads(cli("container", "inspect", cname, "--json").stdout)
    assert info["digest"] == v1.digest and info["image"] == "pinned:1.0"
    p = cli("container", "start", "--attach", cname, check=False)
    assert p.returncode == 0 and p.stdout.strip() == "one", p.stdout + p.stderr


# bad input: one line, non-zero, nothing left -------------------------------------------------
def _snapshot(store):
    return sorted(os.listdir(store.containers_dir))


def test_unknown_image(rt, cname):
    store, cli = rt
    before = _snapshot(store)
    p = run(cli, cname, "no-such-image:9", "true")
    assert p.returncode != 0 and "not found" in p.stderr and "Traceback" not in p.stderr
    assert _snapshot(store) == before


def test_command_not_found_leaves_nothing(rt, cname):
    store, cli = rt
    before = _snapshot(store)
    p = cli("container", "run", "--name", cname, "--net", "none", "busybox:1.0", "/no/such/cmd",
            check=False)
    assert p.returncode == 127, p.stderr
    assert "not found" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert _snapshot(store) == before
    assert_no_leftovers(store, cname)


def test_missing_volume_source(rt, cname, tmp_path):
    store, cli = rt
    before = _snapshot(store)
    p = run(cli, cname, "-v", f"{tmp_path}/absent:/x", "busybox:1.0", "true")
    assert p.returncode != 0 and "does not exist" in p.stderr
    assert _snapshot(store) == before


def test_name_taken_and_bad_limits(rt, cname):
    store, cli = rt
    cli("container", "create", "--name", cname, "--net", "none", "busybox:1.0", "true")
    p = cli("container", "create", "--name", cname, "--net", "none", "busybox:1.0", "true",
            check=False)
    assert p.returncode != 0 and "already taken" in p.stderr
    assert os.path.isfile(os.path.join(store.containers_dir, cname, "container.json"))
    p = cli("container", "create", "--name", cname + "x", "--memory", "lots", "busybox:1.0",
            check=False)
    assert p.returncode != 0 and "--memory" in p.stderr
    assert not os.path.exists(os.path.join(store.containers_dir, cname + "x"))
    assert cgroup_dirs(cname) == []
