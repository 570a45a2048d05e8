"""srepo-server's web page, in a real headless Chromium: the page loads under the door's
authentication, lists what was pushed, its links lead to a version and a layer, and nothing a
pusher wrote runs as script. A screenshot stays in the test's temp dir."""

import gzip
import io
import json
import os
import tarfile
import urllib.request

import pytest
from selenium.webdriver.common.by import By

from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo.layout import LayoutRepo
from tests.support.browser import browser, browser_without_js  # fixtures
from tests.support.http_servers import TOKEN, SrepoHttp, request

HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def _layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data in sorted(files.items()):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            t.addfile(ti, io.BytesIO(data))
    gz = gzip.compress(raw.getvalue(), mtime=0)
    return gz, digestmod.of_bytes(raw.getvalue())


def _publish(repo: LayoutRepo, name: str, version: str, layers: list[dict[str, bytes]],
             created_by: str = "cocker image build") -> None:
    descs, diff_ids = [], []
    for files in layers:
        gz, diff_id = _layer(files)
        repo.put_blob_bytes(digestmod.of_bytes(gz), gz)
        descs.append(oci.descriptor(oci.LAYER_GZIP, gz))
        diff_ids.append(diff_id)
    config = oci.new_config(diff_ids, created="2026-01-02T03:04:05Z")
    config["history"] = [{"created": "2026-01-02T03:04:05Z", "created_by": created_by}]
    config["config"] = {"Cmd": ["sh"], "Labels": {"note": HOSTILE}}
    cbytes = oci.canonical_json(config)
    repo.put_blob_bytes(digestmod.of_bytes(cbytes), cbytes)
    manifest = oci.canonical_json(oci.new_manifest(cbytes, descs))
    d = digestmod.of_bytes(manifest)
    repo.put_blob_bytes(d, manifest)
    repo.put_ref(name, version, d)


@pytest.fixture
def door(tmp_path):
    root = str(tmp_path / "root")
    repo = LayoutRepo(root, create=True)
    base = {"bin/base.bin": os.urandom(64 << 10), "etc/os-release": b"NAME=test\n"}
    for version in ("1.0.0", "1.9.0", "1.10.0"):
        _publish(repo, "team/app", version, [base, {"app/version.txt": version.encode()}],
                 created_by=HOSTILE)
    _publish(repo, "tools/other", "2", [{"tool": b"x"}])
    server = SrepoHttp(root, str(tmp_path), anonymous_read=False)
    with open(server.tokens, "a") as f:
        f.write("team-only-token-000 read team/*\n")
    try:
        yield server
    finally:
        server.stop()


def _url(door, token: str = TOKEN, path: str = "/") -> str:
    return f"http://web:{token}@{door.hostport}{path}"


