"""How fast this machine is, against the reference figures in ../shared/MEASUREMENTS.md.

    .venv/bin/python scripts/bench_machine.py

Times the reference's own single-core floor: 100,000 mixed numbers (E.164, Chilean national with
region CL, formatted US) through phonenumbers.parse + is_valid_number + E.164 format, in a plain
loop. The reference machine did it in 30.7 µs per row; the ratio tells how much slower or faster
this machine's cores are, so the other benchmarks' figures can be compared across machines.
"""

from __future__ import annotations

import random
import time

import benchlib
import phonenumbers

REFERENCE_US = 30.7
ROWS = 100_000


def numbers(rows: int) -> list[tuple[str, str | None]]:
    rng = random.Random(1)
    out: list[tuple[str, str | None]] = []
    for i in range(rows):
        if i % 3 == 0:
            out.append((f"+569{rng.randrange(10**7, 10**8)}", None))
        elif i % 3 == 1:
            out.append((f"9 {rng.randrange(1000, 9999)} {rng.randrange(1000, 9999)}", "CL"))
        else:
            out.append((f"({rng.randrange(201, 989)}) {rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}", "US"))
    return out


def main() -> None:
    rows = numbers(ROWS)
    started = time.perf_counter()
    for text, region in rows:
        number = phonenumbers.parse(text, region)
        phonenumbers.is_valid_number(number)
        phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    per_row_us = (time.perf_counter() - started) / ROWS * 1e6
    ratio = per_row_us / REFERENCE_US
    print(
        f"phonenumbers parse + is_valid_number + E.164: {per_row_us:.1f} µs per row (reference machine {REFERENCE_US})"
    )
    print(f"this machine's cores are {ratio:.2f}x the reference machine's time")
    benchlib.record("machine", "phonenumbers floor, µs per row (reference 30.7)", per_row_us, "µs", "")
    benchlib.record("machine", "time relative to the reference machine", ratio, "x", "")


if __name__ == "__main__":
    main()
