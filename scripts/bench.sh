#!/usr/bin/env bash
# The main job: install what is needed, then benchmark the workloads in the
# three modes (sequential, concurrent, parallel). Extra arguments go to the
# benchmark, e.g. `bash scripts/bench.sh --quick`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench
exec .venv/bin/python -m workloads.seed "$@"
