"""PhysioNet 2012 parsing speed: the full parse of one set against just reading its archive.

Three timings on the same machine in the same run, each the best of ``--repeats``:

- reference: read and decompress every member of ``set-{s}.tar.gz`` into memory (the floor any
  parser of these files pays);
- parse: ``parse_set`` with no cache (read + parse + resample + labels -> ``ClinicalDataset``);
- cached: ``load_set`` with a warm Parquet cache (hash the two source files + read the cache).

The ratio parse / reference says how much the parsing adds on top of the I/O, independent of
the machine's speed. The target is a full parse well under a minute.

    python benchmarks/physionet_parse.py [--root DIR] [--set a] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backdoor_study.data import physionet2012 as pn
from backdoor_study.utils import write_json


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Shortest wall time of ``repeats`` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run(root: Path, set_name: str, repeats: int) -> dict[str, Any]:
    tar_path, outcomes_path = pn.set_files(root, set_name)
    reference_s, members = best_of(lambda: pn.read_tar_members(tar_path), repeats)
    parse_s, ds = best_of(lambda: pn.parse_set(tar_path, outcomes_path), repeats)
    with tempfile.TemporaryDirectory() as cache_dir:
        start = time.perf_counter()
        pn.load_set(root, set_name, cache_dir=cache_dir)  # parse + write the cache
        first_load_s = time.perf_counter() - start
        cached_s, (cached, _) = best_of(
            lambda: pn.load_set(root, set_name, cache_dir=cache_dir), repeats
        )
    assert cached.digest() == ds.digest(), "the cache must give back exactly the parsed dataset"
    return {
        "set": set_name,
        "n_stays": ds.n_stays,
        "n_members": len(members),
        "n_deaths": int(ds.y.sum()),
        "reference_read_s": reference_s,
        "parse_s": parse_s,
        "parse_over_reference": parse_s / reference_s,
        "first_load_with_cache_write_s": first_load_s,
        "cached_load_s": cached_s,
        "cached_over_parse": cached_s / parse_s,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--root", type=Path, default=pn.default_root(), help="directory of the challenge files"
    )
    p.add_argument("--set", dest="set_name", default="a", choices=["a", "b"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    result = run(args.root, args.set_name, args.repeats)
    print(
        f"PhysioNet 2012 set {args.set_name}: {result['n_stays']} stays, {result['n_deaths']} deaths"
    )
    print(f"  reference (read + decompress archive): {result['reference_read_s']:.3f} s")
    print(
        f"  parse, no cache:                       {result['parse_s']:.3f} s"
        f"  ({result['parse_over_reference']:.2f}x reference)"
    )
    print(
        f"  first load (parse + write cache):      {result['first_load_with_cache_write_s']:.3f} s"
    )
    print(
        f"  cached load:                           {result['cached_load_s']:.3f} s"
        f"  ({result['cached_over_parse']:.2f}x parse)"
    )
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
