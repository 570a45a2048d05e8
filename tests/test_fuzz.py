"""Fuzzing and a hostile corpus: whatever a stranger sends, the answer is a project error.

Property-based tests (hypothesis) drive the reference parser, the version order, the
manifest/config parsers, the smart protocol's framing and the tar reader with generated
input; a corpus of broken and hostile layers (bombs, depth, odd ownership, link tricks,
duplicate entries, truncation at every block boundary) goes through unpack, import and
pull. For each: a CockerError subclass or success, never another exception; the store
keeps its refs and fsck stays clean; nothing outside the store or the unpack root changes.

The CI budget is a few dozen examples per property (the whole module runs in well under
a minute); COCKER_FUZZ_LONG=1 runs a hundred times more for a developer.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder import importers
from common.errors import CockerError
from registry.layer import limits
from registry.layer import tar_codec as layer_tar
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo import copy as copymod
from registry.repo import image as imagemod
from registry.repo.layout import LayoutRepo
from registry.transports.remotes import open_repo
from registry.wire import framing
from runtime.fs import layers as layersmod
from tests.support.codec import entry, listing, make_tar, snapshot
from tests.support.http_servers import SrepoHttp
from tests.support.sshd import sshd
from tests.test_ssh_repo import mode_url

LONG = os.environ.get("COCKER_FUZZ_LONG", "") not in ("", "0")
EXAMPLES = 4000 if LONG else 40
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def project_error_or_value(fn, *args):
    """Call fn; a CockerError is a fine answer, any other exception fails the test."""
    try:
        return fn(*args)
    except CockerError:
        return None


# ---------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------

@FUZZ
@given(st.text(max_size=300))
def test_reference_parser(text):
    r = project_error_or_value(refmod.parse, text)
    if r is not None:
        assert refmod.parse(str(r)) == r  # what parses, prints back to itself


@FUZZ
@given(st.lists(st.text(alphabet="0123456789.-+_abcrcRC~", max_size=20), max_size=12))
def test_version_order_is_total_and_stable(versions):
    once = refmod.sort_versions(versions)
    assert refmod.sort_versions(once) == once
    assert sorted(once) == sorted(versions)
    keys = [refmod.version_key(v) for v in once]
    assert all(a <= b for a, b in zip(keys, keys[1:], strict=False))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids,
                                                              max_size=5),
    max_leaves=30)
DIGEST = st.from_regex(r"\Asha256:[0-9a-f]{64}\Z") | st.text(max_size=80)
DESCRIPTOR = st.fixed_dictionaries({
    "mediaType": st.sampled_from([oci.LAYER_ZSTD, oci.LAYER_GZIP, oci.CONFIG, "x/y",
                                  "not a type", ""]) | st.text(max_size=30),
    "digest": DIGEST, "size": st.integers(-5, 2**64) | st.text(max_size=5)})
MANIFEST = st.fixed_dictionaries({
    "schemaVersion": st.just(2) | JSON,
    "mediaType": st.sampled_from([oci.MANIFEST, oci.INDEX, oci.DOCKER_MANIFEST]) | JSON,
    "config": DESCRIPTOR | JSON,
    "layers": st.lists(DESCRIPTOR | JSON, max_size=6) | JSON,
}, optional={"manifests": st.lists(DESCRIPTOR | JSON, max_size=4) | JSON})


@FUZZ
@given(MANIFEST | JSON)
def test_manifest_parser_on_structured_input(doc):
    data = json.dumps(doc).encode()
    m = project_error_or_value(oci.parse_manifest, data)
    if m is not None:
        project_error_or_value(oci.check_image, m)
        for d in oci.referenced_blobs(m):
            assert digestmod.is_valid(d)


@FUZZ
@given(st.binary(max_size=400) | st.builds(lambda n: b"[" * n + b"]" * n,
                                           st.integers(0, 200_000)))
def test_manifest_parser_on_raw_bytes(data):
    project_error_or_value(oci.parse_manifest, data)
    project_error_or_value(oci.parse_json, data, "image config")


@FUZZ
@given(JSON, st.integers(0, 5))
def test_config_diff_ids(doc, n):
    project_error_or_value(oci.check_diff_ids, doc, n)
    project_error_or_value(oci.check_diff_ids, (doc or {}).get("diff_ids")
                           if isinstance(doc, dict) else doc, n)


@FUZZ
@given(st.binary(max_size=300) | st.builds(lambda n: b"[" * n + b"]" * n + b"\n",
                                           st.integers(0, 100_000)))
def test_smart_protocol_framing(data):
    line = project_error_or_value(framing.read_line, io.BytesIO(data), framing.MAX_REQUEST_LINE)
    if line is not None:
        frame = project_error_or_value(framing.parse_frame, line)
        if frame is not None:
            try:
                framing.raise_error(frame)
            except CockerError:
                pass
    project_error_or_value(framing.read_exact, io.BytesIO(data), 64)


# ---------------------------------------------------------------------------------------
# The tar reader on generated archives
# ---------------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "a/b", "a/b/c", "../x", "/abs", "./a", "a/../../x", "d/",
                         ".wh.a", ".wh..wh..opq", "a/.wh.b", "", ".", "\u00e9t\u00e9",
                         "x" * 300, "/".join(["d"] * 600)])
KINDS = st.sampled_from(["file", "dir", "symlink", "hardlink", "char", "block", "fifo"])
ENTRY = st.builds(
    lambda name, kind, link, data, mode, owner: (name, kind, link, data, mode, owner),
    NAMES, KINDS, NAMES | st.sampled_from(["/etc/passwd", "../../..", "a"]),
    st.binary(max_size=64), st.integers(0, 0o7777),
    st.sampled_from([{}, {"uid": "-1"}, {"gid": str(1 << 40)}, {"uid": "65534"},
                     {"SCHILY.xattr.trusted.overlay.redirect": "/x"},
                     {"SCHILY.xattr.user.x": "y"}]))


def _tar_of(specs) -> bytes:
    ents = []
    for name, kind, link, data, mode, pax in specs:
        ents.append(entry(name, kind, data=data, link=link, mode=mode, major=1, minor=3,
                          pax=pax))
    return make_tar(ents)


class Arena:
    """An unpack root next to a sentinel; `check` proves nothing outside the root moved."""

    def __init__(self) -> None:
        self.base = tempfile.mkdtemp(prefix="fuzz.")
        os.makedirs(os.path.join(self.base, "sentinel"))
        with open(os.path.join(self.base, "sentinel", "file"), "w") as f:
            f.write("precious")
        self.before = snapshot(os.path.join(self.base, "sentinel"))
        self.n = 0

    def unpack(self, blob: bytes, **kw) -> None:
        self.n += 1
        dest = os.path.join(self.base, f"root{self.n}")
        project_error_or_value(lambda: layer_tar.unpack(io.BytesIO(blob), dest, **kw))
        assert snapshot(os.path.join(self.base, "sentinel")) == self.before
        assert set(os.listdir(self.base)) <= {"sentinel", f"root{self.n}"}
        # One root at a time: walking thousands of old ones made the long mode quadratic.
        try:
            shutil.rmtree(dest, ignore_errors=True)
        except RecursionError:  # the standard rmtree recurses; generated trees can be deep
            subprocess.run(["rm", "-rf", dest], check=True)

    def close(self) -> None:
        os.system(f"rm -rf '{self.base}'")  # deep trees: rm(1), not the recursive rmtree


@pytest.fixture
def arena():
    a = Arena()
    yield a
    a.close()


@FUZZ
@given(st.lists(ENTRY, max_size=8), st.sampled_from(["overlay", "apply"]))
def test_unpack_generated_archives(arena, specs, whiteouts):
    arena.unpack(_tar_of(specs), whiteouts=whiteouts)


@FUZZ
@given(st.lists(ENTRY, min_size=1, max_size=5), st.data())
def test_unpack_mutated_archives(arena, specs, data):
    blob = bytearray(_tar_of(specs))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    arena.unpack(bytes(blob))
    arena.unpack(zstandard.ZstdCompressor().compress(bytes(blob))[:data.draw(
        st.integers(0, len(blob)))])


# ---------------------------------------------------------------------------------------
# A hostile corpus through unpack, import and pull
# ---------------------------------------------------------------------------------------

def _nested(depth: int) -> list:
    return [entry("/".join(["d"] * i), "dir", mode=0o755) for i in range(1, depth + 1)]


def _owner(field: str, value: int):
    return entry("f", data=b"x", pax={field: str(value)})


def hostile_corpus() -> dict[str, bytes]:
    """Named layers, each broken or hostile in one way."""
    good = make_tar([entry("etc", "dir", mode=0o755), entry("etc/passwd", data=b"root:x:0:0\n"),
                     entry("big", data=bytes(3000))])
    c: dict[str, bytes] = {
        "zstd-bomb": zstandard.ZstdCompressor().compress(
            make_tar([entry("zeros", data=bytes(40 << 20))])),
        "declared-size": make_tar([entry("f", data=b"")])[:512].replace(
            b"00000000000", b"77777777777", 1),
        "sparse": make_tar([entry("s", pax={"GNU.sparse.map": "0,0",
                                           "GNU.sparse.size": str(1 << 45)})]),
        "deep": make_tar(_nested(700)),
        "long-name": make_tar([entry("n" * 1000, data=b"x")]),
        "huge-uid": make_tar([_owner("uid", 1 << 40)]),
        "negative-gid": make_tar([_owner("gid", -7)]),
        "dotdot": make_tar([entry("../../etc/x", data=b"x")]),
        "absolute": make_tar([entry("/etc/x", data=b"x")]),
        "symlink-escape": make_tar([entry("l", "symlink", link="/"),
                                    entry("l/etc/x", data=b"x")]),
        "hardlink-escape": make_tar([entry("h", "hardlink", link="../../etc/passwd")]),
        "hardlink-missing": make_tar([entry("h", "hardlink", link="nothing")]),
        "device": make_tar([entry("dev/mem", "char", major=1, minor=1)]),
        "dir-then-file": make_tar([entry("x/a", "dir"), entry("x/a/b", data=b"1"),
                                   entry("x/a", data=b"2")]),
        "duplicate-files": make_tar([entry("f", data=b"1"), entry("f", data=b"2")]),
        "many-entries": make_tar([entry(f"f{i}") for i in range(300)]),
        "pax-bomb": make_tar([entry("a", data=b"x", pax={"comment": "y" * (2 << 20)})]),
        "not-a-tar": b"\x28\xb5\x2f\xfd" + bytes(100),
    }
    for cut in range(0, len(good), 512):
        c[f"truncated-{cut}"] = good[:cut]
        c[f"truncated-zstd-{cut}"] = zstandard.ZstdCompressor().compress(good)[:cut // 8]
    return c


CORPUS = hostile_corpus()


@pytest.fixture
def small_limits(monkeypatch):
    monkeypatch.setenv(limits.RATIO_GRACE, "4M")
    monkeypatch.setenv(limits.MAX_ENTRIES, "200")
    monkeypatch.delenv(limits.ALLOW_RATIO, raising=False)


def test_corpus_through_unpack(arena, small_limits):
    for blob in CORPUS.values():
        for mode in ("overlay", "apply"):
            arena.unpack(blob, whiteouts=mode)


def _store_state(store) -> tuple:
    return sorted((r.name, r.version, r.digest) for r in store.list_refs()), store.fsck()


def test_corpus_through_import(store, tmp_path, small_limits):
    """Each layer as a rootfs tarball and inside an OCI layout: refused or imported, and
    a refusal leaves the refs as they were, fsck clean, no scratch behind."""
    found = []
    for name, blob in CORPUS.items():
        before = _store_state(store)
        path = tmp_path / f"{name}.tar"
        path.write_bytes(blob)
        try:
            importers.import_image(store, str(path), f"corpus:{len(found)}", fmt="rootfs-tar")
        except CockerError:
            assert _store_state(store) == before, name
        found.append(name)
        assert set(listing(store.tmp_dir)) <= {"uploads", "leases"}, name
    assert store.fsck() == []


def _claimed_diff_id(blob: bytes) -> str:
    """What an attacker's config would claim: the real diff_id when there is one."""
    try:
        return layer_tar.layer_diff_id(io.BytesIO(blob), limits.LayerLimits(max_ratio=0))[0]
    except CockerError:
        return digestmod.of_bytes(blob)


