"""runtime/process/{capabilities,seccomp}.py on their own: each case forks a child that confines
itself with the real kernel calls (bounding set, capset, prctl(PR_SET_SECCOMP)) and reports
what /proc/self/status and a few syscalls say. Nothing here touches host state: the probed
syscalls are refused, or harmless when they go through (EINVAL from a bogus clock id)."""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Callable

import pytest

from common.errors import UsageError
from common.home import Home
from runtime.process import capabilities as caps
from runtime.process import confinement, kernel_views, seccomp

pytestmark = pytest.mark.root

_libc = ctypes.CDLL(None, use_errno=True)
SYS_UNSHARE, SYS_CLONE3, SYS_KEYCTL, SYS_SOCKET, SYS_PERSONALITY = 272, 435, 250, 41, 135
SYS_CLOCK_SETTIME, SYS_MOUNT, SYS_BPF = 227, 165, 321
SYS_STATMOUNT, SYS_LISTMOUNT = 457, 458
CLONE_NEWUTS = 0x04000000
AF_INET, AF_VSOCK, SOCK_STREAM = 2, 40, 1


def syscall(nr: int, *args: int) -> int:
    """-errno, or the result (fds are closed)."""
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    if ret < 0:
        return -ctypes.get_errno()
    return int(ret)


