"""runtime/process/userns.py on its own: subordinate id pools and slices (on private copies of
/etc/subuid and /etc/subgid), and a real user namespace with idmapped layer mounts under an
overlay, joined after pivot_root, as the container's first process does it."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from common.errors import RuntimeFailure
from common.home import Home
from runtime import syscalls as sc
from runtime.process import confinement, userns
from tests.support.runtime import cgroup_dirs, cname, rt, rt_home

pytestmark = pytest.mark.root


@pytest.fixture
def subids(tmp_path) -> tuple[str, str]:
    uid, gid = tmp_path / "subuid", tmp_path / "subgid"
    uid.write_text("alice:100000:65536\n")
    gid.write_text("alice:100000:65536\nbob:165536:65536")
    return str(uid), str(gid)


def test_pool_is_added_after_every_range_handed_out(subids):
    uids, gids = userns.ensure_pool(*subids)
    assert uids == gids == userns.IdRange(231072, userns.POOL)
    with open(subids[1]) as f:
        assert f.read() == f"alice:100000:65536\nbob:165536:65536\ncocker:231072:{userns.POOL}\n"
    assert userns.ensure_pool(*subids) == (uids, gids)        # found, not added twice


def test_existing_entry_is_used(tmp_path):
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text("cocker:500000:131072\n")
    uids, gids = userns.ensure_pool(str(tmp_path / "subuid"), str(tmp_path / "subgid"))
    assert uids == gids == userns.IdRange(500000, 131072)


def made(home: Home, *names: str) -> Home:
    """The containers' directories: create makes one before it allocates its slice."""
    for name in names:
        os.makedirs(home.container(name))
    return home


def test_slices_first_fit_recorded_and_released(tmp_path, subids):
    home = made(Home(str(tmp_path / "home")), "a", "b", "c")
    a = userns.allocate(home, "a", subuid=subids[0], subgid=subids[1])
    b = userns.allocate(home, "b", subuid=subids[0], subgid=subids[1])
    assert (a.uid_start, b.uid_start) == (231072, 231072 + userns.SLICE)
    assert userns.allocate(home, "a", subuid=subids[0], subgid=subids[1]) == a   # recorded
    userns.release(home, "a")
    c = userns.allocate(home, "c", subuid=subids[0], subgid=subids[1])
    assert c.uid_start == a.uid_start                                          # reused
    assert oct(os.stat(home.userns_allocations).st_mode & 0o777) == "0o600"


def test_slice_of_a_vanished_container_is_free_again(tmp_path, subids):
    home = made(Home(str(tmp_path / "home")), "a")
    a = userns.allocate(home, "a", subuid=subids[0], subgid=subids[1])
    os.rmdir(home.container("a"))          # deleted by its monitor after `run -d --rm`
    made(home, "b")
    assert userns.allocate(home, "b", subuid=subids[0], subgid=subids[1]) == a


def test_pool_exhausted_is_a_clear_error(tmp_path, subids):
    home = made(Home(str(tmp_path / "home")), "a", "b")
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text("cocker:300000:70000\n")
    userns.allocate(home, "a", subuid=subids[0], subgid=subids[1])
    with pytest.raises(RuntimeFailure, match="no 65536 free ids"):
        userns.allocate(home, "b", subuid=subids[0], subgid=subids[1])


def test_old_kernel_is_refused():
    with pytest.raises(RuntimeFailure, match=r"Linux 5\.19 or newer.*5\.10\.0-28-amd64"):
        userns.check_kernel("5.10.0-28-amd64")
    userns.check_kernel("6.1.0")


def test_overlay_sources(tmp_path):
    layer = tmp_path / "layers" / "abc"
    layer.mkdir(parents=True)
    cdir = tmp_path / "containers" / "c"
    (cdir / "L").mkdir(parents=True)
    os.symlink(layer, cdir / "L" / "0")
    assert userns.overlay_sources(str(cdir), "L/0:../../layers/abc") == [str(layer), str(cdir)]