def _plant(repo: LayoutRepo, name: str, manifest: dict) -> None:
    """A ref to a manifest the repository's own checks would refuse, written behind its
    back (as a hostile server would serve it)."""
    data = json.dumps(manifest).encode()
    d = digestmod.of_bytes(data)
    with open(os.path.join(repo.root, "blobs", "sha256", digestmod.hex_of(d)), "wb") as f:
        f.write(data)
    path = repo.ref_path(name, "1")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(d + "\n")


def hostile_remote(root: str) -> tuple[LayoutRepo, list[str]]:
    """A directory repository serving each corpus layer as image `<its name>:1`, plus manifests
    that lie (a wrong layer size, a layer listed twice) and an artifact with a layer type no
    runtime knows."""
    repo = LayoutRepo(root, create=True)
    names = []
    manifests = []
    for name, blob in CORPUS.items():
        d = digestmod.of_bytes(blob)
        repo.put_blob_bytes(d, blob)
        cfg = oci.canonical_json(oci.new_config([_claimed_diff_id(blob)]))
        repo.put_blob_bytes(digestmod.of_bytes(cfg), cfg)
        m = oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_ZSTD, d, len(blob))])
        data = json.dumps(m).encode()
        repo.put_blob_bytes(digestmod.of_bytes(data), data)
        repo.put_ref(name, "1", digestmod.of_bytes(data))
        names.append(name)
        manifests.append(m)
    m = json.loads(json.dumps(manifests[0]))
    m["layers"][0]["size"] -= 1
    _plant(repo, "wrong-size", m)
    m = json.loads(json.dumps(manifests[1]))
    m["layers"].append(m["layers"][0])
    _plant(repo, "layer-twice", m)
    # An artifact (not an image config) may carry any layer type: copied, never run.
    m = json.loads(json.dumps(manifests[2]))
    m["config"]["mediaType"] = "application/vnd.example.evil.config"
    m["layers"][0]["mediaType"] = "application/x-evil"
    _plant(repo, "unknown-type", m)
    # The liars first: once the honest image's blob is stored, a lie about it is moot.
    return repo, ["wrong-size", "layer-twice", "unknown-type"] + names


