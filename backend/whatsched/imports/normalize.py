"""From a table to the rows to write, batch by batch: phones to E.164 with
`whatsched.phones.normalize`, names cleaned and judged by Postgres (the rule the contacts trigger
applies, asked for a whole batch in one statement: `judge`), emails checked, duplicates inside the
file resolved, and every refused row reported with the row number and column a person sees.

Phone parsing is the expensive step (tens of microseconds a number), so each distinct string is
parsed once: pandas factorises the phone column, whose distinct values come in order of first
appearance, so batch k needs exactly the strings that first appear in it. For large files those
strings go to the process pool (both cores) as soon as the file is read, and each batch is handed
to the writer the moment its numbers are known: Postgres writes batch k while the workers parse
batch k+1.

Duplicates: the first row of a phone wins with on_duplicate=skip, the last with update. Across
batches, `seen` remembers the phones already written; in update mode a later row for such a phone
becomes a "repeat" the writer applies on top (and it counts as a duplicate of the file).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from whatsched.imports import phone_pool
from whatsched.imports.phone_pool import PhoneResult, parse_chunk

if TYPE_CHECKING:
    from whatsched.imports.columns import ColumnPlan
    from whatsched.imports.reader import Table

log = logging.getLogger("whatsched.imports")

OnDuplicate = Literal["skip", "update"]
Record = tuple[str, str | None, str | None]  # (phone E.164, name or None, email or None)
# Raw names in, for each: the name as stored (None when blank: the phone names the contact) and
# why it is refused (None when it is not). Postgres answers (writer.judge_names).
NameJudge = Callable[[list[str]], Awaitable[tuple[list[str | None], list[str | None]]]]

MAX_INVALID_LISTED = 1_000
EMAIL_MAX = 320
VALUE_SHOWN_MAX = 200
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"  # the database's check on contacts.email
BATCH_ROWS = 10_000
FIRST_BATCH_ROWS = 2_000  # small, so Postgres starts writing as soon as a few numbers are parsed
# Below this many distinct numbers one thread beats shipping them to other processes.
PARALLEL_MIN_DISTINCT = 10_000
CHUNK_MAX = 2_500  # distinct strings per parse job: small enough for both workers to share a batch


@dataclass(frozen=True)
class Invalid:
    row: int
    column: str
    value: str
    reason: str


@dataclass(frozen=True)
class Names:
    names: list[str | None]  # as stored; None when blank
    problems: list[str | None]  # why a name is refused, e.g. "longer than 200 characters"


@dataclass
class Batch:
    rows: int  # data rows of the file this batch covers
    records: list[Record]  # phones new to this import: inserted, or matched to an existing contact
    repeats: list[Record]  # update mode: phones an earlier batch wrote; these later values win
    duplicates: int  # rows that repeat an earlier (skip) or later (update) row of the file


@dataclass
class Timings:
    parse_wall: float = 0.0  # from the first number sent to the pool to the last one parsed
    parse_cpu: float = 0.0  # CPU seconds the parsing took, all processes together
    decide: float = 0.0  # vectorised checks and duplicate resolution
    names: float = 0.0  # Postgres judging the names, batch by batch (overlapping the writes)
    started: float = field(default_factory=time.perf_counter)


def batch_bounds(
    total: int, batch_rows: int = BATCH_ROWS, first_batch_rows: int = FIRST_BATCH_ROWS
) -> list[tuple[int, int]]:
    """[start, end) of each batch of `total` rows: a small first batch, then batch_rows each."""
    starts = [0, *range(min(first_batch_rows, batch_rows), total, batch_rows)] if total else []
    return list(zip(starts, [*starts[1:], total], strict=True))


def _take(values: list[str | None], codes: Any) -> list[str | None]:
    """`values[code]` for each code, as a list."""
    import numpy as np

    out: list[str | None] = np.asarray(values, dtype=object)[codes].tolist()
    return out


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= VALUE_SHOWN_MAX else text[: VALUE_SHOWN_MAX - 1] + "…"


class Validator:
    """Iterate `batches()` once; `invalid`, `invalid_count` and `timings` are complete after it."""

    def __init__(
        self,
        table: Table,
        plan: ColumnPlan,
        default_country: str | None,
        on_duplicate: OnDuplicate,
        batch_rows: int = BATCH_ROWS,
        first_batch_rows: int = FIRST_BATCH_ROWS,
    ) -> None:
        import numpy as np
        import pandas as pd

        self.table, self.plan, self.country, self.on_duplicate = table, plan, default_country, on_duplicate
        self.total = len(table.frame)
        codes, uniques = pd.factorize(table.frame[plan.phone], sort=False)
        self.codes = codes
        self.distinct = [str(v) for v in uniques]
        self.bounds = batch_bounds(self.total, batch_rows, first_batch_rows)
        highs = np.maximum.accumulate(codes) + 1 if self.total else np.zeros(0, dtype=np.int64)
        # Batch k needs the distinct strings [edges[k], edges[k + 1]): those first seen in it.
        self.edges = [0] + [int(highs[end - 1]) for _, end in self.bounds]
        self.e164 = np.full(len(self.distinct) + 1, None, dtype=object)  # the extra slot answers code -1
        self.reason = np.full(len(self.distinct) + 1, None, dtype=object)
        self.seen: set[str] = set()
        self.invalid: list[Invalid] = []
        self.invalid_count = 0
        self.timings = Timings()
        self._name_label = " + ".join(plan.label(i) for i in plan.name)
        self._pooled = False
        self._jobs: list[tuple[int, asyncio.Future[tuple[list[PhoneResult], float]]]] = []
        self._next_job = 0  # the first job not yet read

    # -- parsing ------------------------------------------------------------------------------

    def _fill(self, lo: int, result: tuple[list[PhoneResult], float]) -> None:
        values, cpu = result
        self.e164[lo : lo + len(values)] = [e164 for e164, _ in values]
        self.reason[lo : lo + len(values)] = [reason for _, reason in values]
        self.timings.parse_cpu += cpu

    def _parsed_at(self, _job: object) -> None:
        self.timings.parse_wall = max(self.timings.parse_wall, time.perf_counter() - self.timings.started)

    def _chunks(self) -> list[tuple[int, int]]:
        """Parse jobs: each batch's new strings cut into at least one piece per worker (at most
        CHUNK_MAX strings each), so the whole pool works on the batch the writer needs next."""
        workers = phone_pool.workers()
        out: list[tuple[int, int]] = []
        for lo, hi in zip(self.edges, self.edges[1:], strict=False):
            size = max(1, min(CHUNK_MAX, -(-(hi - lo) // workers)))
            out += [(at, min(at + size, hi)) for at in range(lo, hi, size)]
        return out

    def _submit(self) -> list[tuple[int, asyncio.Future[tuple[list[PhoneResult], float]]]]:
        """The parse jobs, each with the first distinct string it covers, all queued at once (in
        order) so the pool works ahead of the writer; small files get one job in a thread."""
        self.timings.started = time.perf_counter()
        jobs: list[tuple[int, asyncio.Future[tuple[list[PhoneResult], float]]]]
        if len(self.distinct) < PARALLEL_MIN_DISTINCT or phone_pool.workers() < 2:
            jobs = [(0, asyncio.ensure_future(asyncio.to_thread(parse_chunk, self.distinct, self.country)))]
        else:
            self._pooled = True
            jobs = [
                (lo, asyncio.wrap_future(phone_pool.POOL.submit(parse_chunk, self.distinct[lo:hi], self.country)))
                for lo, hi in self._chunks()
            ]
        for _, job in jobs:
            job.add_done_callback(self._parsed_at)
        return jobs

    @property
    def _parsed(self) -> int:
        """The distinct strings [0, _parsed) are known: those of the jobs already read."""
        return self._jobs[self._next_job][0] if self._next_job < len(self._jobs) else len(self.distinct)

    async def _parse_through(self, needed: int) -> None:
        """Wait until the distinct strings [0, needed) are parsed, filling them in job order."""
        while self._parsed < needed:
            lo, job = self._jobs[self._next_job]
            try:
                self._fill(lo, await job)
            except BrokenProcessPool:
                # A worker died (out of memory, killed): finish here rather than fail the import.
                log.warning("imports: the phone parsing pool broke; parsing in the API process")
                phone_pool.POOL.shutdown()
                self._fill(lo, await asyncio.to_thread(parse_chunk, self.distinct[lo:], self.country))
                self._next_job = len(self._jobs)
                return
            self._next_job += 1

    async def _prepared(self, k: int, judge: NameJudge) -> Batch:
        """Batch k, ready to write: its names judged while its numbers finish parsing, then decided
        in a thread. Batches are prepared one at a time, in order (`seen` and the invalid list
        follow the file)."""
        start, end = self.bounds[k]
        judging = asyncio.ensure_future(self._judged_names(start, end, judge))
        try:
            await self._parse_through(self.edges[k + 1])
            judged = await judging
        finally:
            if not judging.cancel() and not judging.cancelled():
                judging.exception()  # read, so asyncio reports no exception nobody retrieved
        return await asyncio.to_thread(self._timed_decide, start, end, judged)

    async def batches(self, judge: NameJudge) -> AsyncGenerator[Batch, None]:
        """The batches in order. `judge` should use a connection of its own: batch k + 1 is
        prepared (names judged, numbers parsed, rows decided) while the caller writes batch k."""
        self._pooled = False
        self._jobs, self._next_job = self._submit(), 0
        preparing = asyncio.ensure_future(self._prepared(0, judge)) if self.bounds else None
        try:
            for k in range(len(self.bounds)):
                assert preparing is not None
                batch = await preparing
                preparing = asyncio.ensure_future(self._prepared(k + 1, judge)) if k + 1 < len(self.bounds) else None
                yield batch
        finally:
            # Left behind only when the import stopped early (it failed, or its caller left): stop
            # it, or read its outcome (so asyncio does not report an exception nobody retrieved).
            if preparing is not None and not preparing.cancel() and not preparing.cancelled():
                preparing.exception()
            for _, job in self._jobs:
                if not job.done():
                    job.cancel()
            if self._pooled:
                phone_pool.POOL.release(asyncio.get_running_loop())

    # -- deciding -----------------------------------------------------------------------------

    async def _judged_names(self, start: int, end: int, judge: NameJudge) -> Names | None:
        """The batch's names as Postgres stores them, and why any is refused (None: no name column)."""
        if not self.plan.name:
            return None
        import pandas as pd

        frame = self.table.frame.iloc[start:end]
        raw = frame[self.plan.name[0]]
        for extra in self.plan.name[1:]:
            raw = raw + " " + frame[extra]
        # Each distinct raw name is judged once (lists repeat first names), then mapped back.
        codes, distinct = pd.factorize(raw, sort=False, use_na_sentinel=False)
        mark = time.perf_counter()
        names, problems = await judge(distinct.tolist())
        self.timings.names += time.perf_counter() - mark
        return Names(_take(names, codes), _take(problems, codes))

    def _timed_decide(self, start: int, end: int, judged: Names | None) -> Batch:
        mark = time.perf_counter()
        try:
            return self._decide(start, end, judged)
        finally:
            self.timings.decide += time.perf_counter() - mark

    def _decide(self, start: int, end: int, judged: Names | None) -> Batch:
        import numpy as np
        import pandas as pd

        plan = self.plan
        frame, rows, codes = self.table.frame.iloc[start:end], self.table.rows[start:end], self.codes[start:end]
        size = end - start
        e164, reason = self.e164[codes], self.reason[codes]
        bad_phone = pd.isna(e164)

        if judged is not None:
            name = pd.Series([n or "" for n in judged.names], dtype=object)
            problem = np.array(judged.problems, dtype=object)
            bad_name = pd.notna(problem) & ~bad_phone
        else:
            name = pd.Series([""] * size, dtype=object)
            problem = np.full(size, None, dtype=object)
            bad_name = np.zeros(size, dtype=bool)

        if plan.email is not None:
            email = frame[plan.email]
            ok = (email == "") | ((email.str.len() <= EMAIL_MAX) & email.str.match(EMAIL_RE))
            bad_email = ~ok.to_numpy(dtype=bool) & ~bad_phone & ~bad_name
        else:
            email = pd.Series([""] * size, dtype=object)
            bad_email = np.zeros(size, dtype=bool)

        refused = bad_phone | bad_name | bad_email
        self.invalid_count += int(refused.sum())
        for i in np.flatnonzero(refused)[: max(0, MAX_INVALID_LISTED - len(self.invalid))]:
            if bad_phone[i]:
                item = Invalid(int(rows[i]), plan.label(plan.phone), _shown(frame[plan.phone].iat[i]), str(reason[i]))
            elif bad_name[i]:
                item = Invalid(int(rows[i]), self._name_label, _shown(name.iat[i]), f"name {problem[i]}")
            else:
                assert plan.email is not None
                item = Invalid(int(rows[i]), plan.label(plan.email), _shown(email.iat[i]), "not a valid email address")
            self.invalid.append(item)

        keep = np.flatnonzero(~refused)
        repeated = pd.Series(e164[keep]).duplicated(keep="first" if self.on_duplicate == "skip" else "last")
        chosen = keep[~repeated.to_numpy(dtype=bool)]
        phones = e164[chosen]
        earlier = np.fromiter((p in self.seen for p in phones), dtype=bool, count=len(chosen))
        names, emails = name.to_numpy(dtype=object), email.to_numpy(dtype=object)

        def records(at: Any) -> list[Record]:
            return [(p, n or None, m or None) for p, n, m in zip(e164[at], names[at], emails[at], strict=True)]

        fresh, again = chosen[~earlier], chosen[earlier]
        self.seen.update(e164[fresh])
        return Batch(
            rows=size,
            records=records(fresh),
            repeats=records(again) if self.on_duplicate == "update" else [],
            duplicates=int(repeated.sum()) + len(again),
        )