@pytest.mark.timeout(180)
def test_web_page_in_headless_chromium(door, browser, tmp_path, home, cocker):
    # one image arrives the way users push: cocker over the door's OCI API
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "pushed").write_text("pushed by cocker\n")
    cocker("image", "import", str(rootfs), "tools/pushed:1.0")
    cocker("image", "push", "tools/pushed:1.0", "--repo", door.url,
           env={"COCKER_REGISTRY_TOKEN": TOKEN})

    browser.get(_url(door))
    assert "repositories" in browser.title
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table a")]
    assert {"team/app", "tools/other", "tools/pushed"} <= set(names)

    browser.find_element(By.LINK_TEXT, "team/app").click()
    assert browser.current_url.endswith("/repo/team/app")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "tbody tr")]
    # cocker's version order, newest first: 1.10.0 > 1.9.0 > 1.0.0
    assert [r.split()[0] for r in rows] == ["1.10.0", "1.9.0", "1.0.0"]
    assert f"cocker image pull team/app:1.10.0 --repo http://{door.hostport}" in rows[0]
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.bar")
    assert len(bars) == 3
    # the shared base layer is the larger part of each version's bar
    shared, own = (float(r.get_attribute("width"))
                   for r in bars[0].find_elements(By.TAG_NAME, "rect"))
    assert shared > own > 0
    browser.save_screenshot(str(tmp_path / "web-page-versions.png"))

    browser.find_element(By.LINK_TEXT, "1.10.0").click()
    assert browser.current_url.endswith("/image/team/app:1.10.0")
    body = browser.find_element(By.TAG_NAME, "body").text
    for heading in ("layers", "config", "history", "signatures and other referrers"):
        assert heading in body
    # what the pusher wrote is shown as text and never runs
    assert HOSTILE in body
    assert browser.execute_script("return window.pwned === undefined")
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.execute_script("return document.images.length") == 0

    browser.find_elements(By.CSS_SELECTOR, 'a[href^="/layer/"]')[0].click()
    assert "/layer/team/app@sha256:" in browser.current_url
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "bin/base.bin" in body and "etc/os-release" in body
    assert "1.0.0, 1.9.0, 1.10.0" in body  # the versions that share this layer
    browser.get(_url(door, path="/image/tools/pushed:1.0"))
    assert "tools/pushed:1.0" in browser.title
    browser.find_elements(By.CSS_SELECTOR, 'a[href^="/layer/"]')[0].click()
    assert "etc/pushed" in browser.find_element(By.TAG_NAME, "body").text
    shot = tmp_path / "web-page.png"
    assert browser.save_screenshot(str(shot))
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_web_page_needs_the_same_credentials(door):
    status, headers, _ = request(door.url + "/", token=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    status, _, _ = request(door.url + "/", token="not-a-token-at-all")
    assert status == 401
    # a token limited to team/* sees team/app only, and other names do not exist for it
    status, _, body = request(door.url + "/", token="team-only-token-000")
    assert status == 200 and b"team/app" in body and b"tools/other" not in body
    status, _, body = request(door.url + "/repo/tools/other", token="team-only-token-000")
    assert status == 404
    status, _, body = request(door.url + "/image/tools/other:2", token="team-only-token-000")
    assert status == 404


def test_web_page_refuses_bad_paths_with_a_page(door):
    digest = "sha256:" + "0" * 64
    for path, want in [("/repo/BAD..NAME", 400), ("/image/team/app:no/such", 400),
                       ("/image/team/app:9.9.9", 404), (f"/layer/team/app@{digest}", 404),
                       ("/layer/team/app@sha256:xyz", 400), ("/nothing/here", 404),
                       ("/repo/../../etc", 400)]:
        status, headers, body = request(door.url + path)
        assert status == want, (path, status, body[:200])
        assert headers["Content-Type"].startswith("text/html")
    req = urllib.request.Request(door.url + "/", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 405


def _push_blob(door, name: str, data: bytes) -> str:
    d = digestmod.of_bytes(data)
    status, _, body = request(f"{door.url}/v2/{name}/blobs/uploads/?digest={d}", "POST", data,
                              {"Content-Type": "application/octet-stream"})
    assert status == 201, body
    return d


def test_web_page_shows_a_signature_pushed_as_a_referrer(door):
    _, headers, _ = request(f"{door.url}/v2/team/app/manifests/1.10.0", "HEAD",
                            headers={"Accept": oci.MANIFEST})
    subject = headers["Docker-Content-Digest"]
    empty = _push_blob(door, "team/app", b"{}")
    sig = _push_blob(door, "team/app", b"signature bytes")
    art = {"schemaVersion": 2, "mediaType": oci.MANIFEST,
           "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty,
                      "size": 2},
           "layers": [{"mediaType": "application/octet-stream", "digest": sig, "size": 15}],
           "subject": {"mediaType": oci.MANIFEST, "digest": subject,
                       "size": int(headers["Content-Length"])},
           "annotations": {"signed-by": "<b>ci</b>"}}
    raw = json.dumps(art).encode()
    status, _, body = request(f"{door.url}/v2/team/app/manifests/{digestmod.of_bytes(raw)}",
                              "PUT", raw, {"Content-Type": oci.MANIFEST})
    assert status == 201, body
    status, _, page = request(door.url + "/image/team/app:1.10.0")
    assert status == 200
    assert b"application/vnd.dev.cosign.artifact.sig.v1+json" in page
    assert b"&lt;b&gt;ci&lt;/b&gt;" in page and b"<b>ci</b>" not in page
    # the other versions have none
    status, _, page = request(door.url + "/image/team/app:1.9.0")
    assert b"cosign" not in page


def test_a_layer_bomb_stops_the_listing(tmp_path):
    root = str(tmp_path / "root")
    repo = LayoutRepo(root, create=True)
    # 96 MiB of zeros gzip to ~100 kB: far past the codec's ratio guard once 64 MiB are out
    _publish(repo, "team/bomb", "1", [{"zeros": bytes(96 << 20)}])
    layer = json.loads(repo.read_blob(repo.get_ref("team/bomb", "1")))["layers"][0]["digest"]
    server = SrepoHttp(root, str(tmp_path), anonymous_read=False)
    try:
        status, _, page = request(f"{server.url}/layer/team/bomb@{layer}")
    finally:
        server.stop()
    assert status == 200
    assert b"the layer cannot be listed" in page and b"compression bomb" in page


@pytest.mark.timeout(180)
def test_web_page_works_with_javascript_off(door, browser_without_js):
    b = browser_without_js
    # the browser really runs no script
    b.get("data:text/html,<title>off</title><script>document.title='on'</script>")
    assert b.title == "off"
    b.get(_url(door))
    b.find_element(By.LINK_TEXT, "team/app").click()
    b.find_element(By.LINK_TEXT, "1.9.0").click()
    assert b.current_url.endswith("/image/team/app:1.9.0")
    b.find_elements(By.CSS_SELECTOR, 'a[href^="/layer/"]')[-1].click()
    assert "app/version.txt" in b.find_element(By.TAG_NAME, "body").text
