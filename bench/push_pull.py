#!/usr/bin/env python3
"""Push and pull a ~500 MB image over SSH: cocker (SFTP mode and smart mode) side by side
with raw OpenSSH (`cat blobs | ssh host 'cat > file'`, the same bytes) and with
`skopeo copy` to a local `docker-registry` over plain HTTP. Also an incremental push of
a new version with a 1 MB change against the full push.

    python3 bench/push_pull.py [--size-mb 500] [--runs 1]

Needs root (it starts its own sshd on 127.0.0.1), openssh, skopeo and docker-registry.

What it measures: whole CLI commands (interpreter start-up, SSH handshake, remote server
start-up included). Smart mode runs this interpreter's srepo-server by its path (no pyenv
shim); like the raw `ssh host cat` it still starts through the remote user's shell, so a
slow ~/.bashrc is in both. SFTP mode uses sshd's internal-sftp (no shell). `ssh host true`
is printed as the floor an incremental push cannot go below.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from registry.oci import digest as dm
from registry.oci import manifest as oci
from registry.oci import reference
from registry.repo import image as imagemod
from registry.repo.store import Store
from tests.support.sshd import free_port, scripts_dir, start_sshd, tar_layer


class _Random:
    def __init__(self, n: int) -> None:
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def big_layer(store: Store, size: int) -> dict:
    """A zstd-compressed tar holding `size` random bytes (already-compressed content, so
    nobody's compressor gets involved), ingested into the store."""
    import zstandard
    raw = store.new_tmp_path("bench") + ".tar"
    with tarfile.open(raw, "w") as tf:
        ti = tarfile.TarInfo("data.bin")
        ti.size = size
        tf.addfile(ti, _Random(size))
    diff_id, _ = dm.of_file(raw)
    out = store.new_tmp_path("bench") + ".zst"
    with open(raw, "rb") as src, open(out, "wb") as dst:
        zstandard.ZstdCompressor(level=1).copy_stream(src, dst)
    os.unlink(raw)
    d, n = dm.of_file(out)
    store.ingest(out, d)
    return {"desc": oci.descriptor(oci.LAYER_ZSTD, d, n), "diff_id": diff_id}


def small_layer(store: Store, payload: bytes) -> dict:
    data = tar_layer({"f": payload}, gzip_it=True)
    d = dm.of_bytes(data)
    store.put_blob_bytes(d, data)
    import gzip
    return {"desc": oci.descriptor(oci.LAYER_GZIP, d, len(data)),
            "diff_id": dm.of_bytes(gzip.decompress(data))}


def publish(store: Store, name: str, version: str, layers: list[dict]):
    cfg = oci.new_config([x["diff_id"] for x in layers], created="2026-01-01T00:00:00Z")
    return imagemod.publish(store, name, version, cfg, [x["desc"] for x in layers], force=True)


def timed(argv: list[str], env: dict | None = None, **kw) -> float:
    t = time.monotonic()
    p = subprocess.run(argv, env=env, capture_output=True, **kw)
    dt = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(argv)}\n{p.stderr.decode()[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (the bench starts its own sshd)")
    base = tempfile.mkdtemp(prefix="cocker-bench-")
    sshd = start_sshd(os.path.join(base, "sshd"))
    reg = None
    try:
        env = sshd.client_env()
        env["COCKER_QUIET"] = "1"
        home_a, home_b = os.path.join(base, "a"), os.path.join(base, "b")
        st = Store(home_a)
        print(f"building a {args.size_mb} MB image ...", flush=True)
        big = big_layer(st, args.size_mb << 20)
        smalls = [small_layer(st, os.urandom(200 << 10)) for _ in range(3)]
        v1 = publish(st, "bench", "1.0", [big] + smalls)
        publish(st, "bench", "1.1", [big] + smalls + [small_layer(st, os.urandom(1 << 20))])
        blobs = [v1.digest, v1.config_digest] + [x["digest"] for x in v1.layers]
        total = sum(st.blob_size(d) for d in blobs)
        print(f"image: {len(blobs)} blobs, {total / 1e6:.1f} MB", flush=True)
        results: dict[str, float] = {}

        def cocker(home: str, *a: str) -> float:
            return timed([sys.executable, "-m", "cocker.main", "--home", home, *a], env=env)

        # raw OpenSSH: the same bytes, one stream each way
        ssh = ["ssh", "-i", sshd.client_key, "-o", f"UserKnownHostsFile={sshd.known_hosts}",
               "-o", "BatchMode=yes", "-p", str(sshd.port), "root@127.0.0.1"]
        raw_remote = os.path.join(base, "raw-remote.bin")
        files = " ".join(st.blob_path(d) for d in blobs)
        results["raw ssh push"] = timed(["sh", "-c", f"cat {files} | {' '.join(ssh)} "
                                         f"'cat > {raw_remote}'"])
        results["raw ssh pull"] = timed(["sh", "-c", f"{' '.join(ssh)} 'cat {raw_remote}' "
                                         f"> {base}/raw-local.bin"])
        os.unlink(raw_remote)
        os.unlink(f"{base}/raw-local.bin")
        # The floor under any CLI command: an SSH connection plus one remote command (which,
        # like srepo-server in smart mode, starts through the remote user's shell and its
        # ~/.bashrc). Best of three.
        results["raw ssh connect + true"] = min(timed(ssh + ["true"]) for _ in range(3))

        for mode in ("sftp", "smart"):
            remote = os.path.join(base, f"remote-{mode}")
            url = sshd.url(remote) + f"?mode={mode}" + (
                f"&command={scripts_dir()}/srepo-server" if mode == "smart" else "")
            results[f"cocker {mode} push"] = cocker(home_a, "image", "push", "bench:1.0",
                                                    "--repo", url, "--init")
            results[f"cocker {mode} push again"] = cocker(home_a, "image", "push", "bench:1.0",
                                                          "--repo", url)
            results[f"cocker {mode} incremental push"] = cocker(home_a, "image", "push",
                                                                "bench:1.1", "--repo", url)
            pull_home = f"{home_b}-{mode}"
            results[f"cocker {mode} pull"] = cocker(pull_home, "image", "pull", "bench:1.0",
                                                    "--repo", url)
            shutil.rmtree(pull_home)
            shutil.rmtree(remote)

        # The same pushes in one process (no interpreter start-up): what the protocol costs.
        from registry.repo.copy import copy
        from registry.transports.remotes import open_repo
        kw = dict(identity=sshd.client_key, known_hosts=sshd.known_hosts, config_path=None)
        for mode in ("sftp", "smart"):
            remote = os.path.join(base, f"inproc-{mode}")
            t = time.monotonic()
            with open_repo(sshd.url(remote) + f"?mode={mode}", init=True, **kw,
                           remote_command=f"{scripts_dir()}/srepo-server") as repo:
                copy(st.resolve(reference.parse("bench:1.0")), st, repo)
                results[f"in-process {mode} full push"] = time.monotonic() - t
                t = time.monotonic()
                copy(st.resolve(reference.parse("bench:1.1")), st, repo)
                results[f"in-process {mode} incremental push"] = time.monotonic() - t
            shutil.rmtree(remote)

        # skopeo + docker-registry over plain HTTP
        if shutil.which("skopeo") and shutil.which("docker-registry"):
            port = free_port()
            cfg = os.path.join(base, "registry.yml")
            with open(cfg, "w") as f:
                f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                        f"    rootdirectory: {base}/registry\nhttp:\n  addr: 127.0.0.1:{port}\n")
            reg = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            import urllib.request
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("docker-registry did not start")
                    time.sleep(0.05)
            dest = f"docker://127.0.0.1:{port}/bench:1.0"
            results["skopeo push"] = timed(["skopeo", "copy", "--dest-tls-verify=false",
                                            f"oci:{home_a}:bench:1.0", dest])
            results["skopeo pull"] = timed(["skopeo", "copy", "--src-tls-verify=false", dest,
                                            f"oci:{base}/skopeo-pulled:bench:1.0"])
            results["skopeo incremental push"] = timed(
                ["skopeo", "copy", "--dest-tls-verify=false", f"oci:{home_a}:bench:1.1",
                 f"docker://127.0.0.1:{port}/bench:1.1"])

        print()
        w = max(len(k) for k in results)
        for k, v in results.items():
            mbps = f"{total / v / 1e6:7.1f} MB/s" if not any(
                w in k for w in ("again", "incr", "true")) else ""
            print(f"{k:<{w}}  {v:7.2f} s  {mbps}")
        print("\nratios (lower is better for cocker):")
        for mode in ("sftp", "smart"):
            for way in ("push", "pull"):
                c = results[f"cocker {mode} {way}"]
                line = f"  cocker {mode} {way} / raw ssh {way}: {c / results[f'raw ssh {way}']:.2f}"
                if f"skopeo {way}" in results:
                    line += f"   / skopeo {way}: {c / results[f'skopeo {way}']:.2f}"
                print(line)
            inc = results[f"cocker {mode} incremental push"] / results[f"cocker {mode} push"]
            floor = results["raw ssh connect + true"] / results[f"cocker {mode} push"]
            print(f"  cocker {mode} incremental / full push: {inc * 100:.1f}%   "
                  f"repeated push: {results[f'cocker {mode} push again']:.2f} s   "
                  f"(`ssh host true` alone: {floor * 100:.1f}%)")
            inc = (results[f"in-process {mode} incremental push"]
                   / results[f"in-process {mode} full push"])
            print(f"  in one process (no start-up): {mode} incremental / full push: "
                  f"{inc * 100:.1f}%")
        print(json.dumps({k: round(v, 3) for k, v in results.items()}))
    finally:
        if reg is not None:
            reg.terminate()
            reg.wait(10)
        sshd.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
