"""The attacker's view (issue 12): a busybox image booted by the real CLI, root inside, tries
every escape it can think of. Each must fail, by seccomp, a missing capability, a mask, a
read-only mount, the device cgroup or the PID namespace.

The escapes run in tests/support/probe.c, a static program compiled by gcc for this session
and shipped in a layer of the image. It never changes host state: a call that could is skipped
when CapEff/Seccomp say it would go through (and the test then fails on "skipped"), the others
are made with arguments that fail after the permission checks (EBADF, EFAULT, EINVAL), so a
result other than EPERM means "it got through" without anything happening. Files that must not
be written are only opened for writing, never written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from common.home import Home
from tests.conftest import make_busybox_rootfs
from tests.support.runtime import build_image, cgroup_dirs, cname, rt, rt_home

pytestmark = pytest.mark.root

PROBE_SRC = os.path.join(os.path.dirname(__file__), "support", "probe.c")
IMAGE = "containment-probe:1.0"
TOKEN = "COCKER_REGISTRY_TOKEN"
DEFAULT_CAPEFF = "00000000a80425fb"
ZERO = "0000000000000000"


@pytest.fixture(scope="module")
def probe_image(rt_home) -> str:
    """busybox + /usr/local/bin/probe (static), in the session's runtime store."""
    from registry.repo.store import Store
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to build the probe (scripts/install.sh installs it)"
    with tempfile.TemporaryDirectory() as tmp:
        root = make_busybox_rootfs(os.path.join(tmp, "rootfs"))
        extra = os.path.join(tmp, "probe-layer")
        os.makedirs(os.path.join(extra, "usr", "local", "bin"))
        subprocess.run([gcc, "-static", "-O1", "-o",
                        os.path.join(extra, "usr", "local", "bin", "probe"), PROBE_SRC],
                       check=True, capture_output=True)
        build_image(Store(rt_home["COCKER_HOME"]), "containment-probe", "1.0", [root, extra],
                    {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/bin:/bin:/sbin:/usr/bin"]})
    return IMAGE


def root_disk() -> tuple[int, int]:
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def run(cli, name: str, *args: str, opts: tuple[str, ...] = (), check: bool = True,
        env: dict | None = None):
    p = cli("container", "run", "--rm", "--name", name, "--net", "none", *opts, IMAGE, *args,
            check=False, env=env)
    if check:
        assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def status_of(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def probe(cli, name: str, opts: tuple[str, ...] = ()) -> dict[str, str]:
    major, minor = root_disk()
    p = run(cli, name, "probe", str(os.getpid()), str(major), str(minor), opts=opts,
            env={TOKEN: "secret-planted-by-the-test"})
    return parse(p.stdout)


EPERM, EROFS = ("EPERM",), ("EROFS", "EACCES")   # EACCES: an unmapped owner under --userns auto
REFUSED = {
    # name: the answers that mean "refused". EPERM from seccomp or a missing capability is the
    # usual one; EROFS for read-only paths.
    "mount": EPERM, "umount": EPERM, "unshare_user": EPERM, "unshare_mnt": EPERM,
    "finit_module": EPERM, "keyctl": EPERM, "bpf": EPERM, "perf_event_open": EPERM,
    "io_uring_setup": EPERM, "userfaultfd": EPERM, "open_by_handle_at": EPERM,
    "socket_vsock": EPERM, "socket_alg": EPERM, "clock_settime": EPERM,
    "write_core_pattern": EROFS, "write_sys": EROFS,
    "write_release_agent": ("EROFS", "EACCES", "ENOENT"),
}
DEVICE_REFUSED = ("EPERM", "EACCES")


def test_default_confinement_refuses_every_escape(rt, cname, probe_image):
    _, cli = rt
    out = probe(cli, cname)
    assert out["seccomp"] == "2" and out["capeff"] == DEFAULT_CAPEFF, out
    assert out["proc_escapes"] == "", out["proc_escapes"]     # /proc/N/{root,cwd,exe,fd,environ}
    assert int(out["proc_pids"]) >= 1
    assert out["setns_joined"] == "0", out                    # nsenter into any visible pid
    for name, expected in REFUSED.items():
        assert out[name] in expected, f"{name}: {out[name]} (expected one of {expected})"
    # the sysrq trigger is read-only when this kernel has one
    assert out["write_sysrq"] in ("EROFS", "ENOENT")
    assert out["ptrace_host"] in ("ESRCH", "EPERM")           # the host's pid is not in here
    assert out["read_keys"] == out["read_timer_list"] == "0"  # masked
    assert out["read_kcore"] in ("0", "-1")                   # masked, or absent on this kernel
    assert out["mknod_disk"] == "ok"                          # CAP_MKNOD, as in docker ...
    assert out["read_disk"] in DEVICE_REFUSED                 # ... but the node cannot be opened
    assert out["read_kmsg"] in DEVICE_REFUSED


def test_userns_auto_refuses_every_escape_too(rt, cname, probe_image):
    _, cli = rt
    out = probe(cli, cname, ("--userns", "auto"))
    assert out["seccomp"] == "2" and out["capeff"] == DEFAULT_CAPEFF, out
    assert out["proc_escapes"] == "" and out["setns_joined"] == "0", out
    for name, expected in REFUSED.items():
        assert out[name] in expected, f"{name}: {out[name]} (expected one of {expected})"
    assert out["read_kmsg"] in DEVICE_REFUSED


def test_proc_self_status(rt, cname, probe_image):
    _, cli = rt
    st = status_of(run(cli, cname, "cat", "/proc/self/status").stdout)
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == DEFAULT_CAPEFF
    assert st["CapInh"] == st["CapAmb"] == ZERO
    assert st["Seccomp"] == "2"
    assert st["NoNewPrivs"] == "0"


def test_no_new_privileges(rt, cname, probe_image):
    _, cli = rt
    st = status_of(run(cli, cname, "cat", "/proc/self/status",
                       opts=("--security-opt", "no-new-privileges")).stdout)
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert st["CapEff"] == DEFAULT_CAPEFF


def test_privileged_is_documented_not_contained(rt, cname, probe_image):
    """--privileged: every capability, no seccomp filter, no masks. The probes that could
    change the host are skipped (they would go through); this records what it gives."""
    _, cli = rt
    out = probe(cli, cname, ("--privileged",))
    assert out["seccomp"] == "0"
    assert out["mount"] == out["umount"] == out["finit_module"] == "skipped"
    assert out["keyctl"] == "ok" and out["clock_settime"] == "EINVAL"   # past every check
    # still its own PID namespace: the host's processes stay out of sight
    assert out["ptrace_host"] in ("ESRCH", "EPERM")
    assert out["proc_escapes"] == ""


@pytest.mark.parametrize("user", ["1000", "1000:1000", "nobody"])
def test_non_root_user_has_no_capabilities(rt, cname, probe_image, user):
    _, cli = rt
    p = run(cli, cname, "sh", "-c", "id -u; cat /proc/self/status", opts=("-u", user))
    uid = p.stdout.split()[0]
    assert uid != "0"
    st = status_of(p.stdout)
    assert st["CapEff"] == st["CapPrm"] == st["CapInh"] == st["CapAmb"] == ZERO
    assert st["Seccomp"] == "2"


def test_user_the_image_lacks_is_a_clear_error(rt, cname, probe_image):
    _, cli = rt
    p = run(cli, cname, "true", opts=("-u", "no-such-user"), check=False)
    assert p.returncode != 0
    assert "no-such-user" in p.stderr and "Traceback" not in p.stderr


def test_exec_runs_under_the_same_restrictions(rt, cname, probe_image):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none", IMAGE, "sleep", "60")
    try:
        major, minor = root_disk()
        p = cli("container", "exec", cname, "probe", str(os.getpid()), str(major), str(minor))
        out = parse(p.stdout)
        assert out["seccomp"] == "2" and out["capeff"] == DEFAULT_CAPEFF
        assert out["proc_escapes"] == "" and out["setns_joined"] == "0"
        for name in ("mount", "unshare_user", "keyctl", "bpf", "clock_settime"):
            assert out[name] == "EPERM", (name, out[name])
        st = status_of(cli("container", "exec", "-u", "1000", cname, "cat",
                           "/proc/self/status").stdout)
        assert st["CapEff"] == ZERO and st["Seccomp"] == "2"
    finally:
        cli("container", "rm", "-f", cname, check=False)


def test_cap_add_net_admin_lets_ip_link_add_work(rt, cname, probe_image):
    _, cli = rt
    cmd = ("sh", "-c", "ip link add cockertest0 type bridge && ip -o link show cockertest0")
    refused = run(cli, cname, *cmd, check=False)
    assert refused.returncode != 0
    allowed = run(cli, cname, *cmd, opts=("--cap-add", "NET_ADMIN"))
    assert "cockertest0" in allowed.stdout


def test_cap_drop_and_bad_names(rt, cname, probe_image):
    _, cli = rt
    st = status_of(run(cli, cname, "cat", "/proc/self/status",
                       opts=("--cap-drop", "ALL", "--cap-add", "CHOWN")).stdout)
    assert st["CapEff"] == "0000000000000001"
    p = run(cli, cname, "true", opts=("--cap-add", "NET_ADMINS"), check=False)
    assert p.returncode != 0 and "NET_ADMINS" in p.stderr and "Traceback" not in p.stderr


def test_seccomp_profile_file_and_unconfined(rt, cname, probe_image, tmp_path):
    _, cli = rt
    prof = tmp_path / "p.json"
    prof.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", '
                    '"mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}')
    p = run(cli, cname, "sh", "-c", "mkdir /x 2>&1; grep Seccomp: /proc/self/status",
            opts=("--security-opt", f"seccomp={prof}"))
    assert "Permission denied" in p.stdout and "Seccomp:\t2" in p.stdout
    p = run(cli, cname, "grep", "Seccomp:", "/proc/self/status",
            opts=("--security-opt", "seccomp=unconfined"))
    assert p.stdout.split() == ["Seccomp:", "0"]
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    p = run(cli, cname, "true", opts=("--security-opt", f"seccomp={bad}"), check=False)
    assert p.returncode != 0 and "not valid JSON" in p.stderr and "Traceback" not in p.stderr
