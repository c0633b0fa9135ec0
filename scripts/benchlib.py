"""What the benchmark scripts share: recording a figure for scripts/bench_all.py's table.

Each benchmark prints its own report; when BENCH_RESULTS names a file, every figure is also
appended there as one JSON line {benchmark, figure, value, unit, target}.
"""

from __future__ import annotations

import json
import os


def record(benchmark: str, figure: str, value: float, unit: str, target: str = "") -> None:
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps({"benchmark": benchmark, "figure": figure, "value": value, "unit": unit,
                              "target": target}) + "\n")  # fmt: skip
