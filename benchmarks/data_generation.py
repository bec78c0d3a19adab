"""Benchmark: generate a synthetic cohort (default 100,000 stays) and write it as Parquet.

The reference, measured in the same run, is raw RNG throughput for the same volume: filling an
(N, T, F) float32 array with ``rng.standard_normal``. The ratio (generator / reference) says how
many "raw normal draws" of work the generator spends per value, independent of the machine.

    .venv/bin/python benchmarks/data_generation.py [--n-stays N] [--n-steps T] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from backdoor_study.data.schema import write_parquet
from backdoor_study.data.synthetic import VARIABLES, generate_cohort


def _reference_seconds(n: int, t: int, f: int, seed: int) -> float:
    """Seconds to allocate and fill the same (N, T, F) float32 grid with standard normals."""
    start = time.perf_counter()
    out = np.empty((n, t, f), dtype=np.float32)
    np.random.default_rng(seed).standard_normal(dtype=np.float32, out=out)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-stays", type=int, default=100_000)
    parser.add_argument("--n-steps", type=int, default=48)
    parser.add_argument("--seed", type=int, default=2012)
    parser.add_argument("--keep", type=Path, default=None, help="write main.parquet here (kept)")
    args = parser.parse_args(argv)
    n, t, f = args.n_stays, args.n_steps, len(VARIABLES)

    reference = _reference_seconds(n, t, f, args.seed)
    start = time.perf_counter()
    ds = generate_cohort(n, t, seed=args.seed)
    generate = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or Path(tmp)
        start = time.perf_counter()
        path = write_parquet(ds, out_dir / "main.parquet")
        write = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6

    result = {
        "stays": float(n),
        "reference_s": reference,
        "generate_s": generate,
        "write_parquet_s": write,
        "generate_stays_per_s": n / generate,
        "total_stays_per_s": n / (generate + write),
        "ratio_generate_vs_reference": generate / reference,
        "ratio_total_vs_reference": (generate + write) / reference,
    }
    print(f"cohort: {n:,} stays x {t} hours x {f} variables, prevalence {ds.y.mean():.4f}")
    print(f"reference (rng.standard_normal, same volume): {reference:8.2f} s")
    print(
        f"generate_cohort:                              {generate:8.2f} s  {n / generate:>10,.0f} stays/s"
    )
    print(f"write_parquet ({size_mb:,.0f} MB):                     {write:8.2f} s")
    print(
        f"generate + write:                             {generate + write:8.2f} s  "
        f"{n / (generate + write):>10,.0f} stays/s"
    )
    print(
        f"ratio generate / reference: {generate / reference:.1f}x; "
        f"(generate + write) / reference: {(generate + write) / reference:.1f}x"
    )
    return result


if __name__ == "__main__":
    main()
