"""Run every benchmark in sequence and write one table of figures.

    .venv/bin/python scripts/bench_all.py [--out BENCHMARKS.md]

Runs scripts/bench_machine.py (how fast this machine's cores are against the reference machine),
then bench_api.py, bench_import.py, bench_dispatch.py and bench_realtime.py with their defaults
(each on its own throwaway database: embedded, or DATABASE_URL's server), collects the
figures each one records (scripts/benchlib.py), and writes a Markdown table with the machine it
ran on and the commit. Each benchmark's full output is kept beside it in .data/bench/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ["bench_machine.py", "bench_api.py", "bench_import.py", "bench_dispatch.py", "bench_realtime.py"]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))  # fmt: skip
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        memory = "unknown memory"
    return f"{os.cpu_count()} cores ({cpu}), {memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".data" / "bench" / "BENCHMARKS.md"))
    ap.add_argument("--only", nargs="*", help="run only these scripts (e.g. bench_api.py)")
    args = ap.parse_args()
    out_dir = ROOT / ".data" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.jsonl"
    results.unlink(missing_ok=True)
    failures = []
    for script in args.only or BENCHMARKS:
        print(f"== {script}", flush=True)
        log = out_dir / (Path(script).stem + ".log")
        started = time.monotonic()
        with open(log, "w", encoding="utf-8") as handle:
            proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script)], cwd=ROOT, stdout=handle,
                                  stderr=subprocess.STDOUT, env={**os.environ, "BENCH_RESULTS": str(results)})  # fmt: skip
        print(log.read_text(), end="", flush=True)
        print(f"== {script}: exit {proc.returncode} in {time.monotonic() - started:.0f} s", flush=True)
        if proc.returncode != 0:
            failures.append(script)

    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}, commit {commit or 'unknown'}, "
        f"with `.venv/bin/python scripts/bench_all.py`.",
        "",
        "| benchmark | figure | value | target |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        value = row["value"]
        shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
        lines.append(f"| {row['benchmark']} | {row['figure']} | {shown} {row['unit']} | {row['target']} |")
    if failures:
        lines += ["", "Failed to run: " + ", ".join(failures)]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
