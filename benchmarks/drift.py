"""Time drift profiling and comparison on a large numeric feature table.

Builds a reference profile of ``--rows`` x ``--features`` random numeric features (with a
few nulls), then compares a second, shifted frame of the same size with it, and prints
``{"rows", "features", "profile_seconds", "compare_seconds", ...}`` as one JSON line.

    python benchmarks/drift.py --rows 1000000 --features 50
"""

import argparse
import json
import time

import numpy as np
import pandas as pd

from evaluation.drift import build_profile, compare


def random_frame(rows: int, features: int, shift: float, seed: int) -> pd.DataFrame:
    """Normal features with ~1% nulls; ``shift`` is added to every second feature."""
    rng = np.random.default_rng(seed)
    columns = {}
    for j in range(features):
        x = rng.normal(loc=shift * (j % 2), scale=1.0 + j % 5, size=rows)
        x[rng.random(rows) < 0.01] = np.nan
        columns[f"f{j:02d}"] = x
    return pd.DataFrame(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reference = random_frame(args.rows, args.features, shift=0.0, seed=args.seed)
    current = random_frame(args.rows, args.features, shift=0.5, seed=args.seed + 1)

    start = time.perf_counter()
    profile = build_profile(reference)
    profile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    report = compare(profile, current)
    compare_seconds = time.perf_counter() - start

    result = {
        "rows": args.rows,
        "features": args.features,
        "profile_seconds": round(profile_seconds, 3),
        "compare_seconds": round(compare_seconds, 3),
        "drifted_features": len(report.drifted_features),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
