#!/usr/bin/env python3
"""Benchmark srepo-server's SSH side: push and pull a ~500 MB image

  * through srepo-server's own SSH door      (cocker image push/pull --repo srepo://...)
  * through OpenSSH + `srepo-server --stdio` (cocker image push/pull --repo ssh://... --mode smart)
  * against raw OpenSSH moving the same bytes (cat blob | ssh host 'cat > f', and back)

plus the aggregate throughput of 8 concurrent pulls through the door (vs 8 concurrent raw
`ssh cat`). Everything runs on 127.0.0.1 with a private sshd and a private door, in one run,
and prints the ratios (goal: the door within 1.5x of raw OpenSSH).
The HTTP door's benchmark (vs docker-registry with skopeo) is bench/server_http.py;
`--with-http` runs it after this one, so one command covers all the doors.

    python3 bench/server.py [--size-mb 500] [--concurrent 8] [--with-http] [--keep]
Needs root (the private sshd) and openssh-server/client.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from registry.oci import digest as digestmod  # noqa: E402
from registry.oci import manifest as oci  # noqa: E402
from registry.repo.image import publish  # noqa: E402
from registry.repo.layout import LayoutRepo  # noqa: E402
from registry.repo.store import Store  # noqa: E402


def make_image(store: Store, size_mb: int) -> tuple[str, list[str]]:
    """One big layer (incompressible) plus three small ones; returns (digest, blob paths)."""
    sizes = [max(1, size_mb - 3) << 20, 1 << 20, 1 << 20, 1 << 20]
    layers = []
    for n in sizes:
        path = store.new_tmp_path("bench")
        with open(path, "wb") as f:
            left = n
            while left:
                k = min(left, 16 << 20)
                f.write(os.urandom(k))
                left -= k
        d, _ = digestmod.of_file(path)
        store.ingest(path, d)
        layers.append(oci.descriptor(oci.LAYER_TAR, d, n))
    img = publish(store, "bench/big", "1", oci.new_config([x["digest"] for x in layers]), layers,
                  force=True)
    return img.digest, [store.blob_path(x["digest"]) for x in layers]


def timed(argv: list[str], env: dict, **kw) -> float:
    t0 = time.monotonic()
    p = subprocess.run(argv, env=env, capture_output=True, **kw)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{p.stderr.decode(errors='replace')}")
    return dt


def cocker(*args: str) -> list[str]:
    return [sys.executable, "-m", "cocker.main", *args]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--with-http", action="store_true",
                    help="then run bench/server_http.py (the HTTP door vs docker-registry)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (starts a private sshd)")

    from tests.support.srepo import start_door
    from tests.support.sshd import start_sshd

    base = tempfile.mkdtemp(prefix="cocker-bench-server-")
    sshd = door = None
    try:
        src_home = os.path.join(base, "src-home")
        store = Store(src_home)
        digest, blob_paths = make_image(store, args.size_mb)
        total = sum(os.path.getsize(p) for p in blob_paths)
        print(f"image bench/big:1 {digest[:19]}, {total / 1e6:.0f} MB in {len(blob_paths)} layers")

        sshd = start_sshd(os.path.join(base, "sshd"))
        door = start_door(os.path.join(base, "door"), {"bench": 'srepo-perms="all"'})
        stdio_root = os.path.join(base, "stdio-repo")
        LayoutRepo(stdio_root, create=True)
        raw_dir = os.path.join(base, "raw")
        os.makedirs(raw_dir)

        ssh_env = sshd.client_env()
        door_env = door.client_env("bench")
        ssh_cmd = ["ssh", "-p", str(sshd.port), "-i", sshd.client_key,
                   "-o", f"UserKnownHostsFile={sshd.known_hosts}", "-o", "BatchMode=yes",
                   f"root@{sshd.host}"]
        results: dict[str, float] = {}

        # raw OpenSSH: the same blobs, one ssh each, as a push and a pull would move them
        def raw_push() -> None:
            for i, p in enumerate(blob_paths):
                with open(p, "rb") as f:
                    subprocess.run(ssh_cmd + [f"cat > {raw_dir}/b{i}"], stdin=f, check=True,
                                   env=ssh_env)

        def raw_pull(dest: str) -> None:
            os.makedirs(dest, exist_ok=True)
            for i in range(len(blob_paths)):
                with open(os.path.join(dest, f"b{i}"), "wb") as f:
                    subprocess.run(ssh_cmd + [f"cat {raw_dir}/b{i}"], stdout=f, check=True,
                                   env=ssh_env)

        t0 = time.monotonic()
        raw_push()
        results["raw push"] = time.monotonic() - t0
        t0 = time.monotonic()
        raw_pull(os.path.join(base, "rawpull"))
        results["raw pull"] = time.monotonic() - t0

        door_url = door.url()
        stdio_url = sshd.url(stdio_root)
        push_env = {**door_env, "COCKER_HOME": src_home, "COCKER_QUIET": "1"}
        results["door push"] = timed(cocker("image", "push", "bench/big:1", "--repo",
                                            door_url), push_env)
        pull_env = {**door_env, "COCKER_HOME": os.path.join(base, "door-pull"), "COCKER_QUIET": "1"}
        results["door pull"] = timed(cocker("image", "pull", "bench/big:1", "--repo",
                                            door_url), pull_env)
        push_env = {**ssh_env, "COCKER_HOME": src_home, "COCKER_QUIET": "1"}
        results["stdio push"] = timed(cocker("image", "push", "bench/big:1", "--repo",
                                             stdio_url, "--mode", "smart"), push_env)
        pull_env = {**ssh_env, "COCKER_HOME": os.path.join(base, "stdio-pull"), "COCKER_QUIET": "1"}
        results["stdio pull"] = timed(cocker("image", "pull", "bench/big:1", "--repo",
                                             stdio_url, "--mode", "smart"), pull_env)
        results["door push (nothing new)"] = timed(
            cocker("image", "push", "bench/big:1", "--repo", door_url),
            {**door_env, "COCKER_HOME": src_home, "COCKER_QUIET": "1"})

        # N concurrent pulls through the door vs N concurrent raw ssh cat of the same bytes
        n = args.concurrent
        procs: list[subprocess.Popen] = []
        t0 = time.monotonic()
        for i in range(n):
            env = {**door_env, "COCKER_HOME": os.path.join(base, f"cpull{i}"), "COCKER_QUIET": "1"}
            procs.append(subprocess.Popen(cocker("image", "pull", "bench/big:1", "--repo",
                                                 door_url), env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"concurrent pull failed: {p.stderr.read().decode()}")
        results[f"door {n} concurrent pulls"] = time.monotonic() - t0
        for i in range(n):
            shutil.rmtree(os.path.join(base, f"cpull{i}"), ignore_errors=True)
        ths = [threading.Thread(target=raw_pull, args=(os.path.join(base, f"rpull{i}"),))
               for i in range(n)]
        t0 = time.monotonic()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        results[f"raw {n} concurrent pulls"] = time.monotonic() - t0

        mb = total / 1e6
        print(f"\n{'transfer':32} {'seconds':>8} {'MB/s':>8}")
        for k, v in results.items():
            vol = mb * (n if "concurrent" in k else 1) if "nothing" not in k else 0
            rate = f"{vol / v:8.1f}" if vol else "       -"
            print(f"{k:32} {v:8.2f} {rate}")
        print("\nratios (lower is better; goal for the door: <= 1.5x raw OpenSSH)")
        for kind in ("push", "pull"):
            print(f"  door  {kind} / raw ssh {kind}: {results[f'door {kind}'] / results[f'raw {kind}']:.2f}x")
            print(f"  stdio {kind} / raw ssh {kind}: {results[f'stdio {kind}'] / results[f'raw {kind}']:.2f}x")
        print(f"  door {n} concurrent pulls / raw: "
              f"{results[f'door {n} concurrent pulls'] / results[f'raw {n} concurrent pulls']:.2f}x"
              f" (aggregate {mb * n / results[f'door {n} concurrent pulls']:.0f} MB/s through the door)")
    finally:
        if door:
            door.stop()
        if sshd:
            sshd.stop()
        if args.keep:
            print(f"scratch kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.with_http:
        print("\n--- HTTP door (bench/server_http.py) ---", flush=True)
        subprocess.run([sys.executable, os.path.join(HERE, "server_http.py"),
                        "--size-mb", str(args.size_mb), "--pulls", str(args.concurrent)])


if __name__ == "__main__":
    main()
