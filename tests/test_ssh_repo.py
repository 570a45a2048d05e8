"""SSH repositories against a real OpenSSH sshd on 127.0.0.1: SFTP mode and smart mode
(srepo-server --stdio over the exec channel), two COCKER_HOMEs as two machines."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import AuthError, CockerError, TransportError
from registry.oci import reference
from registry.repo.layout import LayoutRepo
from registry.repo.store import Store
from tests.conftest import run_cocker
from tests.support.slow_proxy import SlowProxy
from tests.support.sshd import make_test_image, scripts_dir, sshd, sshd_factory, tar_layer

MODES = ["sftp", "smart"]


def mode_url(sshd, path: str, mode: str) -> str:
    url = sshd.url(path) + f"?mode={mode}"
    if mode == "smart":  # this interpreter's server, whatever the remote shell's PATH says
        url += "&command=" + os.path.join(scripts_dir(), "srepo-server")
    return url


class Machines:
    """Two stores (two machines) and the CLI run against either, through the test sshd."""

    def __init__(self, tmp_path, sshd):
        self.sshd = sshd
        self.a = str(tmp_path / "machine-a")
        self.b = str(tmp_path / "machine-b")
        self.env = sshd.client_env()
        self.env["COCKER_QUIET"] = "1"

    def run(self, home: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cocker("--home", home, *args, check=check, env=self.env)

    def json(self, home: str, *args: str):
        return json.loads(self.run(home, *args, "--json").stdout)


@pytest.fixture
def machines(tmp_path, sshd):
    return Machines(tmp_path, sshd)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def _base_layers(seed: bytes = b"") -> list[bytes]:
    return [tar_layer({"big.bin": os.urandom(1 << 20) + seed}),
            tar_layer({"etc/app.conf": b"x=1\n" + seed}, gzip_it=True)]


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_between_two_machines(machines, tmp_path, mode):
    url = mode_url(machines.sshd, str(tmp_path / "remote"), mode)
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    p = machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, check=False)
    assert "--init" in one_line_error(p)  # not a repo yet: refused, says how
    res = machines.json(machines.a, "image", "push", "app:1.0", "--repo", url, "--init")
    assert res[0]["blobs_sent"] == 4 and res[0]["published"]
    remote = LayoutRepo(str(tmp_path / "remote"))
    assert remote.fsck() == [] and [str(r) for r in remote.list_refs()] == ["app:1.0"]
    index = json.loads(Path(tmp_path / "remote" / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"]
            for m in index["manifests"]] == ["app:1.0"]
    # Delete locally on machine A, pull on both.
    machines.run(machines.a, "image", "rm", "app:1.0")
    for home in (machines.a, machines.b):
        res = machines.json(home, "image", "pull", "app", "--repo", url)  # bare: newest
        assert res[0]["reference"] == "app:1.0"
        info = json.loads(machines.run(home, "image", "inspect", "app:1.0", "--json").stdout)
        assert info["digest"] == res[0]["digest"]
        assert "ok:" in machines.run(home, "image", "fsck").stdout
    rows = machines.json(machines.b, "image", "search", "--repo", url)
    assert [(r["name"], r["version"], r["digest"]) for r in rows] == [
        ("app", "1.0", res[0]["digest"])]
    assert rows[0]["size"] > 1 << 20 and rows[0]["created"].startswith("2026-01-01")


@pytest.mark.parametrize("mode", ["sftp"])  # transport-independent: the copy routine decides
def test_next_version_sends_only_new_layer_config_manifest(machines, tmp_path, mode):
    url = mode_url(machines.sshd, str(tmp_path / "remote"), mode)
    st = Store(machines.a)
    base = _base_layers()
    make_test_image(st, "app", "1.0", base)
    machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init")
    top = tar_layer({"new.txt": b"version 2\n"})
    make_test_image(st, "app", "1.1", base + [top])
    res = machines.json(machines.a, "image", "push", "app:1.1", "--repo", url)
    assert res[0]["blobs_sent"] == 3  # new layer, config, manifest
    assert res[0]["blobs_skipped"] == 2
    assert res[0]["bytes_sent"] < 64 << 10
    # A repeated push sends nothing at all.
    t = time.monotonic()
    res = machines.json(machines.a, "image", "push", "app:1.1", "--repo", url)
    assert res[0]["blobs_sent"] == 0 and res[0]["bytes_sent"] == 0 and not res[0]["published"]
    assert time.monotonic() - t < 10
    # Pulling 1.1 after 1.0 fetches only the difference too.
    machines.run(machines.b, "image", "pull", "app:1.0", "--repo", url)
    res = machines.json(machines.b, "image", "pull", "app:1.1", "--repo", url)
    assert res[0]["blobs_sent"] == 3 and res[0]["blobs_skipped"] == 2  # layer, config, manifest


def test_all_versions_in_one_session(machines, tmp_path):
    url = mode_url(machines.sshd, str(tmp_path / "remote"), "sftp")
    st = Store(machines.a)
    base = _base_layers()
    # More versions than sshd's default MaxSessions (10): sessions must be reused.
    for i in range(12):
        make_test_image(st, "svc", f"1.{i}", base + [tar_layer({"v": str(i).encode()})])
    res = machines.json(machines.a, "image", "push", "svc", "--all-versions", "--repo", url,
                        "--init")
    assert [r["reference"] for r in res] == [f"svc:1.{i}" for i in range(12)]
    res = machines.json(machines.b, "image", "pull", "svc", "--all-versions", "--repo", url)
    assert len(res) == 12
    assert len(Store(machines.b).list_refs("svc")) == 12


def test_host_key_mismatch_refused(machines, tmp_path, sshd):
    other = os.path.join(str(tmp_path), "other_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other], check=True)
    with open(other + ".pub") as f:
        kind, b64 = f.read().split()[:2]
    with open(sshd.known_hosts, "w") as f:
        f.write(f"{sshd.hostport} {kind} {b64}\n")
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    url = sshd.url(str(tmp_path / "remote"))
    for extra in ([], ["--accept-new-host-key"]):  # accept-new never overrides a mismatch
        p = machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init",
                         *extra, check=False)
        assert "HOST KEY MISMATCH" in one_line_error(p)
    assert not os.path.exists(tmp_path / "remote")
    from registry.transports.ssh import connect as ssh
    with pytest.raises(AuthError):
        ssh.connect(sshd.host, sshd.port, "root", identity=sshd.client_key,
                    known_hosts=sshd.known_hosts, config_path=None)


def test_unknown_host_needs_explicit_opt_in(machines, tmp_path, sshd):
    os.unlink(sshd.known_hosts)
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    url = mode_url(sshd, str(tmp_path / "remote"), "sftp")
    p = machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init", check=False)
    assert "--accept-new-host-key" in one_line_error(p)
    assert not os.path.exists(sshd.known_hosts)
    p = machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init",
                     "--accept-new-host-key")
    assert "permanently added host key" in p.stderr
    with open(sshd.known_hosts) as f:
        assert f.read() == sshd.host_key_line()
    # Now known: no flag needed, no notice.
    p = machines.run(machines.b, "image", "pull", "app:1.0", "--repo", url)
    assert "permanently added" not in p.stderr


def test_hashed_known_hosts_entry_accepted(machines, tmp_path, sshd):
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", sshd.known_hosts], check=True,
                   capture_output=True)
    with open(sshd.known_hosts) as f:
        assert f.read().startswith("|1|")
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    machines.run(machines.a, "image", "push", "app:1.0", "--repo",
                 mode_url(sshd, str(tmp_path / "remote"), "sftp"), "--init")


class _CutStream:
    """A source blob stream that breaks after `limit` bytes, like a dropped connection."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise TransportError("connection cut (test)")
        d = self.f.read(min(n, self.left) if n and n > 0 else self.left)
        self.left -= len(d)
        return d

    def close(self) -> None:
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.mark.parametrize("mode", MODES)
def test_cut_transfer_resumes_and_fsck_is_clean(tmp_path, sshd, mode):
    from registry.repo.copy import copy
    from registry.transports.remotes import open_repo
    url = mode_url(sshd, str(tmp_path / "remote"), mode)
    store = Store(str(tmp_path / "home"))
    big = tar_layer({"blob": os.urandom(12 << 20)})
    make_test_image(store, "app", "1.0", [big])
    kw = dict(identity=sshd.client_key, known_hosts=sshd.known_hosts, config_path=None)

    class Cutting(Store):
        def open_blob(self, digest, offset=0):
            f = super().open_blob(digest, offset)
            return _CutStream(f, 5 << 20) if self.blob_size(digest) > 1 << 20 else f

    with open_repo(url, init=True, **kw) as repo:
        with pytest.raises(CockerError):
            copy(store.resolve(reference.parse("app:1.0")), Cutting(store.home), repo, jobs=1)
        assert repo.list_refs() == []  # nothing published
    partials = os.listdir(tmp_path / "remote" / "tmp" / "uploads")
    assert partials and os.path.getsize(tmp_path / "remote" / "tmp" / "uploads" / partials[0]) > 0
    if mode == "sftp":
        os.utime(tmp_path / "remote" / "tmp" / "uploads" / partials[0],
                 (time.time() - 60, time.time() - 60))  # the cut writer is long gone
    with open_repo(url, **kw) as repo:
        res = copy(store.resolve(reference.parse("app:1.0")), store, repo, jobs=1)
    assert res.bytes_sent < len(big) - (4 << 20)  # resumed, not restarted
    remote = LayoutRepo(str(tmp_path / "remote"))
    assert remote.fsck() == []
    assert [str(r) for r in remote.list_refs()] == ["app:1.0"]


