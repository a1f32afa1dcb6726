"""Kernel benchmarks of issue 7 from a source checkout: the same as the `sparse-bench` command.

    python benchmarks/bench_kernels.py --out benchmarks/results/h100      # needs a GPU and CuPy

See `sparse_lightning/cli/bench.py` for the options and `sparse_lightning/kernels/benchmark.py` for
the method (CUDA-graph replay, 20 calls per graph, median of 7 replays).
"""

import sys

from sparse_lightning.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
