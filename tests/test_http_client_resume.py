"""The HTTP client resumes (issue 13 item 5): a push killed with -9 continues from the offset
the registry acknowledged, a push or pull cut by a registry restart carries on, and tag
writes are compare-and-swap where the registry supports it. Transfers are cut for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from common.errors import Conflict
from registry.oci import digest as digestmod
from registry.oci import reference as refmod
from registry.repo.copy import copy
from registry.repo.layout import LayoutRepo
from registry.transports.http.repo import UPLOAD_CHUNK, HttpRepo
from tests.support.http_servers import TOKEN, SrepoHttp, make_image
from tests.support.slow_proxy import SlowProxy

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def door(tmp_path):
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path))
    try:
        yield srv
    finally:
        srv.stop()


def big_image(tmp_path, size: int) -> tuple[LayoutRepo, str, str]:
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    layer = os.urandom(size)
    d = make_image(src, "big/app", "1", extra_layers=[layer])
    big = max(json.loads(src.read_blob(d))["layers"], key=lambda x: x["size"])
    return src, d, big["digest"]


def session_bytes(srv: SrepoHttp) -> int:
    top = os.path.join(srv.root, "tmp", "http-uploads")
    sizes = [os.path.getsize(os.path.join(top, f)) for f in os.listdir(top)
             if not f.endswith(".json")] if os.path.isdir(top) else []
    return max(sizes, default=0)


PUSH_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from registry.oci import reference as refmod
    from registry.repo.copy import copy
    from registry.repo.layout import LayoutRepo
    from registry.transports.http.repo import HttpRepo

    class Slow(LayoutRepo):
        '''The source reads 1 MiB every 20 ms, so the test can kill the push half-way.'''
        def open_blob(self, digest, offset=0):
            f = super().open_blob(digest, offset)
            class R:
                def read(self, n=-1):
                    time.sleep(0.02)
                    return f.read(n)
                def close(self):
                    f.close()
                def __enter__(self):
                    return self
                def __exit__(self, *exc):
                    f.close()
            return R()

    src, url, token, resume = sys.argv[1:5]
    dst = HttpRepo(url, token=token, resume_dir=resume)
    copy(refmod.parse("big/app:1"), Slow(src), dst)
    print(json.dumps(dst.transferred))
""")


def test_a_push_killed_with_sigkill_resumes_where_the_registry_stands(door, tmp_path):
    size = 96 * MiB
    src, manifest, layer = big_image(tmp_path, size)
    script = tmp_path / "push.py"
    script.write_text(PUSH_SCRIPT)
    resume = str(tmp_path / "home" / "push-sessions")
    args = [sys.executable, str(script), src.root, door.url, TOKEN, resume]
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while session_bytes(door) < 3 * UPLOAD_CHUNK and time.monotonic() < deadline:
            assert p.poll() is None, p.stderr.read() if p.stderr else ""
            time.sleep(0.005)
    finally:
        p.kill()
        p.wait(10)
    held = session_bytes(door)
    assert held >= 3 * UPLOAD_CHUNK
    # The journal names the session (a kill during a save may leave a temporary file too).
    assert len([f for f in os.listdir(resume) if not f.startswith(".")]) == 1
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    sent = json.loads(again.stdout)["uploaded"]
    # Only what the registry did not have, give or take the chunk in flight at the kill.
    assert sent <= size - held + UPLOAD_CHUNK + MiB, (sent, held)
    repo = LayoutRepo(door.root)
    assert repo.has_blob(layer) and repo.get_ref("big/app", "1") == manifest
    assert repo.fsck() == []
    assert os.listdir(resume) == []  # forgotten once complete


class SlowSource(LayoutRepo):
    """Reads 1 MiB every 20 ms: the registry is restarted while the push is half-way."""

    def open_blob(self, digest, offset=0):
        f = super().open_blob(digest, offset)
        outer = self

        class Reader:
            def read(self, n=-1):
                time.sleep(outer.pause)
                return f.read(n)

            def close(self):
                f.close()

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Reader()

    pause = 0.02


def test_a_push_cut_by_a_registry_restart_continues(door, tmp_path):
    size = 64 * MiB
    src, manifest, layer = big_image(tmp_path, size)
    dst = HttpRepo(door.url, token=TOKEN, resume_dir=str(tmp_path / "resume"), retry_wait=60)
    errors: list[BaseException] = []

    def push() -> None:
        try:
            copy(refmod.parse("big/app:1"), SlowSource(src.root), dst)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=push)
    t.start()
    deadline = time.monotonic() + 60
    while session_bytes(door) < 2 * UPLOAD_CHUNK and time.monotonic() < deadline:
        time.sleep(0.005)
    door.kill9()
    time.sleep(0.5)
    door.start()
    t.join(300)
    assert not t.is_alive() and errors == []
    # The restart costs at most the chunk that was in flight.
    assert dst.transferred["uploaded"] <= size + 2 * UPLOAD_CHUNK
    repo = LayoutRepo(door.root)
    assert repo.get_ref("big/app", "1") == manifest and repo.fsck() == []