def in_child(body: Callable[[], dict]) -> dict:
    """Run `body` in a forked child; its dict (or the error it raised) comes back as JSON."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = body()
        except BaseException as e:  # reported to the parent
            out = {"error": f"{type(e).__name__}: {e}"}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "error" not in result, result["error"]
    return result


def status() -> dict:
    with open("/proc/self/status") as f:
        pairs = (line.split(":", 1) for line in f)
        return {k: v.strip() for k, v in pairs if k.startswith(("Cap", "Seccomp", "NoNewPrivs"))}


def probes() -> dict:
    r = {"unshare_uts": syscall(SYS_UNSHARE, CLONE_NEWUTS),
         "clone3": syscall(SYS_CLONE3, 0, 0),
         "keyctl": syscall(SYS_KEYCTL, 0, 0),
         "vsock": syscall(SYS_SOCKET, AF_VSOCK, SOCK_STREAM, 0),
         "inet": syscall(SYS_SOCKET, AF_INET, SOCK_STREAM, 0),
         "personality_query": syscall(SYS_PERSONALITY, 0xFFFFFFFF),
         "personality_other": syscall(SYS_PERSONALITY, 0x0040000),
         # clock id 1000 does not exist: EINVAL when allowed, EPERM when refused; never sets
         "clock_settime": syscall(SYS_CLOCK_SETTIME, 1000, 0),
         "bpf": syscall(SYS_BPF, 0, 0, 0),
         # newer than Debian 12's libseccomp, allowed by the profile: EFAULT, not EPERM
         "statmount": syscall(SYS_STATMOUNT, 0, 0, 0, 0),
         "listmount": syscall(SYS_LISTMOUNT, 0, 0, 0, 0)}
    return r


@pytest.fixture
def filter_home(tmp_path) -> Home:
    return Home(str(tmp_path / "home"))


def confine(home: Home, cap_set: frozenset[str], *, uid: int = 0, nnp: bool = False,
            profile: str | None = None) -> Callable[[], dict]:
    conf = confinement.Confinement(cap_set, seccomp.filter_for(home, profile, cap_set), nnp)

    def body() -> dict:
        confinement.enter(conf, uid, uid, [])
        return {"status": status(), "probes": probes()}
    return body


def test_default_caps_mask_is_dockers():
    assert caps.format_mask(caps.to_mask(caps.DEFAULT)) == "00000000a80425fb"


def test_cap_names_as_docker_spells_them():
    assert caps.parse_name("NET_ADMIN") == "NET_ADMIN"
    assert caps.parse_name("cap_net_admin") == "NET_ADMIN"
    assert caps.parse_name("ALL") == "ALL"
    with pytest.raises(UsageError, match="unknown capability"):
        caps.parse_name("NET_ADMINS")


def test_cap_add_drop_arithmetic():
    assert caps.resolve(["NET_ADMIN"]) == caps.DEFAULT | {"NET_ADMIN"}
    assert caps.resolve(drop=["CAP_MKNOD", "net_raw"]) == caps.DEFAULT - {"MKNOD", "NET_RAW"}
    assert caps.resolve(["CHOWN"], ["ALL"]) == {"CHOWN"}
    assert caps.resolve(["ALL"], ["SYS_ADMIN"]) == caps.known() - {"SYS_ADMIN"}
    assert caps.resolve(["NET_ADMIN"], ["NET_ADMIN"]) == caps.DEFAULT | {"NET_ADMIN"}
    assert caps.resolve(privileged=True) == caps.known()


def test_default_confinement_in_a_child(filter_home):
    out = in_child(confine(filter_home, caps.DEFAULT))
    st, pr = out["status"], out["probes"]
    assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == "00000000a80425fb"
    assert st["CapInh"] == st["CapAmb"] == "0000000000000000"
    assert st["Seccomp"] == "2"
    assert st["NoNewPrivs"] == "0"              # off unless asked, as in docker
    assert pr["unshare_uts"] == -1              # EPERM: no new namespaces
    assert pr["clone3"] == -38                  # ENOSYS: libc falls back to clone
    assert pr["keyctl"] == -1
    assert pr["vsock"] == -1
    assert pr["inet"] >= 0
    assert pr["personality_query"] >= 0
    assert pr["personality_other"] == -1
    assert pr["clock_settime"] == -1
    assert pr["bpf"] == -1
    assert pr["statmount"] == pr["listmount"] == -14      # EFAULT: the kernel saw the call


def test_no_new_privs_when_asked(filter_home):
    st = in_child(confine(filter_home, caps.DEFAULT, nnp=True))["status"]
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert st["CapEff"] == "00000000a80425fb"


def test_non_root_user_has_no_capabilities(filter_home):
    st = in_child(confine(filter_home, caps.resolve(["NET_ADMIN"]), uid=1000))["status"]
    assert st["CapEff"] == st["CapPrm"] == st["CapInh"] == st["CapAmb"] == "0000000000000000"
    assert st["CapBnd"] == caps.format_mask(caps.to_mask(caps.DEFAULT | {"NET_ADMIN"}))


def test_added_capability_adds_its_syscalls_back(filter_home):
    pr = in_child(confine(filter_home, caps.resolve(["SYS_TIME", "SYS_ADMIN"])))["probes"]
    assert pr["clock_settime"] == -22           # EINVAL: past seccomp and the cap check
    assert pr["unshare_uts"] == 0               # the child's own UTS namespace: harmless
    assert pr["clone3"] == -22                  # with SYS_ADMIN clone3 is allowed (bad args)


def test_user_profile_file(tmp_path, filter_home):
    prof = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
                          "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    text = seccomp.read_profile_file(str(path))
    pr = in_child(confine(filter_home, caps.DEFAULT, profile=text))["probes"]
    assert pr["inet"] == -13                    # the profile's errno
    assert pr["keyctl"] != -1                   # the default profile is not in force


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('["a"]', "expected a JSON object"),
    ('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}', "names"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",'
     ' "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "index 0-5"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}', "architecture"),
])
def test_bad_profile_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(seccomp.ProfileError, match=message) as e:
        seccomp.read_profile_file(str(path))
    assert "\n" not in str(e.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(seccomp.ProfileError, match="No such file"):
        seccomp.read_profile_file(str(tmp_path / "absent.json"))


def test_compiled_filter_is_cached_per_caps(filter_home):
    a = seccomp.filter_for(filter_home, None, caps.DEFAULT)
    b = seccomp.filter_for(filter_home, None, caps.DEFAULT | {"SYS_ADMIN"})
    assert a != b
    cached = os.listdir(os.path.dirname(filter_home.seccomp_filter("x")))
    assert len(cached) == 2
    # a start reads the cache and nothing else: what is there is what it gets
    path = os.path.join(os.path.dirname(filter_home.seccomp_filter("x")), cached[0])
    with open(path, "rb") as f:
        first = f.read()
    marker = first[:8] * (len(first) // 8)
    with open(path, "wb") as f:
        f.write(marker)
    assert marker in (seccomp.filter_for(filter_home, None, caps.DEFAULT),
                      seccomp.filter_for(filter_home, None, caps.DEFAULT | {"SYS_ADMIN"}))


# kernel_views: masks and read-only paths in a private mount namespace, the devices cgroup
def _private_mount_ns() -> None:
    CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 16384, 1 << 18
    assert _libc.unshare(CLONE_NEWNS) == 0
    assert _libc.mount(None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None) == 0


def test_masked_and_readonly_paths():
    def body() -> dict:
        _private_mount_ns()          # the host's /proc is masked only in this child's namespace
        kernel_views.mask()
        kernel_views.make_readonly()
        out: dict = {}
        # /proc/kcore is absent from some kernels (this VM's): the masks of the others tell
        for name in ("/proc/keys", "/proc/timer_list", "/proc/interrupts"):
            with open(name, "rb") as f:
                out[name] = len(f.read(64))
        out["acpi"] = os.listdir("/proc/acpi") if os.path.isdir("/proc/acpi") else []
        try:
            with open("/proc/sys/kernel/core_pattern", "w") as f:
                f.write("|/bin/false")
            out["core_pattern"] = "written"
        except OSError as e:
            out["core_pattern"] = e.errno
        try:
            os.open("/proc/sysrq-trigger", os.O_WRONLY)
            out["sysrq"] = "opened"
        except OSError as e:
            out["sysrq"] = e.errno
        return out
    out = in_child(body)
    assert out["/proc/keys"] == out["/proc/timer_list"] == out["/proc/interrupts"] == 0
    assert out["acpi"] == []
    assert out["core_pattern"] == 30            # EROFS
    assert out["sysrq"] == (30 if os.path.exists("/proc/sysrq-trigger") else 2)


def test_mask_refuses_a_dev_null_that_is_not_the_null_device(tmp_path):
    (tmp_path / "dev").mkdir()
    os.symlink("/etc/hostname", tmp_path / "dev" / "null")
    with pytest.raises(OSError):
        kernel_views.mask(str(tmp_path), ["/x"])


def test_devices_cgroup_denies_a_host_disk(tmp_path):
    cg = f"/sys/fs/cgroup/devices/cocker-test-{os.getpid()}"
    if not os.path.isdir("/sys/fs/cgroup/devices"):
        pytest.fail("no v1 devices controller on this machine")
    root_dev = os.stat("/").st_dev
    disk = tmp_path / "disk"
    os.mknod(disk, 0o600 | 0o060000, root_dev)       # block device of the host's /
    null = tmp_path / "null"
    os.mknod(null, 0o666 | 0o020000, os.makedev(1, 3))
    kmsg = tmp_path / "kmsg"            # the host can open this one (the disk it cannot, here)
    os.mknod(kmsg, 0o600 | 0o020000, os.makedev(1, 11))
    os.close(os.open(kmsg, os.O_RDONLY))
    os.mkdir(cg)
    try:
        kernel_views.restrict_devices_v1(cg)

        def body() -> dict:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
            out = {}
            for name in ("disk", "kmsg", "null"):
                try:
                    os.close(os.open(tmp_path / name, os.O_RDONLY))
                    out[name] = "opened"
                except OSError as e:
                    out[name] = e.errno
            return out
        out = in_child(body)
        assert out == {"disk": 1, "kmsg": 1, "null": "opened"}
    finally:
        os.rmdir(cg)


def test_prepare_privileged_and_unconfined(filter_home):
    priv = confinement.prepare(filter_home, privileged=True)
    assert priv.caps == caps.known() and priv.seccomp_bpf is None
    unconf = confinement.prepare(filter_home, seccomp_profile=seccomp.UNCONFINED, cap_add=["NET_ADMIN"])
    assert unconf.seccomp_bpf is None and "NET_ADMIN" in unconf.caps
    st = in_child(lambda: (confinement.enter(unconf), {"status": status()})[1])["status"]
    assert st["Seccomp"] == "0"
    assert st["CapEff"] == caps.format_mask(caps.to_mask(caps.DEFAULT | {"NET_ADMIN"}))
