#!/usr/bin/env bash
# The main job: install what is needed, then benchmark the workloads in the
# three modes (sequential, concurrent, parallel) against a local LLM server
# the benchmark starts and stops itself. Extra arguments go to the benchmark,
# e.g. `bash scripts/bench.sh --quick`, `--plot out/`, `--json out.json`,
# `--check` (the CI gate). `--peers` installs the langgraph extra too, and
# `--executor dask` the dask one.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=(bench)
prev=""
for arg in "$@"; do
  case "$arg" in
    --peers) extras+=(langgraph) ;;
    --executor=dask) extras+=(dask) ;;
    dask) [ "$prev" = "--executor" ] && extras+=(dask) ;;
  esac
  prev=$arg
done
bash scripts/setup.sh "${extras[@]}"
exec .venv/bin/python -m engine bench "$@"