def pull_and_prepare(remote, store, names: list[str]) -> dict[str, str]:
    """Pull each image, then materialise its layers as `run` does: a project error at
    worst, the store's refs unchanged by a refused pull, no layer tree left by a refused
    unpack. Returns what happened to each (for the report)."""
    outcome = {}
    for name in names:
        before = _store_state(store)
        try:
            copymod.copy(refmod.parse(f"{name}:1"), remote, store)
        except CockerError as e:
            assert _store_state(store) == before, name
            outcome[name] = f"pull refused: {type(e).__name__}"
            continue
        img = imagemod.load(store, f"{name}:1")
        trees_before = set(os.listdir(store.layers_dir)) if os.path.isdir(
            store.layers_dir) else set()
        try:
            layersmod.ensure_layers(store, img)
            outcome[name] = "ran"
        except CockerError as e:
            now = set(os.listdir(store.layers_dir))
            assert {n for n in now - trees_before if not n.startswith(".lock-")} == set(), name
            outcome[name] = f"run refused: {type(e).__name__}"
    assert store.fsck() == []
    return outcome


def test_corpus_through_pull_from_a_directory(store, tmp_path, small_limits):
    remote, names = hostile_remote(str(tmp_path / "remote"))
    outcome = pull_and_prepare(remote, store, names)
    assert outcome["wrong-size"].startswith("pull refused")
    assert outcome["layer-twice"].startswith("pull refused")
    assert outcome["unknown-type"] == "run refused: CorruptImage"
    assert outcome["zstd-bomb"] == "run refused: UnsafeArchive"
    assert outcome["duplicate-files"] == "ran"


