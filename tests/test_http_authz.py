"""Authorisation by credential on srepo-server's HTTP door (issue 14 item 4), blob DELETE
(issue 13 item 7) and compare-and-swap tag writes (issue 13's "two pushes of different
content"): a blob is served only through a name the caller may read AND that links it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from common.errors import NotFound
from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.oci import reference as refmod
from registry.repo.copy import copy
from registry.repo.layout import LayoutRepo
from registry.transports.smart.client import SmartRepo
from tests.support.http_calls import call, conn, error_code, error_message, push_blob
from tests.support.http_servers import TOKEN, SrepoHttp, make_image

TEAM_RW = "token-team-rw-0123456789"
TEAM_RO = "token-team-ro-0123456789"
OTHER_RW = "token-other-rw-012345678"


@pytest.fixture(scope="module")
def door(tmp_path_factory):
    work = tmp_path_factory.mktemp("authz")
    srv = SrepoHttp(str(work / "repo"), str(work), anonymous_read=False,
                    token_lines=[f"{TEAM_RW} read,write team/*", f"{TEAM_RO} read team/*",
                                 f"{OTHER_RW} read,write other/*"])
    try:
        yield srv
    finally:
        srv.stop()


def push_image(c, name: str, tag: str, layer: bytes, token: str = TOKEN) -> tuple[str, str]:
    """Upload a config and one layer under `name`, tag a manifest; (manifest, layer) digests."""
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag,
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    push_blob(c, name, cfg, token=token)
    ld = push_blob(c, name, layer, token=token)
    m = oci.canonical_json(oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_GZIP, layer)]))
    r, body = call(c, "PUT", f"/v2/{name}/manifests/{tag}", m, {"Content-Type": oci.MANIFEST},
                   token=token)
    assert r.status == 201, body
    return digestmod.of_bytes(m), ld


def test_a_blob_is_served_only_through_a_readable_name_that_links_it(door):
    c = conn(door)
    secret = b"team secret layer " + os.urandom(16)
    md, ld = push_image(c, "team/app", "1", secret, token=TEAM_RW)
    # Through its own name, for a reader of that name.
    r, body = call(c, "GET", f"/v2/team/app/blobs/{ld}", token=TEAM_RO)
    assert r.status == 200 and body == secret
    # Another name, though the caller may read it and the pool has the bytes: unknown.
    for token in (OTHER_RW, TEAM_RO, TOKEN):
        for method in ("GET", "HEAD"):
            r, body = call(c, method, f"/v2/other/x/blobs/{ld}", token=token)
            assert r.status in (403, 404), (token, method, body)
    r, body = call(c, "GET", f"/v2/team/elsewhere/blobs/{ld}", token=TEAM_RO)
    assert r.status == 404 and error_code(body) == "BLOB_UNKNOWN"
    # The manifest by digest, likewise.
    r, _ = call(c, "GET", f"/v2/team/elsewhere/manifests/{md}", token=TEAM_RO)
    assert r.status == 404
    r, _ = call(c, "GET", f"/v2/team/app/manifests/{md}", token=TEAM_RO)
    assert r.status == 200
    # Its own name, but a caller who may not read it: refused, with the reason.
    r, body = call(c, "GET", f"/v2/team/app/blobs/{ld}", token=OTHER_RW)
    assert r.status == 403 and error_code(body) == "DENIED"


def test_images_pushed_over_ssh_are_served_through_their_names_only(door):
    """Blobs written straight into the layout (SSH, SFTP, smart pushes) have no door link:
    the names whose manifests reach them are what links them."""
    repo = LayoutRepo(door.root)
    md = make_image(repo, "team/ssh", "1", extra_layers=[os.urandom(1000)])
    layer = json.loads(repo.read_blob(md))["layers"][1]["digest"]
    c = conn(door)
    r, _ = call(c, "GET", f"/v2/team/ssh/blobs/{layer}", token=TEAM_RO)
    assert r.status == 200
    r, _ = call(c, "GET", f"/v2/team/app/blobs/{layer}", token=TEAM_RO)
    assert r.status == 404
    # A new tag elsewhere that reaches it links it there too, at once.
    repo.put_ref("team/later", "1", md)
    r, _ = call(c, "GET", f"/v2/team/later/blobs/{layer}", token=TEAM_RO)
    assert r.status == 200


def test_cross_mount_only_between_readable_names_that_link_the_blob(door):
    c = conn(door)
    _, ld = push_image(c, "team/mnt", "1", b"mountable " + os.urandom(8), token=TEAM_RW)
    # From a name the caller may not read: an ordinary upload session instead (202).
    r, _ = call(c, "POST", f"/v2/other/steal/blobs/uploads/?mount={ld}&from=team/mnt",
                token=OTHER_RW)
    assert r.status == 202
    call(c, "DELETE", r.getheader("Location"), token=OTHER_RW)
    r, _ = call(c, "GET", f"/v2/other/steal/blobs/{ld}", token=OTHER_RW)
    assert r.status == 404
    # Without `from`, the digest alone is not enough either.
    r, _ = call(c, "POST", f"/v2/other/steal/blobs/uploads/?mount={ld}", token=OTHER_RW)
    assert r.status == 202
    call(c, "DELETE", r.getheader("Location"), token=OTHER_RW)
    # From a readable name that does not link it: upload too.
    r, _ = call(c, "POST", f"/v2/team/b/blobs/uploads/?mount={ld}&from=team/empty",
                token=TEAM_RW)
    assert r.status == 202
    call(c, "DELETE", r.getheader("Location"), token=TEAM_RW)
    # Between two readable names, the source linking it: mounted.
    r, _ = call(c, "POST", f"/v2/team/b/blobs/uploads/?mount={ld}&from=team/mnt",
                token=TEAM_RW)
    assert r.status == 201 and r.getheader("Location") == f"/v2/team/b/blobs/{ld}"
    r, _ = call(c, "GET", f"/v2/team/b/blobs/{ld}", token=TEAM_RO)
    assert r.status == 200


def test_a_manifest_may_not_name_blobs_its_name_does_not_link(door):
    c = conn(door)
    _, ld = push_image(c, "team/src", "1", b"someone else's " + os.urandom(8), token=TEAM_RW)
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    push_blob(c, "other/thief", cfg, token=OTHER_RW)
    m = oci.new_manifest(cfg, [])
    m["layers"] = [{"mediaType": oci.LAYER_GZIP, "digest": ld, "size": 30}]
    r, body = call(c, "PUT", "/v2/other/thief/manifests/1", oci.canonical_json(m),
                   {"Content-Type": oci.MANIFEST}, token=OTHER_RW)
    assert r.status == 400 and error_code(body) == "MANIFEST_BLOB_UNKNOWN"
    assert ld in json.dumps(json.loads(body))
    r, _ = call(c, "GET", f"/v2/other/thief/blobs/{ld}", token=OTHER_RW)
    assert r.status == 404


def test_referrers_are_listed_within_their_name_only(door):
    c = conn(door)
    subject, _ = push_image(c, "team/signed", "1", b"signed " + os.urandom(8), token=TEAM_RW)
    empty = b"{}"
    push_blob(c, "team/signed", empty, token=TEAM_RW)
    sig = {"schemaVersion": 2, "mediaType": oci.MANIFEST, "artifactType": "application/x-sig",
           "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                      "digest": digestmod.of_bytes(empty), "size": 2},
           "layers": [], "subject": {"mediaType": oci.MANIFEST, "digest": subject, "size": 1}}
    sb = json.dumps(sig).encode()
    r, body = call(c, "PUT", f"/v2/team/signed/manifests/{digestmod.of_bytes(sb)}", sb,
                   {"Content-Type": oci.MANIFEST}, token=TEAM_RW)
    assert r.status == 201, body
    r, body = call(c, "GET", f"/v2/team/signed/referrers/{subject}", token=TEAM_RO)
    assert [m["digest"] for m in json.loads(body)["manifests"]] == [digestmod.of_bytes(sb)]
    r, body = call(c, "GET", f"/v2/other/x/referrers/{subject}", token=OTHER_RW)
    assert r.status == 200 and json.loads(body)["manifests"] == []


def test_no_token_bad_token_and_not_allowed_are_told_apart(door):
    c = conn(door)
    r, body = call(c, "GET", "/v2/team/app/tags/list", token=None)
    no_token = error_message(body)
    assert r.status == 401 and "authentication required" in no_token
    assert r.getheader("WWW-Authenticate")
    r, body = call(c, "GET", "/v2/team/app/tags/list", token="not-a-token-at-all")
    bad_token = error_message(body)
    assert r.status == 401 and "not accepted" in bad_token
    r, body = call(c, "GET", "/v2/team/app/tags/list", headers={"Authorization": "Digest x"},
                   token=None)
    assert r.status == 401 and "unsupported Authorization scheme" in error_message(body)
    r, body = call(c, "POST", "/v2/team/app/blobs/uploads/", token=TEAM_RO)
    not_allowed = error_message(body)
    assert r.status == 403 and "may not write team/app" in not_allowed
    assert "read on team/*" in not_allowed
    assert len({no_token, bad_token, not_allowed}) == 3


def test_blob_delete_unlinks_from_that_name_only(door):
    c = conn(door)
    shared = b"shared layer " + os.urandom(16)
    m1, ld = push_image(c, "del/one", "1", shared)
    m2, _ = push_image(c, "del/two", "1", shared)
    r, _ = call(c, "DELETE", f"/v2/del/one/blobs/{ld}", token=TEAM_RW)
    assert r.status == 403  # delete is a permission of its own
    r, _ = call(c, "DELETE", f"/v2/del/one/blobs/{ld}")
    assert r.status == 202
    r, body = call(c, "GET", f"/v2/del/one/blobs/{ld}")
    assert r.status == 404 and error_code(body) == "BLOB_UNKNOWN"
    r, _ = call(c, "DELETE", f"/v2/del/one/blobs/{ld}")
    assert r.status == 404  # already deleted
    r, body = call(c, "GET", f"/v2/del/two/blobs/{ld}")
    assert r.status == 200 and body == shared
    # gc keeps what another name's manifest still reaches...
    gc = ["srepo-server", "gc", "--root", door.root, "--grace", "0"]
    p = subprocess.run(gc, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert LayoutRepo(door.root).has_blob(ld)
    # ...and frees it once nothing does. Uploading it again links it again.
    for name, md in (("del/one", m1), ("del/two", m2)):
        r, _ = call(c, "DELETE", f"/v2/{name}/manifests/{md}")
        assert r.status == 202
    r, _ = call(c, "DELETE", f"/v2/del/two/blobs/{ld}")
    assert r.status == 202
    p = subprocess.run(gc, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert not LayoutRepo(door.root).has_blob(ld)
    push_blob(c, "del/one", shared)
    r, body = call(c, "GET", f"/v2/del/one/blobs/{ld}")
    assert r.status == 200 and body == shared
    r, _ = call(c, "GET", f"/v2/del/two/blobs/{ld}")
    assert r.status == 404


def test_tag_writes_compare_and_swap(door):
    c = conn(door)
    layer = b"cas " + os.urandom(8)
    push_image(c, "cas/app", "base", layer)
    cfgs = []
    for i in range(8):
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": i,
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        push_blob(c, "cas/app", cfg)
        cfgs.append(oci.canonical_json(
            oci.new_manifest(cfg, [oci.descriptor(oci.LAYER_GZIP, layer)])))
    results: list[int] = []
    start = threading.Barrier(len(cfgs))

    def put(m: bytes) -> None:
        mine = conn(door)
        start.wait()
        r, _ = call(mine, "PUT", "/v2/cas/app/manifests/1.0", m,
                    {"Content-Type": oci.MANIFEST, "If-None-Match": "*"})
        results.append(r.status)

    threads = [threading.Thread(target=put, args=(m,)) for m in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [201] + [412] * (len(cfgs) - 1)
    r, _ = call(c, "HEAD", "/v2/cas/app/manifests/1.0")
    now = r.getheader("Docker-Content-Digest")
    assert now in {digestmod.of_bytes(m) for m in cfgs}
    # If-Match: only from the digest the tag holds now.
    other = next(m for m in cfgs if digestmod.of_bytes(m) != now)
    stale = digestmod.of_bytes(cfgs[0] if digestmod.of_bytes(cfgs[0]) != now else cfgs[1])
    r, body = call(c, "PUT", "/v2/cas/app/manifests/1.0", other,
                   {"Content-Type": oci.MANIFEST, "If-Match": f'"{stale}"'})
    assert r.status == 412 and "changed" in error_message(body)
    r, _ = call(c, "PUT", "/v2/cas/app/manifests/1.0", other,
                {"Content-Type": oci.MANIFEST, "If-Match": f'"{now}"'})
    assert r.status == 201
    # Without a precondition a tag still moves, as registries do.
    r, _ = call(c, "PUT", "/v2/cas/app/manifests/1.0", cfgs[0], {"Content-Type": oci.MANIFEST})
    assert r.status == 201


def test_a_key_limited_to_some_names_downloads_only_their_blobs_over_ssh(tmp_path):
    """The same rule on the smart protocol (srepo-server --stdio, the SSH doors' handler)."""
    root = str(tmp_path / "remote")
    repo = LayoutRepo(root, create=True)
    team = make_image(repo, "team/app", "1", extra_layers=[b"team's layer"])
    secret = make_image(repo, "secret/app", "1", extra_layers=[b"the secret layer"])
    secret_layer = json.loads(repo.read_blob(secret))["layers"][1]["digest"]
    team_layer = json.loads(repo.read_blob(team))["layers"][1]["digest"]
    argv = [sys.executable, "-m", "srepo_server.main", "--stdio", "--root", root,
            "--perms", "read", "--prefixes", "team/*"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)

    def closer() -> None:
        p.wait(10)

    try:
        with SmartRepo(p.stdout, p.stdin, closer=closer) as r:
            assert r.read_blob(team_layer)
            with pytest.raises(NotFound):
                r.read_blob(secret_layer)
            with pytest.raises(NotFound):
                r.read_blob(secret)  # the manifest is a blob too
            back = LayoutRepo(str(tmp_path / "back"), create=True)
            copy(refmod.parse("team/app:1"), r, back)
            assert back.fsck() == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