def test_killed_push_then_retry_resumes(machines, tmp_path, request):
    # through a rate-limited proxy: the push is still running when it is killed, however
    # fast the machine (a bare loopback push of 96 MiB can end before the first check)
    proxy = SlowProxy(machines.sshd.port, 24 << 20)
    request.addfinalizer(proxy.stop)
    url = (f"ssh://{machines.sshd.user}@127.0.0.1:{proxy.port}{tmp_path / 'remote'}"
           "?mode=sftp")
    st = Store(machines.a)
    big = tar_layer({"blob": os.urandom(96 << 20)})
    make_test_image(st, "app", "1.0", [big])
    uploads = tmp_path / "remote" / "tmp" / "uploads"
    proc = subprocess.Popen([sys.executable, "-m", "cocker.main", "--home", machines.a, "image",
                             "push", "app:1.0", "--repo", url, "--init",
                             "--accept-new-host-key"], env=machines.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        killed = False
        while time.monotonic() < deadline and proc.poll() is None:
            sizes = [f.stat().st_size for f in uploads.glob("*.partial")] if uploads.exists() else []
            if sizes and max(sizes) > 16 << 20:
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
            time.sleep(0.005)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed, "the push ended before 16 MiB had arrived"
    assert LayoutRepo(str(tmp_path / "remote")).list_refs() == []
    res = machines.json(machines.a, "image", "push", "app:1.0", "--repo", url)
    assert res[0]["published"] and res[0]["bytes_sent"] < len(big) - (8 << 20)
    remote = LayoutRepo(str(tmp_path / "remote"))
    assert remote.fsck() == []
    assert not list(uploads.glob("*.partial"))


@pytest.mark.parametrize("mode", MODES)
def test_four_clients_push_versions_concurrently(machines, tmp_path, mode):
    url = mode_url(machines.sshd, str(tmp_path / "remote"), mode)
    base = _base_layers()
    homes = []
    for i in range(4):
        h = str(tmp_path / f"client{i}")
        make_test_image(Store(h), "app", f"2.{i}", base + [tar_layer({"v": os.urandom(4096)})])
        homes.append(h)
    # Create the repo first so all four race on blobs and refs, not on mkdir.
    make_test_image(Store(machines.b), "seed", "0", [tar_layer({"s": b"s"})])
    machines.run(machines.b, "image", "push", "seed:0", "--repo", url, "--init")
    procs = [subprocess.Popen([sys.executable, "-m", "cocker.main", "--home", h, "image", "push",
                               f"app:2.{i}", "--repo", url], env=machines.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, h in enumerate(homes)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    remote = LayoutRepo(str(tmp_path / "remote"))
    assert sorted(str(r) for r in remote.list_refs("app")) == [f"app:2.{i}" for i in range(4)]
    assert remote.fsck() == []
    index = json.loads(Path(tmp_path / "remote" / "index.json").read_text())
    assert len(index["manifests"]) == 5
    for i in range(4):
        machines.run(machines.a, "image", "pull", f"app:2.{i}", "--repo", url)
    assert "ok:" in machines.run(machines.a, "image", "fsck").stdout


@pytest.mark.parametrize("mode", MODES)
def test_corrupted_remote_blob_detected_on_pull(machines, tmp_path, mode):
    url = mode_url(machines.sshd, str(tmp_path / "remote"), mode)
    img = make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init")
    layer = img.layers[0]["digest"].split(":")[1]
    path = tmp_path / "remote" / "blobs" / "sha256" / layer
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    p = machines.run(machines.b, "image", "pull", "app:1.0", "--repo", url, check=False)
    assert layer[:12] in one_line_error(p)
    st = Store(machines.b)
    assert st.list_refs() == [] and st.fsck() == []


def test_ssh_config_alias_honoured(machines, tmp_path, sshd):
    # Key and known_hosts NOT in the default places: only the config names them.
    key = os.path.join(str(tmp_path), "alias_key")
    os.rename(sshd.client_key, key)
    kh = os.path.join(str(tmp_path), "alias_known_hosts")
    os.rename(sshd.known_hosts, kh)
    sshd.write_ssh_config(f"""Host myrepo
    HostName 127.0.0.1
    Port {sshd.port}
    User root
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {kh}
""")
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    url = f"ssh://myrepo{tmp_path}/remote?mode=sftp"
    machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init")
    machines.run(machines.b, "repo", "add", "office", f"myrepo:{tmp_path}/remote")
    machines.run(machines.b, "image", "pull", "app:1.0")  # the default repo
    assert len(Store(machines.b).list_refs()) == 1


def test_proxyjump(machines, tmp_path, sshd, sshd_factory):
    jump = sshd_factory()
    with open(jump.dir + "/authorized_keys", "w") as f:
        f.write(Path(sshd.client_key + ".pub").read_text())
    with open(sshd.known_hosts, "a") as f:
        f.write(jump.host_key_line())
    sshd.write_ssh_config(f"""Host target
    HostName 127.0.0.1
    Port {sshd.port}
    User root
    ProxyJump root@127.0.0.1:{jump.port}
""")
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    machines.run(machines.a, "image", "push", "app:1.0", "--repo",
                 f"ssh://target{tmp_path}/remote?mode=sftp", "--init")
    assert LayoutRepo(str(tmp_path / "remote")).fsck() == []


def test_bad_input_one_line_errors(machines, tmp_path, sshd):
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    os.makedirs(tmp_path / "notrepo")
    cases = [
        (["image", "push", "app:1.0", "--repo", f"ssh://root@127.0.0.1:1{tmp_path}/r"],
         "connection refused"),
        (["image", "push", "app:1.0", "--repo", "ssh://root@no-such-host.invalid/r"],
         "cannot resolve"),
        (["image", "push", "app:1.0", "--repo", sshd.url(str(tmp_path / "notrepo"))],
         "not a cocker/OCI repository"),
        (["image", "pull", "nothere:1.0", "--repo", sshd.url(str(tmp_path / "notrepo"))],
         "not a cocker/OCI repository"),
        (["image", "push", "app:9.9", "--repo", sshd.url(str(tmp_path / "notrepo"))],
         "app:9.9 not found"),
        (["image", "push", "app:1.0", "--repo", "nosuchrepo"], "no repo named"),
        (["image", "push", "app:1.0"], "no repository given"),
        (["image", "push", "app:1.0", "--repo", sshd.url("/r"), "-i", "/nonexistent/key"],
         "identity file"),
    ]
    for args, expect in cases:
        p = machines.run(machines.a, *args, check=False)
        assert expect in one_line_error(p), (args, p.stderr)
    url = mode_url(sshd, str(tmp_path / "remote"), "sftp")
    machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init")
    p = machines.run(machines.b, "image", "pull", "app:2.0", "--repo", url, check=False)
    assert "app:2.0 not found" in one_line_error(p)
    assert Store(machines.b).list_refs() == []
    # Refuses to move an existing remote version to other content without --force.
    make_test_image(Store(machines.b), "app", "1.0", _base_layers(b"other"))
    p = machines.run(machines.b, "image", "push", "app:1.0", "--repo", url, check=False)
    assert "--force" in one_line_error(p)
    machines.run(machines.b, "image", "push", "app:1.0", "--repo", url, "--force")


def test_legacy_cockerimage_repo(machines, tmp_path, sshd):
    legacy_dir = tmp_path / "legacyhome"
    legacy_dir.mkdir()
    (legacy_dir / "calvin=tools:1.0.cockerimage").write_bytes(
        tar_layer({"bin/hello": b"#!/bin/sh\necho hi\n"}, gzip_it=True))
    (legacy_dir / "calvin=tools:1.1.cockerimage").write_bytes(
        tar_layer({"bin/hello": b"#!/bin/sh\necho hi 1.1\n"}, gzip_it=True))
    (legacy_dir / "unversioned.cockerimage").write_bytes(tar_layer({"a": b"a"}, gzip_it=True))
    (legacy_dir / "notes.txt").write_text("not an image")
    url = sshd.url(str(legacy_dir))
    rows = machines.json(machines.a, "image", "search", "--repo", url, "--legacy")
    assert [(r["name"], r["version"]) for r in rows] == [
        ("calvin/tools", "1.0"), ("calvin/tools", "1.1"), ("unversioned", "_")]
    # Auto-detected without --legacy too (the directory has no oci-layout).
    rows2 = machines.json(machines.a, "image", "search", "tools", "--repo", url)
    assert len(rows2) == 2
    res = machines.json(machines.a, "image", "pull", "calvin=tools", "--repo", url, "--legacy")
    assert res[0]["reference"] == "calvin/tools:1.1"
    info = json.loads(machines.run(machines.a, "image", "inspect", "calvin/tools:1.1",
                                   "--json").stdout)
    assert len(info["layers"]) == 1
    assert "ok:" in machines.run(machines.a, "image", "fsck").stdout
    # And back: --legacy push writes a .cockerimage (the one gzip layer, as stored).
    machines.run(machines.a, "image", "tag", "calvin/tools:1.1", "tools:2.0")
    machines.run(machines.a, "image", "push", "tools:2.0", "--repo", url, "--legacy")
    assert (legacy_dir / "tools:2.0.cockerimage").read_bytes() == (
        legacy_dir / "calvin=tools:1.1.cockerimage").read_bytes()
    p = machines.run(machines.a, "image", "push", "tools:2.0", "--repo", url, "--legacy",
                     check=False)
    assert "already exists" in one_line_error(p)


def test_c_cocker_images_both_ways(machines, tmp_path, sshd, busybox_rootfs):
    """An image as C cocker's scripts make one (its layer directory, /dev nodes and all, in a
    gzip tar named author=name:version.cockerimage in the srepo user's home) comes in by pull
    and by import under one name, boots, and goes back out where C cocker finds it."""
    rlayer = busybox_rootfs
    os.makedirs(os.path.join(rlayer, "dev"), exist_ok=True)
    for node, minor in (("null", 3), ("zero", 5), ("random", 8)):
        os.mknod(os.path.join(rlayer, "dev", node), 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    chome = tmp_path / "c-srepo-home"
    chome.mkdir()
    cimg = chome / "calvin=busybox:1.0.0.cockerimage"
    subprocess.run(["tar", "-czf", str(cimg), *sorted(os.listdir(rlayer))], cwd=rlayer, check=True)
    url = sshd.url(str(chome))

    p = machines.run(machines.a, "image", "pull", "calvin=busybox:1.0.0", "--repo", url, "--legacy")
    assert "calvin/busybox:1.0.0" in p.stdout
    notices = [line for line in p.stderr.splitlines() if "notice" in line]
    assert len(notices) == 1 and "3 device node(s)" in notices[0], p.stderr
    p = machines.run(machines.b, "image", "import", str(cimg))        # the same file, locally
    assert p.stdout.startswith("calvin/busybox:1.0.0 ") and "3 device node(s)" in p.stderr
    p = machines.run(machines.a, "container", "run", "--rm", "--net", "none",
                     "calvin/busybox:1.0.0", "sh", "-c", "echo x > /dev/null && echo booted")
    assert p.stdout == "booted\n"

    # and back: cocker's author/name is C cocker's author=name, on push and on export
    machines.run(machines.a, "image", "tag", "calvin/busybox:1.0.0", "calvin/busybox:1.0.1")
    machines.run(machines.a, "image", "push", "calvin/busybox:1.0.1", "--repo", url, "--legacy")
    pushed = chome / "calvin=busybox:1.0.1.cockerimage"
    crlayer = tmp_path / "c-rlayer"                  # C cocker's spull: tar xzf into rlayer/
    crlayer.mkdir()
    subprocess.run(["tar", "-xzf", str(pushed), "-C", str(crlayer)], check=True)
    assert (crlayer / "bin" / "busybox").is_file() and (crlayer / "etc" / "motd").is_file()
    out = tmp_path / "exported"
    out.mkdir()
    machines.run(machines.a, "image", "export", "calvin/busybox:1.0.1", str(out),
                 "--format", "cockerimage")
    assert os.listdir(out) == ["calvin=busybox:1.0.1.cockerimage"]
    rows = machines.json(machines.a, "image", "search", "--repo", url, "--legacy")
    assert [(r["name"], r["version"]) for r in rows] == [("calvin/busybox", "1.0.0"),
                                                         ("calvin/busybox", "1.0.1")]


def test_pulled_image_boots(machines, tmp_path, busybox_rootfs):
    """The round trip ends in a running container on the second machine."""
    import gzip
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for entry in sorted(os.listdir(busybox_rootfs)):
            tf.add(os.path.join(busybox_rootfs, entry), arcname=entry)
    make_test_image(Store(machines.a), "bb", "1.0", [gzip.compress(buf.getvalue(), 1)])
    url = mode_url(machines.sshd, str(tmp_path / "remote"), "sftp")
    machines.run(machines.a, "image", "push", "bb:1.0", "--repo", url, "--init")
    machines.run(machines.b, "image", "pull", "bb", "--repo", url)
    p = machines.run(machines.b, "container", "run", "--rm", "--net", "none", "bb:1.0",
                     "/bin/echo", "booted", check=False)
    assert p.returncode == 0 and "booted" in p.stdout, p.stderr


def test_sftp_lock_waits_for_holder_and_breaks_a_dead_one(tmp_path, sshd, monkeypatch):
    from common.errors import LockBusy
    from registry.repo.copy import copy
    from registry.transports.remotes import open_repo
    from registry.transports.ssh import sftp_repo
    store = Store(str(tmp_path / "home"))
    make_test_image(store, "app", "1.0", [tar_layer({"a": b"a"})])
    kw = dict(identity=sshd.client_key, known_hosts=sshd.known_hosts, config_path=None)
    url = mode_url(sshd, str(tmp_path / "remote"), "sftp")
    with open_repo(url, init=True, **kw) as repo:
        lock = tmp_path / "remote" / "refs" / ".lock"
        lock.mkdir()
        (lock / "owner").write_text("otherhost 999 1.0 deadbeef")
        monkeypatch.setattr(sftp_repo, "STALE_LOCK", 60.0)
        with pytest.raises(LockBusy):
            with repo.lock(timeout=0.5):
                pass
        monkeypatch.setattr(sftp_repo, "STALE_LOCK", 0.3)  # the holder died: broken after this
        copy(store.resolve(reference.parse("app:1.0")), store, repo)
    assert not lock.exists()
    assert [str(r) for r in LayoutRepo(str(tmp_path / "remote")).list_refs()] == ["app:1.0"]


@pytest.mark.parametrize("mode", MODES)
def test_full_remote_disk_one_line_and_remote_unchanged(machines, tmp_path, mode):
    url = mode_url(machines.sshd, str(tmp_path / "small"), mode)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(small)], check=True)
    try:
        st = Store(machines.a)
        make_test_image(st, "tiny", "1.0", [tar_layer({"a": b"a"})])
        machines.run(machines.a, "image", "push", "tiny:1.0", "--repo", url, "--init")
        make_test_image(st, "big", "1.0", [tar_layer({"b": os.urandom(8 << 20)})])
        p = machines.run(machines.a, "image", "push", "big:1.0", "--repo", url, check=False)
        line = one_line_error(p)
        assert "disk" in line or "space" in line, line
        remote = LayoutRepo(str(small))
        assert [str(r) for r in remote.list_refs()] == ["tiny:1.0"] and remote.fsck() == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_dash_i_key_and_config_accept_new(machines, tmp_path, sshd):
    key = os.path.join(str(tmp_path), "elsewhere_key")
    os.rename(sshd.client_key, key)
    make_test_image(Store(machines.a), "app", "1.0", _base_layers())
    url = mode_url(sshd, str(tmp_path / "remote"), "sftp")
    p = machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init", check=False)
    assert "authentication refused" in one_line_error(p)
    machines.run(machines.a, "image", "push", "app:1.0", "--repo", url, "--init", "-i", key)
    # StrictHostKeyChecking accept-new in ~/.ssh/config is OpenSSH's opt-in, honoured too.
    os.unlink(sshd.known_hosts)
    sshd.write_ssh_config(f"Host 127.0.0.1\n    IdentityFile {key}\n"
                          "    StrictHostKeyChecking accept-new\n")
    p = machines.run(machines.b, "image", "pull", "app:1.0", "--repo", url)
    assert "permanently added host key" in p.stderr
    with open(sshd.known_hosts) as f:
        assert f.read() == sshd.host_key_line()
