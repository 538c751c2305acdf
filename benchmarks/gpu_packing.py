"""Benchmark 7, GPU packing: aggregate trial-epochs/s of 1, 2, 4, 8 trials per GPU.

Not implemented beyond its guard yet: without CUDA it prints one JSON line with
``"skipped": "no CUDA"`` and exits 0, like gpu_throughput.py.

    python benchmarks/gpu_packing.py
"""

from __future__ import annotations

import sys

import torch
from _common import emit


def main() -> int:
    if not torch.cuda.is_available():
        emit("gpu_packing", {"skipped": "no CUDA"}, ratio=None,
             target="trial-epochs/s grows with trials per GPU", met=None)
        print("skipped: no CUDA", file=sys.stderr)
        return 0
    print("gpu_packing: the CUDA measurement is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
