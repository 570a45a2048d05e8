"""The runtime's process model, users and opt-ins, seen from inside the container and from the
host: PID 1 is the image's command (or --init's tini), its monitor stays outside, nothing a
process inside can see leads to the host, exec runs under the container's confinement, users
come from the image's own passwd/group, and each opt-in is recorded and shown by inspect."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import make_busybox_rootfs
from tests.support.runtime import build_image, cname, rt, rt_home

DEFAULT_CAPS = "00000000a80425fb"

# every process visible inside: what its root, cwd, exe and fds lead to, and its environment
PROBE = r"""
sleep 100 &
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ -e $d/exe ] || continue
  echo "pid $p root=$(readlink $d/root) cwd=$(readlink $d/cwd) exe=$(readlink $d/exe)"
  for f in $d/root $d/cwd $d/exe; do [ -e "$f" ] || echo "DANGLING $f"; done
  [ -e "$d/root$HOSTMARK" ] && echo "HOSTROOT $p"
  [ -e "$d/cwd$HOSTMARK" ] && echo "HOSTROOT $p"
  for fd in $d/fd/*; do
    l=$(readlink $fd)
    echo "fd $p $l"
    case "$l" in /*) [ -e "$l" ] || echo "OUTSIDE $p $l";; esac
  done
  tr '\0' '\n' < $d/environ | sed "s/^/env $p /"
done
kill %1
"""


def _status(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def _run(cli, name, *args, check=True, env=None):
    return cli("container", "run", "--rm", "--name", name, "--net", "none", *args, check=check,
               env=env)


def _info(cli, name):
    return json.loads(cli("container", "inspect", name, "--json").stdout)


@pytest.fixture(scope="module")
def users_image(rt_home):
    """busybox plus an `app` user (1000) in groups app and staff, and config User=app."""
    from registry.repo.store import Store
    store = Store(rt_home["COCKER_HOME"])
    with tempfile.TemporaryDirectory() as tmp:
        root = make_busybox_rootfs(os.path.join(tmp, "rootfs"))
        extra = os.path.join(tmp, "users")
        os.makedirs(os.path.join(extra, "etc"))
        os.makedirs(os.path.join(extra, "home", "app"))
        with open(os.path.join(extra, "etc", "passwd"), "w") as f:
            f.write("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
                    "nobody:x:65534:65534:nobody:/:/bin/false\n")
        with open(os.path.join(extra, "etc", "group"), "w") as f:
            f.write("root:x:0:\napp:x:1000:\nstaff:x:50:app\nwheel:x:10:root\n"
                    "nogroup:x:65534:\n")
        build_image(store, "users", "1.0", [root, extra],
                    {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/sbin:/usr/bin"], "User": "app"})
    return "users:1.0"


# process model -----------------------------------------------------------------------------
def test_nothing_visible_inside_leads_to_the_host(rt, cname, tmp_path):
    _, cli = rt
    hostmark = str(tmp_path / "host-only-marker")
    open(hostmark, "w").close()
    p = _run(cli, cname, "-e", f"HOSTMARK={hostmark}", "busybox:1.0", "sh", "-c", PROBE,
             env={"COCKER_TEST_SECRET": "leaked-host-secret"})
    out = p.stdout
    pids = [line.split()[1] for line in out.splitlines() if line.startswith("pid ")]
    assert "1" in pids and len(pids) >= 2
    assert "pid 1 root=/ cwd=/ exe=/bin/busybox" in out     # PID 1 is the command itself
    for bad in ("DANGLING", "HOSTROOT", "OUTSIDE", "leaked-host-secret", "COCKER_HOME",
                "cocker-monitor", "python"):
        assert bad not in out, [line for line in out.splitlines() if bad in line]
    env1 = {line.split(" ", 2)[2].split("=", 1)[0] for line in out.splitlines()
            if line.startswith("env 1 ")}
    assert env1 == {"PATH", "HOSTMARK", "HOSTNAME", "container", "HOME"}


def test_monitor_outside_and_detached_fds_inside(rt, cname):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none", "busybox:1.0",
        "sh", "-c", "echo started; exec sleep 100")
    i = _info(cli, cname)
    monitor, init = i["state"]["pid"], i["state"]["init_pid"]
    assert i["workload_pid"] == init != monitor
    ns = lambda pid, kind: os.readlink(f"/proc/{pid}/ns/{kind}")  # noqa: E731
    for kind in ("pid", "mnt", "net"):          # the monitor shares none of the container's
        assert ns(monitor, kind) == ns("self", kind)
        assert ns(init, kind) != ns("self", kind)
    # the detached workload writes into a pipe the monitor relays: no host file open inside
    p = cli("container", "exec", cname, "sh", "-c",
            "for f in /proc/1/fd/*; do readlink $f; done; cat /proc/1/comm")
    links = p.stdout.split()
    assert links[-1] == "sleep"
    assert all(not link.startswith("/") or link == "/dev/null" for link in links[:-1]), links
    assert "started" in cli("container", "logs", cname).stdout


def test_init_is_tini_inside_the_root(rt, cname):
    _, cli = rt
    p = _run(cli, cname, "--init", "busybox:1.0", "sh", "-c",
             "cat /proc/1/comm; readlink /proc/1/exe; echo $$; touch /dev/init || echo ro")
    lines = p.stdout.split()
    assert lines[0] in ("init", "tini", "catatonit")
    assert lines[1] == "/dev/init"          # bound read-only inside, not a host path
    assert lines[2] != "1"
    assert lines[-1] == "ro"


def test_exec_runs_under_the_same_confinement(rt, cname):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none",
        "--security-opt", "no-new-privileges", "busybox:1.0", "sleep", "100")
    own = _status(cli("container", "exec", cname, "cat", "/proc/self/status").stdout)
    init = _status(cli("container", "exec", cname, "cat", "/proc/1/status").stdout)
    for st in (own, init):
        assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == DEFAULT_CAPS
        assert st["CapInh"] == st["CapAmb"] == "0000000000000000"
        assert st["Seccomp"] == "2"
        assert st["NoNewPrivs"] == "1"
    env = cli("container", "exec", cname, "env").stdout
    assert "COCKER" not in env and "container=cocker" in env


def test_default_has_no_no_new_privs_and_no_host_devices(rt, cname):
    _, cli = rt
    # mknod works (CAP_MKNOD, as in docker) but the node opens nothing: the rootfs is nodev,
    # and on /dev's tmpfs the device cgroup refuses the host's disk-like nodes
    p = _run(cli, cname, "busybox:1.0", "sh", "-c",
             "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; "
             "mknod /tmp/kmsg c 1 11 && (head -c1 /tmp/kmsg >/dev/null 2>&1 || echo NODEV-REFUSED); "
             "mknod /dev/kmsg2 c 1 11 && (head -c1 /dev/kmsg2 >/dev/null 2>&1 || echo CGROUP-REFUSED)",
             check=False)
    st = _status(p.stdout)
    assert st["NoNewPrivs"] == "0" and st["Seccomp"] == "2"
    assert "NODEV-REFUSED" in p.stdout and "CGROUP-REFUSED" in p.stdout


# users ---------------------------------------------------------------------------------------
def test_numeric_user_has_no_capabilities(rt, cname):
    _, cli = rt
    p = _run(cli, cname, "-u", "1234", "busybox:1.0", "sh", "-c",
             "id -u; id -g; echo $HOME; grep -E '^Cap(Eff|Prm|Inh|Amb):' /proc/self/status")
    out = p.stdout.split()
    assert out[:3] == ["1234", "0", "/"]            # docker's rule: gid 0, HOME /
    st = _status(p.stdout)
    assert st["CapEff"] == st["CapPrm"] == st["CapInh"] == st["CapAmb"] == "0000000000000000"


def test_image_user_groups_home_and_overrides(rt, cname, users_image):
    _, cli = rt
    # the image's config says User=app: honoured without -u
    p = _run(cli, cname, users_image, "sh", "-c", "id -u; id -g; id -G; echo $HOME")
    uid, gid, groups, home = p.stdout.split("\n")[:4]
    assert (uid, gid, home) == ("1000", "1000", "/home/app")
    assert set(groups.split()) == {"1000", "50"}     # supplementary groups from /etc/group
    p = _run(cli, cname, "-u", "app:staff", users_image, "sh", "-c", "id -u; id -g")
    assert p.stdout.split() == ["1000", "50"]
    p = _run(cli, cname, "-u", "root", users_image, "sh", "-c",
             "id -u; id -G; grep CapEff /proc/self/status")
    assert p.stdout.split()[:2] == ["0", "0"] and DEFAULT_CAPS in p.stdout
    # exec runs as the container's user; exec -u overrides it
    cli("container", "run", "-d", "--name", cname + "x", "--net", "none", users_image,
        "sleep", "100")
    try:
        assert cli("container", "exec", cname + "x", "id", "-u").stdout.strip() == "1000"
        assert cli("container", "exec", "-u", "0", cname + "x", "id", "-u").stdout.strip() == "0"
        caps = _status(cli("container", "exec", cname + "x", "cat", "/proc/self/status").stdout)
        assert caps["CapEff"] == "0000000000000000"
    finally:
        cli("container", "rm", "-f", cname + "x", check=False)


def test_unknown_user_is_a_clear_error(rt, cname, users_image):
    _, cli = rt
    for user, what in (("nosuch", "user 'nosuch' not found"), ("app:nogrp", "group 'nogrp' not found")):
        p = _run(cli, cname, "-u", user, users_image, "true", check=False)
        assert p.returncode != 0
        assert what in p.stderr and "Traceback" not in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


# opt-ins ---------------------------------------------------------------------------------------
def test_opt_ins_are_recorded_and_shown(rt, cname):
    _, cli = rt
    cli("container", "create", "--name", cname, "--net", "none", "--cap-add", "net_admin",
        "--cap-drop", "MKNOD", "--security-opt", "no-new-privileges", "--read-only",
        "--device", "/dev/loop-control:/dev/lc", "--init", "busybox:1.0", "sleep", "100")
    sec = _info(cli, cname)["security"]
    assert sec == {"privileged": False, "cap_add": ["net_admin"], "cap_drop": ["MKNOD"],
                   "seccomp": "default", "no_new_privileges": True, "read_only": True,
                   "devices": ["/dev/loop-control:/dev/lc"], "init": True, "userns": False}
    text = cli("container", "inspect", cname).stdout
    assert "read_only=True" in text and "cap_add=['net_admin']" in text
    cli("container", "start", cname)
    p = cli("container", "exec", cname, "sh", "-c",
            "grep CapEff /proc/self/status; touch /x 2>&1; touch /dev/shm/ok && echo shm-ok; "
            "test -c /dev/lc && : < /dev/lc && echo dev-ok", check=False)
    caps = int(_status(p.stdout)["CapEff"], 16)
    assert caps & (1 << 12) and not caps & (1 << 27)         # NET_ADMIN in, MKNOD out
    assert "Read-only file system" in p.stdout
    assert "shm-ok" in p.stdout and "dev-ok" in p.stdout


def test_privileged_and_unconfined(rt, cname):
    _, cli = rt
    p = _run(cli, cname, "--security-opt", "seccomp=unconfined", "busybox:1.0",
             "grep", "-E", "^(Seccomp|CapEff):", "/proc/self/status")
    st = _status(p.stdout)
    assert st["Seccomp"] == "0" and st["CapEff"] == DEFAULT_CAPS
    p = _run(cli, cname, "--privileged", "busybox:1.0", "sh", "-c",
             "grep -E '^(Seccomp|CapEff):' /proc/self/status; grep ' /sys ' /proc/mounts; "
             "grep -c ' /proc/kcore ' /proc/mounts; true")
    st = _status(p.stdout)
    assert st["Seccomp"] == "0" and int(st["CapEff"], 16) > int(DEFAULT_CAPS, 16)
    assert " rw," in p.stdout.split("/sys sysfs")[1].splitlines()[0] + " "
    assert p.stdout.split()[-1] == "0"                # nothing masked


def test_seccomp_profile_file_is_kept_with_the_container(rt, cname, tmp_path):
    from runtime.process import seccomp
    _, cli = rt
    prof = json.loads(seccomp.default_profile_text())
    for rule in prof["syscalls"]:           # mkdir falls to the default action: EPERM
        rule["names"] = [n for n in rule["names"] if n not in ("mkdir", "mkdirat")]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    cli("container", "create", "--name", cname, "--net", "none", "--security-opt",
        f"seccomp={path}", "busybox:1.0", "mkdir", "/newdir")
    path.unlink()                                       # the record holds the profile
    assert _info(cli, cname)["security"]["seccomp"] == str(path)
    p = cli("container", "start", "-a", cname, check=False)
    assert p.returncode != 0 and "Operation not permitted" in p.stdout + p.stderr


@pytest.mark.parametrize("args, what", [
    (("--cap-add", "NOT_A_CAP"), "unknown capability"),
    (("--security-opt", "apparmor=x"), "--security-opt"),
    (("--security-opt", "seccomp=/nonexistent.json"), "/nonexistent.json"),
    (("--device", "/etc/passwd"), "not a device node"),
    (("--device", "/dev/null:/etc/x"), "under /dev"),
])
def test_bad_opt_ins_are_refused_before_anything_is_made(rt, cname, args, what):
    store, cli = rt
    p = cli("container", "create", "--name", cname, "--net", "none", *args, "busybox:1.0",
            "true", check=False)
    assert p.returncode != 0 and what in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(store.paths.container(cname))


def test_device_nodes_of_the_container(rt, cname):
    _, cli = rt
    p = _run(cli, cname, "busybox:1.0", "sh", "-c", "ls /dev; cat /proc/mounts")
    names = set(p.stdout.split())
    for n in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue"):
        assert n in names
    mounts = p.stdout
    assert " /dev/mqueue mqueue " in mounts
    root = [line for line in mounts.splitlines() if line.startswith("overlay / ")][0]
    assert "nodev" in root.split()[3].split(",")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)     # the host's own nodes untouched


def test_brocker_file_and_daemon_spec_take_the_opt_ins(rt, cname, tmp_path):
    _, cli = rt
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"image": "busybox:1.0", "name": cname, "command": "sleep 100",
                             "user": "1000", "read-only": True, "cap-add": "NET_ADMIN",
                             "security-opt": ["no-new-privileges"], "init": True}))
    cli("container", "run", "-d", "-f", str(f))
    i = _info(cli, cname)
    assert i["user"] == "1000"
    assert i["security"]["read_only"] and i["security"]["init"]
    assert i["security"]["cap_add"] == ["NET_ADMIN"] and i["security"]["no_new_privileges"]
    f.write_text(json.dumps({"image": "busybox:1.0", "name": cname + "b", "cap-add": 5}))
    p = cli("container", "run", "-d", "-f", str(f), check=False)
    assert p.returncode != 0 and "cap-add" in p.stderr and "Traceback" not in p.stderr


def test_daemon_api_spec_takes_the_same_keys(rt, cname):
    from runtime.daemon.worker import container_create
    store, cli = rt
    info = container_create(store, {"spec": {
        "image": "busybox:1.0", "name": cname, "net": "none", "command": ["true"],
        "cap_drop": ["ALL"], "security_opt": ["seccomp=unconfined"], "privileged": False,
        "read_only": True, "init": True, "user": "1000"}})
    assert info["name"] == cname
    sec = _info(cli, cname)["security"]
    assert sec["cap_drop"] == ["ALL"] and sec["seccomp"] == "unconfined"
    assert sec["read_only"] and sec["init"]


def _on_a_terminal(args: list[str]) -> tuple[subprocess.CompletedProcess, list[str], bytes]:
    """Run `cocker ARGS` with stdout on a new terminal, stdin "hello", stderr captured: the
    process, the words of its stderr, and what reached the terminal."""
    master, slave = os.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "cocker.main", *args], stdout=slave,
                           stderr=subprocess.PIPE, input=b"hello\n", timeout=60)
        os.close(slave)
        slave = -1
        return p, p.stderr.decode().split(), os.read(master, 4096)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_foreground_stdio_are_pipes_not_the_callers_terminal(rt, cname):
    """`run` from a terminal: the container writes into pipes its monitor relays, so no
    terminal of the host is open inside (it could be reopened or driven through ioctls)."""
    p, links, tty = _on_a_terminal(
        ["container", "run", "--rm", "-i", "--name", cname, "--net", "none", "busybox:1.0",
         "sh", "-c", "echo to-the-tty; for f in 0 1 2; do readlink /proc/1/fd/$f >&2; done; "
         "read line; echo got:$line >&2"])
    assert p.returncode == 0, p.stderr
    assert all(link.startswith("pipe:[") for link in links[:3]), links
    assert links[3] == "got:hello"
    assert b"to-the-tty" in tty


def test_exec_stdio_are_pipes_not_the_callers_terminal(rt, cname):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none", "busybox:1.0", "sleep", "100")
    p, links, tty = _on_a_terminal(
        ["container", "exec", "-i", cname, "sh", "-c",
         "echo to-the-tty; for f in 0 1 2; do readlink /proc/self/fd/$f >&2; done; "
         "read line; echo got:$line >&2; exit 3"])
    assert p.returncode == 3, p.stderr
    assert all(link.startswith("pipe:[") for link in links[:3]), links
    assert links[3] == "got:hello"
    assert b"to-the-tty" in tty
