#!/usr/bin/env bash
# Install cocker and everything its features and tests use, as root on Debian.
# Idempotent: a second run installs only what is missing and refreshes the package link.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${COCKER_VENV:-/opt/cocker}"

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi

# Every system package a feature, a test or a bench uses, so `bash scripts/test.sh` runs with no skip:
# runtime: iproute2 and iptables (NAT, port mappings), nginx (services), tini and catatonit (--init),
#   python3-seccomp and libseccomp-dev (the seccomp filter), busybox-static (the demo and test image);
# SSH repositories: openssh-client, openssh-server (the demo's and the tests' throwaway sshd);
# peers the interop tests and benches run side by side: skopeo, docker-registry, umoci, runc, crun,
#   buildah, podman; zstd (the layer codec's CLI peer); tmux (terminal tests); zsh (completion test);
# chromium and chromium-driver: the headless browser that tests srepo-server's web page;
# curl and openssl: the daemon's and the HTTP door's tests (a plain HTTP client, TLS test certificates);
# gcc and libc6-dev: the containment tests compile their static attacker (tests/support/probe.c).
pkgs=(python3 python3-venv python3-pip busybox-static iproute2 iptables nginx zstd ca-certificates
      openssh-client openssh-server skopeo docker-registry umoci runc crun buildah podman uidmap
      tini catatonit python3-seccomp libseccomp-dev tmux zsh chromium chromium-driver curl openssl
      gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    # policy-rc.d keeps the packages' own services (nginx, registry, sshd) from starting:
    # cocker and the tests start their own instances on loopback.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
# Editable, so the checkout is the code; re-installed when the checkout moves (a fresh CI clone)
# or pyproject.toml changes (a new dependency), which the marker records.
marker="$venv/.cocker-source"
want="$here $(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$marker" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -m pip check >/dev/null 2>&1; then
    "$venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]" 2> >(grep -v "^WARNING: Location" >&2)
    echo "$want" > "$marker"
fi
ln -sf "$venv/bin/cocker" /usr/local/bin/cocker
ln -sf "$venv/bin/srepo-server" /usr/local/bin/srepo-server
echo "install.sh: cocker $("$venv/bin/cocker" --version | awk '{print $NF}') ready ($venv)" >&2
