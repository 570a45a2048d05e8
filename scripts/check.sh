#!/usr/bin/env bash
# The static checks configured in pyproject.toml: ruff (lint) over the tree, mypy over the
# packages. Exits non-zero on the first that fails. Uses the venv of install.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
venv="${COCKER_VENV:-/opt/cocker}"
"$venv/bin/ruff" check . || exit 1
"$venv/bin/mypy" || exit 1
