#!/usr/bin/env bash
# Creates .venv (if missing) and installs engine with the extras given as
# arguments, e.g. `bash scripts/setup.sh bench` or `bash scripts/setup.sh dev`.
# Idempotent: a second run with the same extras and pyproject.toml only checks
# a stamp in .venv (pip would rebuild the editable wheel, ~8 s, every time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "engine needs Python >= 3.11")'
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
extras=$(printf '%s\n' "$@" | sort -u | paste -sd, -)
spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp=".venv/.engine-installed"
want="$(cksum < pyproject.toml) [$extras]"
# Installed before with these extras (or a superset listed in the stamp) and
# the same pyproject.toml: nothing to do, provided engine still imports.
if [ -f "$stamp" ] && grep -qxF "$want" "$stamp" \
  && .venv/bin/python -c 'import engine' 2>/dev/null; then
  exit 0
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec" >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
# setuptools' notice about editable installs is noise here; anything else is shown.
grep -v -e BuildBackendWarning -e '^ *!!$' -e '^ *\*\*\*' -e 'editable' -e 'with strategy' \
  -e 'Please be careful' -e 'name as your package' -e 'precedence during imports' \
  -e '^ *$' "$log" >&2 || true
echo "$want" >> "$stamp"
