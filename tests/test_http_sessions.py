"""Upload sessions of the HTTP door belong to the credential that opened them, expire with
their files, and are capped per credential (issue 13 item 5, issue 14 item 4)."""

from __future__ import annotations

import os
import time

import pytest

from registry.oci import digest as digestmod
from tests.support.http_calls import call, conn, error_code, error_message
from tests.support.http_servers import TOKEN, SrepoHttp

OTHER = "test-token-other-writer-0123"


def uploads_dir(srv: SrepoHttp) -> str:
    return os.path.join(srv.root, "tmp", "http-uploads")


def session_files(srv: SrepoHttp) -> list[str]:
    return sorted(os.listdir(uploads_dir(srv)))


def open_fds_under(pid: int, path: str) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(path):
            out.append(target)
    return out


def door_with(tmp_path, ttl: float):
    srv = SrepoHttp(str(tmp_path / "repo"), str(tmp_path), token_lines=[f"{OTHER} all"],
                    extra=["--upload-ttl", str(ttl), "--max-uploads-per-user", "3",
                           "--max-upload-bytes-per-user", "100000"])
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def door(tmp_path):
    yield from door_with(tmp_path, 3)


@pytest.fixture
def slow_door(tmp_path):
    yield from door_with(tmp_path, 3600)


def start_upload(c, name: str, token: str = TOKEN) -> str:
    r, body = call(c, "POST", f"/v2/{name}/blobs/uploads/", token=token)
    assert r.status == 202, body
    return r.getheader("Location")


def test_a_session_is_invisible_to_another_credential_even_after_a_restart(slow_door):
    door = slow_door
    c = conn(door)
    data = os.urandom(20_000)
    d = digestmod.of_bytes(data)
    loc = start_upload(c, "team/app")
    r, _ = call(c, "PATCH", loc, data[:10_000], {"Content-Range": "0-9999"})
    assert r.status == 202
    for _ in range(2):
        for method, body, extra in [("GET", None, ""), ("PATCH", data[10_000:], ""),
                                    ("PUT", data[10_000:], f"?digest={d}"),
                                    ("DELETE", None, "")]:
            r, answer = call(conn(door), method, loc + extra, body, token=OTHER)
            assert r.status == 404, (method, answer)
            assert error_code(answer) == "BLOB_UPLOAD_UNKNOWN"
        r, _ = call(conn(door), "GET", loc)
        assert r.status == 204 and r.getheader("Range") == "0-9999"
        door.kill9()  # the owner is on disk with the session, not only in memory
        door.start()
    r, _ = call(conn(door), "PUT", f"{loc}?digest={d}", data[10_000:],
                {"Content-Range": "10000-19999"})
    assert r.status == 201
    r, body = call(conn(door), "GET", f"/v2/team/app/blobs/{d}")
    assert body == data


def test_idle_sessions_expire_with_their_files_and_descriptors(door):
    c = conn(door)
    t0 = time.monotonic()
    locs = [start_upload(c, "exp") for _ in range(3)]
    for loc in locs:
        r, _ = call(c, "PATCH", loc, b"x" * 1000)
        assert r.status == 202
    files, fds = session_files(door), open_fds_under(door.proc.pid, uploads_dir(door))
    if time.monotonic() - t0 < 2:  # well inside the 3 s TTL (a loaded machine may be slower)
        assert len(files) == 6  # data + owner record each
        assert len(fds) == 3
    deadline = time.monotonic() + 20
    while session_files(door) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_files(door) == []
    assert open_fds_under(door.proc.pid, uploads_dir(door)) == []
    r, body = call(conn(door), "GET", locs[0])
    assert r.status == 404 and error_code(body) == "BLOB_UPLOAD_UNKNOWN"
    # The slots they held are free again.
    for _ in range(3):
        start_upload(conn(door), "exp")


def test_sessions_left_by_a_previous_run_expire_at_start(door):
    loc = start_upload(conn(door), "left")
    r, _ = call(conn(door), "PATCH", loc, b"y" * 500)
    assert r.status == 202
    door.kill9()
    old = time.time() - 3600
    for fn in session_files(door):
        os.utime(os.path.join(uploads_dir(door), fn), (old, old))
    door.start()
    assert session_files(door) == []


def test_caps_per_credential(slow_door):
    door = slow_door
    c = conn(door)
    for _ in range(3):
        start_upload(c, "cap")
    r, body = call(c, "POST", "/v2/cap/blobs/uploads/")
    assert r.status == 429 and error_code(body) == "TOOMANYREQUESTS"
    assert "at most 3" in error_message(body)
    # Another credential has its own allowance...
    loc = start_upload(c, "cap", token=OTHER)
    # ...and its own byte budget: 100000 bytes in unfinished uploads.
    r, _ = call(c, "PATCH", loc, b"z" * 60_000, token=OTHER)
    assert r.status == 202
    r, body = call(conn(door), "PATCH", loc, b"z" * 60_000, token=OTHER)
    assert r.status == 413 and "at most 100000" in error_message(body)
    r, _ = call(conn(door), "GET", loc, token=OTHER)
    assert r.getheader("Range") == "0-59999"  # nothing of the refused chunk was kept
    # A monolithic upload counts too, and a finished one gives its bytes back.
    big = os.urandom(50_000)
    r, body = call(conn(door), "POST", f"/v2/cap/blobs/uploads/?digest={digestmod.of_bytes(big)}",
                   big, token=OTHER)
    assert r.status == 413, body
    r, _ = call(conn(door), "DELETE", loc, token=OTHER)
    assert r.status == 204
    r, _ = call(conn(door), "POST", f"/v2/cap/blobs/uploads/?digest={digestmod.of_bytes(big)}",
                big, token=OTHER)
    assert r.status == 201
