"""Push and pull a ~500 MB image through srepo-server's HTTP door and through docker-registry
(the CNCF distribution registry), skopeo as the client for both; then 8 concurrent pulls.

    python3 bench/server_http.py [--size-mb 500] [--layers 5] [--pulls 8] [--rounds 3] [--workdir DIR]

Side by side, best of --rounds rounds (who goes first alternates), ratios printed (door time /
docker-registry time: < 1 is faster), then each round's own ratios. One round is not enough on
a shared 2-core machine: the same server against itself differs by up to 1.15x (8 pulls) and
1.36x (one pull) from one run to the next, whoever goes first.
Both servers listen on 127.0.0.1; the door needs a token (as it would in use), the registry
runs without auth (its default).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from registry.oci import digest as digestmod
from registry.oci import manifest as oci
from registry.repo.layout import LayoutRepo
from tests.support.http_servers import TOKEN, DockerRegistry, SrepoHttp

SKOPEO = shutil.which("skopeo") or "skopeo"


def make_big_image(root: str, size_mb: int, layers: int) -> tuple[LayoutRepo, int]:
    """Random (incompressible) gzip layers, built once and reused from --workdir."""
    repo = LayoutRepo(root, create=True)
    d = repo.get_ref("bench", "1")
    if d:
        m = oci.parse_manifest(repo.read_blob(d))
        return repo, sum(x["size"] for x in m["layers"])
    per = size_mb * (1 << 20) // layers
    descs, diff_ids, total = [], [], 0
    for i in range(layers):
        tmp = repo.new_tmp_path("bench")
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing, fastest level
        rh, gh = hashlib.sha256(), hashlib.sha256()
        size = 0
        with open(tmp, "wb") as f:
            header = _tar_header(f"layer{i}.bin", per)
            body = [header]
            left = per
            while left:
                n = min(left, 4 << 20)
                body.append(os.urandom(n))
                left -= n
            pad = (-per) % 512
            body.append(b"\0" * pad + b"\0" * 1024)
            for part in body:
                rh.update(part)
                out = comp.compress(part)
                gh.update(out)
                f.write(out)
                size += len(out)
            out = comp.flush()
            gh.update(out)
            f.write(out)
            size += len(out)
        d = "sha256:" + gh.hexdigest()
        repo.ingest(tmp, d)
        descs.append(oci.descriptor(oci.LAYER_GZIP, d, size))
        diff_ids.append("sha256:" + rh.hexdigest())
        total += size
    cfg = oci.canonical_json(oci.new_config(diff_ids, created="2024-01-01T00:00:00Z"))
    repo.put_blob_bytes(digestmod.of_bytes(cfg), cfg)
    man = oci.canonical_json(oci.new_manifest(cfg, descs))
    md = digestmod.of_bytes(man)
    repo.put_blob_bytes(md, man)
    repo.put_ref("bench", "1", md)
    return repo, total


def _tar_header(name: str, size: int) -> bytes:
    import tarfile
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 0
    return ti.tobuf(format=tarfile.PAX_FORMAT)


def skopeo(*args: str) -> float:
    t = time.monotonic()
    p = subprocess.run([SKOPEO, "copy", "-q", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"skopeo copy {' '.join(args)} failed: {p.stderr.strip()}")
    return time.monotonic() - t


def concurrent_pulls(src_ref: str, dest_root: str, n: int, creds: list[str]) -> float:
    os.makedirs(dest_root, exist_ok=True)
    t = time.monotonic()
    procs = []
    for i in range(n):
        dest = os.path.join(dest_root, f"p{i}")
        procs.append(subprocess.Popen([SKOPEO, "copy", "-q", "--src-tls-verify=false", *creds,
                                       src_ref, f"oci:{dest}:bench:1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"concurrent pull failed: {err.decode().strip()}")
    dt = time.monotonic() - t
    shutil.rmtree(dest_root, ignore_errors=True)
    return dt


def run_round(src_root: str, work: str, rnd: int, pulls: int,
              results: dict[str, dict[str, list[float]]]) -> None:
    """Fresh, empty servers; each step on both back to back (who goes first alternates by
    round), so a burst of load on a shared machine hits both sides alike. Best time kept."""
    run = tempfile.mkdtemp(prefix="run-", dir=work)
    door = SrepoHttp(os.path.join(run, "door-repo"), run, anonymous_read=False)
    reg = DockerRegistry(run)
    door_creds = ["--src-creds", f"bench:{TOKEN}"]
    sides = {"door": (door.hostport, ["--dest-creds", f"bench:{TOKEN}"], door_creds),
             "docker-registry": (reg.hostport, [], [])}
    order = ["door", "docker-registry"] if rnd % 2 == 0 else ["docker-registry", "door"]
    try:
        for step in ("push", "pull", "pulls"):
            for label in order:
                hp, push_creds, pull_creds = sides[label]
                ref = f"docker://{hp}/bench/app:1"
                if step == "push":
                    dt = skopeo("--dest-tls-verify=false", *push_creds, f"oci:{src_root}:bench:1",
                                ref)
                elif step == "pull":
                    dest = os.path.join(run, f"pull-{label}")
                    dt = skopeo("--src-tls-verify=false", *pull_creds, ref, f"oci:{dest}:bench:1")
                    shutil.rmtree(dest, ignore_errors=True)
                else:
                    dt = concurrent_pulls(ref, os.path.join(run, f"cc-{label}"), pulls, pull_creds)
                results[label].setdefault(step, []).append(dt)
    finally:
        door.stop()
        reg.stop()
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--pulls", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3, help="repeat and keep the best time")
    ap.add_argument("--workdir", help="keep the source image here between runs")
    a = ap.parse_args()
    if not shutil.which(SKOPEO) or not shutil.which("docker-registry"):
        raise SystemExit("needs skopeo and docker-registry")
    work = a.workdir or tempfile.mkdtemp(prefix="bench-http-")
    os.makedirs(work, exist_ok=True)
    t = time.monotonic()
    src, total = make_big_image(os.path.join(work, f"src-{a.size_mb}-{a.layers}"), a.size_mb,
                                a.layers)
    mb = total / (1 << 20)
    print(f"image: {a.layers} gzip layers, {mb:.0f} MiB (built in {time.monotonic() - t:.1f}s)")
    results: dict[str, dict[str, list[float]]] = {"door": {}, "docker-registry": {}}
    try:
        for rnd in range(a.rounds):
            run_round(src.root, work, rnd, a.pulls, results)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'':24}{'srepo-server':>14}{'docker-registry':>18}{'ratio':>8}")
    steps = (("push", "push (skopeo)", 1), ("pull", "pull (skopeo)", 1),
             ("pulls", f"{a.pulls} concurrent pulls", a.pulls))
    for key, what, _ in steps:
        d, r = min(results["door"][key]), min(results["docker-registry"][key])
        print(f"{what:24}{d:>13.2f}s{r:>17.2f}s{d / r:>8.2f}")
    for key, _, n in steps:
        d, r = min(results["door"][key]), min(results["docker-registry"][key])
        print(f"throughput {key:6} MiB/s: door {n * mb / d:7.0f}   docker-registry {n * mb / r:7.0f}")
    for key, what, _ in steps:
        pairs = zip(results["door"][key], results["docker-registry"][key], strict=True)
        print(f"each round's ratio, {what}: " + " ".join(f"{d / r:.2f}" for d, r in pairs))


if __name__ == "__main__":
    main()
