"""The README's main job: `cocker demo` runs every step of the workflow for real, including
the SSH round trip, and leaves nothing behind."""

import os
import re
import socket
import subprocess

import pytest

from builder.demo.sshd import new_client, openssh_server


def _processes_under(path: str) -> list[str]:
    """Command lines of live processes that name something under path."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmd:
            out.append(cmd)
    return out


def _assert_nothing_left(stdout: str) -> None:
    """The demo's temp dir (named in the commands it echoes) is gone, and so is every
    server process that ran from it."""
    tmp = re.search(r"HOME=(/\S*/cocker-demo-[^/\s]+)/", stdout)
    assert tmp, stdout
    assert not os.path.exists(tmp.group(1))
    assert _processes_under(tmp.group(1)) == []


@pytest.mark.root
def test_demo_runs_end_to_end(home, cocker):
    p = cocker("--home", home, "demo", timeout=300)
    assert "demo finished: all steps passed" in p.stdout
    for step in ("image import", "container commit", "image build", "image push",
                 "image pull", "srepo-server --root"):
        assert step in p.stdout
    # the SSH round trip: OpenSSH (ssh://) and srepo-server's own door (srepo://)
    assert re.search(r"image push demo/busybox .*--repo ssh://root@127\.0\.0\.1:\d+/", p.stdout)
    assert re.search(r"image push demo/busybox .*--repo srepo://root@127\.0\.0\.1:\d+", p.stdout)
    assert "srepo-server --root" in p.stdout and "--ssh 127.0.0.1:" in p.stdout
    # bytes moved: the first push and the pull into an empty store carry the image, the
    # second push nothing
    m = re.search(r"push: ([\d.]+) (kB|MB) sent; second push: 0 B \(all blobs there\); "
                  r"pull: ([\d.]+) (kB|MB)", p.stdout)
    assert m, p.stdout
    assert float(m.group(3)) > 0
    assert "edited in a container" in p.stdout  # the pulled version booted
    # it cleans up after itself: no demo images or containers stay in the store, no server
    # process or temp dir outlives it
    assert "demo/" not in cocker("--home", home, "image", "ls").stdout
    assert "demo-edit" not in cocker("--home", home, "container", "ls", "--all").stdout
    _assert_nothing_left(p.stdout)


@pytest.mark.root
def test_demo_keep_keeps_the_images(home, cocker):
    p = cocker("--home", home, "demo", "--keep", timeout=300)
    listed = cocker("--home", home, "image", "ls").stdout
    assert "demo/busybox" in listed and "demo/app" in listed
    _assert_nothing_left(p.stdout)


@pytest.mark.root
def test_throwaway_sshd_stops_when_the_demo_fails(tmp_path):
    base = str(tmp_path / "cocker-demo-fail")
    os.makedirs(base)
    client = new_client(base)
    with pytest.raises(RuntimeError, match="a step failed"), \
            openssh_server(os.path.join(base, "sshd"), client, "/usr/bin:/bin") as port:
        # the server answers with the key the client trusts, through real OpenSSH
        r = subprocess.run(["ssh", "-p", str(port), "-i", client.key, "-o", "BatchMode=yes",
                            "-o", f"UserKnownHostsFile={client.known_hosts}",
                            "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1", "echo", "in"],
                           capture_output=True, text=True, timeout=30, env=client.env())
        assert r.stdout.strip() == "in", r.stderr
        raise RuntimeError("a step failed")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert _processes_under(base) == []
