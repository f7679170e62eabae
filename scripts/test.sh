#!/usr/bin/env bash
# Install what the tests need (packages, a throwaway PostgreSQL on 127.0.0.1),
# then lint, type-check and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if [ -f scripts/postgres.sh ] && [ -z "${ENGINE_TEST_PG_DSN:-}" ]; then
  eval "$(bash scripts/postgres.sh | tail -n 1)"
fi
.venv/bin/ruff check engine workloads benchmarks tests
.venv/bin/mypy engine
.venv/bin/python -m pytest "$@"
