#!/usr/bin/env bash
# The whole test suite, as root: installs what is missing first, runs ruff and mypy
# (scripts/check.sh), then pytest.
# Any skip is printed with its reason (-rs) and fails the run: install.sh provides every dependency.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k layout`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh || exit 1
venv="${COCKER_VENV:-/opt/cocker}"
export PATH="$venv/bin:$PATH"
# static checks first: a lint or type error fails the run before the slow part
bash scripts/check.sh || exit 1
"$venv/bin/python" -m pytest -p no:cacheprovider --timeout=600 -q -rs --fail-on-skip "$@" tests
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: no tests were collected" >&2
    exit 1
fi
exit "$rc"
