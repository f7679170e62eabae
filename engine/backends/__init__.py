"""Executors for the cpu lane beyond the default process pool.

Each backend lives in its own module and imports its third-party package
lazily, so ``import engine`` never needs them:

- :mod:`engine.backends.dask`: a dask.distributed cluster (``engine[dask]``).
"""