@pytest.mark.parametrize("mode", ["sftp", "smart"])
def test_corpus_through_pull_over_ssh(store, tmp_path, small_limits, sshd, mode):
    _, names = hostile_remote(str(tmp_path / "remote"))
    kw = dict(identity=sshd.client_key, known_hosts=sshd.known_hosts, config_path=None)
    with open_repo(mode_url(sshd, str(tmp_path / "remote"), mode), **kw) as remote:
        outcome = pull_and_prepare(remote, store, names)
    assert outcome["wrong-size"].startswith("pull refused")
    assert outcome["layer-twice"].startswith("pull refused")
    assert outcome["zstd-bomb"] == "run refused: UnsafeArchive"


def test_corpus_is_what_it_says():
    assert len(CORPUS) >= 30
    with pytest.raises(tarfile.TarError), tarfile.open(fileobj=io.BytesIO(CORPUS["not-a-tar"])):
        pass


# ---------------------------------------------------------------------------------------
# The HTTP door's request handling
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def door(tmp_path_factory):
    work = tmp_path_factory.mktemp("door")
    root = str(work / "repo")
    LayoutRepo(root, create=True)
    server = SrepoHttp(root, str(work))
    yield server
    server.stop()


SEGMENT = st.sampled_from(["v2", "_catalog", "blobs", "manifests", "uploads", "tags", "list",
                           "referrers", "app", "a" * 300, "..", "%2e%2e", "sha256:" + "0" * 64,
                           "sha256:xyz", "", "%00", "\u00e9"]) | st.text(max_size=12)
HEADER = st.tuples(st.sampled_from(["Content-Type", "Content-Length", "Authorization", "Range",
                                    "Content-Range", "Transfer-Encoding", "X-Junk", "Accept"]),
                   st.sampled_from(["", "-1", "99999999999999999999", "bytes=0-", "Bearer x",
                                    "Basic !!", "chunked", oci.MANIFEST, "0-10", "a" * 2000])
                   | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                             max_size=40))


def _request_bytes(method: str, segments: list[str], headers: list, body: bytes) -> bytes:
    path = "/" + "/".join(segments)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not any(k == "Content-Length" for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the door may answer and close before reading a body it refuses
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


@FUZZ
@given(st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "BREW"]),
       st.lists(SEGMENT, min_size=1, max_size=7), st.lists(HEADER, max_size=4),
       st.binary(max_size=200) | st.builds(lambda n: b"[" * n + b"]" * n,
                                           st.integers(0, 50_000)))
def test_http_door_request_handling(door, method, segments, headers, body):
    """Any request: a well-formed answer below 500 (or 501 for a method the door does not
    implement), never a crash, and the door keeps serving."""
    reply = _exchange(door.port, _request_bytes(method, segments, headers, body))
    if reply:
        status = int(reply.split(b" ", 2)[1])
        assert status < 500 or status == 501, reply[:300]
    assert door.proc.poll() is None
