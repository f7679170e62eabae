#!/usr/bin/env bash
# Install what the tests need (packages, a throwaway PostgreSQL on 127.0.0.1),
# then lint, type-check and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# PostgreSQL: start (or reuse) the throwaway server. A failure here fails
# the whole command: `eval "$(...)"` would return 0 and the postgres tests
# would silently skip. ENGINE_SKIP_PG=1 runs without it, on purpose.
if [ -n "${ENGINE_TEST_PG_DSN:-}" ]; then
  echo "test.sh: using ENGINE_TEST_PG_DSN from the environment" >&2
elif [ "${ENGINE_SKIP_PG:-}" = 1 ]; then
  echo "test.sh: ENGINE_SKIP_PG=1: the postgres tests will skip" >&2
else
  pg_line="$(bash scripts/postgres.sh | tail -n 1)" || {
    echo "test.sh: scripts/postgres.sh failed (see above); set ENGINE_SKIP_PG=1 to test without PostgreSQL" >&2
    exit 1
  }
  case "$pg_line" in
    "export ENGINE_TEST_PG_DSN="?*) eval "$pg_line" ;;
    *)
      echo "test.sh: scripts/postgres.sh printed no DSN (last line: '$pg_line')" >&2
      exit 1
      ;;
  esac
fi
.venv/bin/ruff check engine workloads benchmarks tests
.venv/bin/mypy engine
.venv/bin/python -m pytest "$@"
