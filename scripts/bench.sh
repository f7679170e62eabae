#!/usr/bin/env bash
# The main job: install what is needed, then benchmark the workloads in the
# three modes (sequential, concurrent, parallel) against a local LLM server
# the benchmark starts and stops itself. Extra arguments go to the benchmark,
# e.g. `bash scripts/bench.sh --quick`, `--plot out/`, `--json out.json`,
# `--peers` (after `bash scripts/setup.sh bench langgraph`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh bench
exec .venv/bin/python -m engine bench "$@"