def test_a_registry_restart_in_the_middle_of_a_chunk_costs_only_what_it_lacks(door, tmp_path):
    """The registry dies while a PATCH is half-way through (it has kept what arrived): the
    client asks where the session stands and sends the rest of that chunk only."""
    size = 48 * MiB
    src, manifest, layer = big_image(tmp_path, size)
    proxy = SlowProxy(door.port, 8 * MiB)  # so the kill lands inside a chunk
    try:
        dst = HttpRepo(proxy.url, token=TOKEN, retry_wait=60)
        errors: list[BaseException] = []

        def push() -> None:
            try:
                copy(refmod.parse("big/app:1"), src, dst)
            except BaseException as e:  # reported by the assertion below
                errors.append(e)

        t = threading.Thread(target=push)
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            held = session_bytes(door)
            if UPLOAD_CHUNK + MiB < held < 2 * UPLOAD_CHUNK - MiB:
                break
            time.sleep(0.002)
        door.kill9()
        kept = session_bytes(door)
        assert UPLOAD_CHUNK < kept < 2 * UPLOAD_CHUNK  # a chunk cut in the middle
        time.sleep(0.5)
        door.start()
        t.join(300)
        assert not t.is_alive() and errors == [], errors
    finally:
        proxy.stop()
    # What the registry had kept was not sent again: less than a whole chunk more than once.
    assert dst.transferred["uploaded"] < size + UPLOAD_CHUNK
    repo = LayoutRepo(door.root)
    assert repo.get_ref("big/app", "1") == manifest and repo.fsck() == []


class SlowDestination(LayoutRepo):
    """Writes 1 MiB every 30 ms, so the registry can be restarted mid-download."""

    def upload(self, digest, size=None):
        w = super().upload(digest, size)
        real_write = w.write

        def write(data):
            time.sleep(0.03)
            real_write(data)

        w.write = write  # type: ignore[method-assign]
        return w


def test_a_pull_cut_by_a_registry_restart_continues_with_range(door, tmp_path):
    size = 64 * MiB
    src, manifest, layer = big_image(tmp_path, size)
    copy(refmod.parse("big/app:1"), src, HttpRepo(door.url, token=TOKEN))
    reader = HttpRepo(door.url, token=TOKEN, retry_wait=60)
    dst = SlowDestination(str(tmp_path / "pulled"), create=True)
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            copy(refmod.parse("big/app:1"), reader, dst)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    t = threading.Thread(target=pull)
    t.start()
    deadline = time.monotonic() + 60
    while reader.transferred["downloaded"] < 8 * MiB and time.monotonic() < deadline:
        time.sleep(0.005)
    door.kill9()
    time.sleep(0.5)
    door.start()
    t.join(300)
    assert not t.is_alive() and errors == [], errors
    assert dst.get_ref("big/app", "1") == manifest and dst.fsck() == []
    # Continued at the byte it got to: the big layer did not come twice.
    assert reader.transferred["download_resumes"] >= 1
    total = sum(src.blob_size(d) or 0 for d in src.all_blobs() if d != manifest)
    assert total <= reader.transferred["downloaded"] < total + MiB


def test_concurrent_pushes_of_different_content_to_one_tag_one_wins(door, tmp_path):
    src = LayoutRepo(str(tmp_path / "src"), create=True)
    digests = [make_image(src, f"race/{i}", "1") for i in range(6)]
    results: list[object] = []
    start = threading.Barrier(len(digests))

    def push(i: int) -> None:
        dst = HttpRepo(door.url, token=TOKEN)
        start.wait()
        try:
            copy(refmod.parse(f"race/{i}:1"), src, dst, dest_ref=refmod.parse("race/app:1"),
                 force=False)
            results.append(digests[i])
        except Conflict as e:
            results.append(e)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(digests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    winners = [r for r in results if isinstance(r, str)]
    assert len(results) == len(digests) and len(winners) == 1, results
    assert LayoutRepo(door.root).get_ref("race/app", "1") == winners[0]
    assert digestmod.is_valid(winners[0])


def test_cocker_image_push_killed_then_run_again_continues_the_same_session(door, store,
                                                                             tmp_path):
    """What a user does: `cocker image push --repo http://…`, killed half-way, run again."""
    layer = os.urandom(64 * MiB)
    d = make_image(store, "cli/big", "1", extra_layers=[layer])
    proxy = SlowProxy(door.port, 24 * MiB)  # so the push is still running when killed
    argv = [sys.executable, "-m", "cocker.main", "image", "push", "cli/big:1",
            "--repo", proxy.url]
    env = {**os.environ, "COCKER_REGISTRY_TOKEN": TOKEN}
    try:
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while session_bytes(door) < 3 * UPLOAD_CHUNK and time.monotonic() < deadline:
                assert p.poll() is None, p.stderr.read() if p.stderr else ""
                time.sleep(0.005)
        finally:
            p.kill()
            p.wait(10)
        top = os.path.join(door.root, "tmp", "http-uploads")
        (session,) = [f for f in os.listdir(top) if not f.endswith(".json")]
        held = os.path.getsize(os.path.join(top, session))
        assert os.listdir(store.paths.push_sessions)  # the store remembers the session
        with open(door.log) as f:
            before = len(f.readlines())
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
    finally:
        proxy.stop()
    assert LayoutRepo(door.root).get_ref("cli/big", "1") == d
    with open(door.log) as f:
        patches = [line for line in f.readlines()[before:] if '"PATCH ' in line]
    # The second run continued the first run's session, sending only what was missing.
    assert patches and all(session in line for line in patches)
    assert len(patches) <= (len(layer) - held) // UPLOAD_CHUNK + 2
    assert os.listdir(store.paths.push_sessions) == []
