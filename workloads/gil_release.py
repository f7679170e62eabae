"""A contrast CPU workload that releases the GIL: hashing and compressing big buffers.

``hashlib`` (for inputs over 2 KiB) and ``zlib`` drop the GIL while their C
code runs, so threads running this workload overlap on several cores, where
``workloads.genai`` (pure Python) runs one thread at a time. It shows why
"threads are fine for CPU work" is sometimes true, and which kind of work it
is true for: the engine's thread lane is enough here, its process lane is
what pure-Python work needs.

The same shape as ``genai``: ``process(text, units, seed)`` is deterministic
and depends on its input, ``calibrate()`` measures ms per unit on this
machine and ``units_for`` sizes a call in seconds of CPU.
"""

from __future__ import annotations

import hashlib
import random
import zlib
from typing import Any

from .genai import Calibration, calibrate_units, units_for

__all__ = ["BUFFER_BYTES", "WINDOW_BYTES", "Calibration", "calibrate", "make_buffer",
           "process", "units_for"]  # fmt: skip

BUFFER_BYTES = 1 << 20  # hashed whole by every unit
WINDOW_BYTES = 128 << 10  # compressed by every unit, at an offset that moves

# Random bytes mapped onto letters and spaces: text-like data that deflate
# really has to work on (pure random bytes would be stored, not compressed).
_LETTERS = bytes(b" etaoinshrdlucmfwypvbgkjqxz"[i % 27] for i in range(256))


def make_buffer(text: str, seed: int = 0, size: int = BUFFER_BYTES) -> bytes:
    """``size`` deterministic text-like bytes derived from ``text`` and ``seed``.

    Built with C routines (``randbytes``, ``translate``): milliseconds of
    GIL-holding set-up per call, small next to the units that follow.
    """
    if size < WINDOW_BYTES + 1:
        raise ValueError(f"size must be > {WINDOW_BYTES}, got {size}")
    rng = random.Random((seed << 32) ^ zlib.crc32(text.encode()))
    return rng.randbytes(size).translate(_LETTERS)


def process(text: str, units: int, seed: int = 0) -> dict[str, Any]:
    """Do ``units`` units of GIL-releasing work on a buffer derived from ``text``.

    One unit: SHA-256 of the whole 1 MiB buffer chained to the previous
    digest, then zlib (level 6) over a 128 KiB window whose offset depends on
    that digest. Each unit needs the one before, so none can be skipped.
    """
    if units < 0:
        raise ValueError(f"units must be >= 0, got {units}")
    buf = memoryview(make_buffer(text, seed))
    span = len(buf) - WINDOW_BYTES
    digest = hashlib.sha256(text.encode()).digest()
    compressed = 0
    for _ in range(units):
        h = hashlib.sha256(digest)
        h.update(buf)  # > 2 KiB: hashed with the GIL released
        offset = int.from_bytes(h.digest()[:4], "big") % span
        packed = zlib.compress(buf[offset : offset + WINDOW_BYTES], 6)  # GIL released
        compressed += len(packed)
        # Small inputs: these two hold the GIL, for microseconds.
        digest = hashlib.sha256(h.digest() + packed[-64:]).digest()
    return {
        "units": units,
        "bytes_hashed": units * len(buf),
        "bytes_compressed": compressed,
        "checksum": digest.hex()[:16],
    }


def calibrate(target_s: float = 0.05, repeats: int = 7) -> Calibration:
    """Measure ms per unit of ``process`` on this machine."""
    return calibrate_units(
        lambda units: process("calibration", units, seed=1),
        target_s=target_s,
        repeats=repeats,
        workload="gil_release",
    )