def test_mapped_root_over_shared_idmapped_layer(tmp_path, subids, busybox_rootfs):
    """Container root is host uid N inside a user namespace; the layer stays owned by 0 on disk
    (shared with unmapped containers); what root writes lands as 0 in the upper dir."""
    userns.check_kernel()
    home = made(Home(str(tmp_path / "home")), "c")
    idmap = userns.allocate(home, "c", subuid=subids[0], subgid=subids[1])
    cdir = tmp_path / "c"
    for d in ("upper", "work", "rootfs"):
        (cdir / d).mkdir(parents=True)
    conf = confinement.prepare(home)
    ufd = userns.make_userns(idmap)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = sc.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(go_w)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            sc.unshare(sc.CLONE_NEWNS)
            sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
            lowerdir = os.path.relpath(busybox_rootfs, cdir)
            userns.idmap_overlay_sources(str(cdir), lowerdir, ufd)
            os.chdir(cdir)
            with userns.as_mapped_root(idmap):
                sc.mount("overlay", "rootfs", "overlay", 0,
                         f"lowerdir={lowerdir},upperdir=upper,workdir=work")
            os.chdir(cdir / "rootfs")
            sc.pivot_root(".", ".")
            sc.umount2(".", sc.MNT_DETACH)
            os.chdir("/")
            userns.join(ufd)
            confinement.enter(conf)
            os.write(ready_w, b"r")
            os.read(go_r, 1)
            os.execv("/bin/sh", ["sh", "-c", "id -u; touch /made-by-root; stat -c %u /bin/busybox"])
        except BaseException as e:  # reported through the output pipe
            os.write(2, f"child: {e}\n".encode())
        finally:
            os._exit(1)
    os.close(ready_w)
    os.close(go_r)
    os.close(out_w)
    os.close(ufd)
    try:
        assert os.read(ready_r, 1) == b"r", os.read(out_r, 4096).decode()
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        host_uids = status["Uid"].split()
        os.write(go_w, b"g")
        _, code = os.waitpid(pid, 0)
        output = os.read(out_r, 4096).decode().split()
    finally:
        for fd in (ready_r, go_w, out_r):
            os.close(fd)
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert host_uids == [str(idmap.uid_start)] * 4       # the host sees the mapped uid
    assert output[:2] == ["0", "0"], output                # inside: root, and busybox owned by root
    assert os.WEXITSTATUS(code) == 0
    assert os.lstat(cdir / "upper" / "made-by-root").st_uid == 0
    assert os.stat(os.path.join(busybox_rootfs, "bin", "busybox")).st_uid == 0
    # nothing of it stays mounted on the host
    assert not subprocess.run(["grep", "-q", str(cdir), "/proc/self/mountinfo"]).returncode == 0


def test_cli_userns_auto_maps_root_to_unprivileged_host_ids(rt, rt_home, cname):
    _, cli = rt
    cli("container", "run", "-d", "--name", cname, "--net", "none", "--userns", "auto", "busybox:1.0",
        "sh", "-c", "id -u > /tmp/uid; touch /made-by-root; exec sleep 60")
    try:
        inside = cli("container", "exec", cname, "cat", "/tmp/uid").stdout.split()
        assert inside == ["0"]
        shown = json.loads(cli("container", "inspect", "--json", cname).stdout)["security"]
        assert shown["userns"]["mode"] == "auto" and shown["userns"]["size"] == userns.SLICE
        deadline = time.monotonic() + 10
        uids: set[str] = set()
        while not uids and time.monotonic() < deadline:
            for d in cgroup_dirs(cname):
                for task in ("cgroup.procs", "tasks"):
                    try:
                        with open(os.path.join(d, task)) as f:
                            pids = f.read().split()
                    except OSError:
                        continue
                    for pid in pids:
                        try:
                            with open(f"/proc/{pid}/status") as f:
                                line = next(x for x in f if x.startswith("Uid:"))
                        except (OSError, StopIteration):
                            continue
                        uids.add(line.split()[1])
            time.sleep(0.05)
        assert uids and "0" not in uids, uids                 # the host sees the mapped uid
        assert all(int(u) >= 100000 for u in uids), uids
        # what root made inside is owned by 0 on disk: a commit packs the ids it always did
        upper = os.path.join(Home(rt_home["COCKER_HOME"]).container(cname), "upper")
        assert os.lstat(os.path.join(upper, "made-by-root")).st_uid == 0
    finally:
        cli("container", "rm", "-f", cname, check=False)
    with open(Home(rt_home["COCKER_HOME"]).userns_allocations) as f:
        assert cname not in json.load(f)                      # rm gave the slice back


def test_brocker_json_takes_userns(tmp_path):
    from runtime.brocker.files import container_spec
    spec = container_spec({"image": "busybox:1.0", "userns": "auto"}, what="test").spec
    assert spec.userns == "auto"


def test_cli_userns_auto_with_volume_and_bridge(rt, cname, tmp_path):
    """Mount points made in the idmapped rootfs (a volume's, /etc/hosts on a bridge network)
    are made as container root: host uid 0 does not exist there (was EOVERFLOW)."""
    _, cli = rt
    (tmp_path / "f").write_text("from the host\n")
    os.chmod(tmp_path, 0o755)      # host root's files are "other" to container root (65534)
    p = cli("container", "run", "--rm", "--name", cname, "--userns", "auto",
            "-v", f"{tmp_path}:/vol:ro", "busybox:1.0", "sh", "-c",
            "cat /vol/f; grep -c localhost /etc/hosts; id -u; touch /made && echo made")
    assert p.stdout.split("\n")[0] == "from the host"
    assert p.stdout.split()[-2:] == ["0", "made"]


def test_cli_cp_into_a_running_userns_container(rt, cname, tmp_path):
    """cp writes through the container's idmapped tree: as container root's host ids (host
    uid 0 cannot own a file there: EOVERFLOW), so the file is root's inside and 0 on disk."""
    _, cli = rt
    src = tmp_path / "put"
    src.write_text("put by cp\n")
    cli("container", "run", "-d", "--name", cname, "--net", "none", "--userns", "auto",
        "busybox:1.0", "sleep", "60")
    try:
        cli("container", "cp", str(src), f"{cname}:/root/")
        out = cli("container", "exec", cname, "stat", "-c", "%u %n", "/root/put").stdout.split()
        assert out == ["0", "/root/put"]
    finally:
        cli("container", "rm", "-f", cname, check=False)
