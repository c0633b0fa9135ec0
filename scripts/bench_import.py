"""Benchmark POST /api/contacts/import end to end on a messy 100,000-row CSV.

    .venv/bin/python scripts/bench_import.py [--rows 100000] [--rounds 3] [--updates 1] [--group]
        [--distinct-names] [--index-costs ROUNDS]

Creates a throwaway database (on DATABASE_URL's server, or an embedded PostgreSQL it starts), a
user with a token and a group, and starts the API as a real process (uvicorn, one worker). The
CSV has what real exports have: names with accents and commas, numbers as E.164, national with
spaces, dashes, dots or parentheses, with a 00 prefix; 5 % invalid (too short, letters, fixed
lines, empty) and 5 % repeating an earlier number in another format. Each run uploads the file
(multipart; with --group, into a group) and waits for the answer, while a sampler reads the RSS
of the API process and of its children (the phone-parsing workers) every 10 ms. The first
`--rounds` runs are first imports (run 1 with a cold worker pool; before each later one the user's
contacts are deleted), each followed by its floors, so the ratios are medians with their spread;
then `--updates` runs send the same numbers with every name changed, with on_duplicate=update, so
every contact is really updated.

Prints, per run: end-to-end seconds, rows/s, peak RSS of the API process alone and with its
children, the server's own timings (Server-Timing: read = decode + parse the file; phones = from
the first number sent to the pool to the last parsed; phones_cpu = CPU seconds of that parsing;
validate = checks and duplicates; names = Postgres judging the names, on a second connection
while the first writes; write = time in Postgres; wait = Postgres idle, waiting for numbers; commit) and the share of the end-to-end time spent parsing phones. Parsing overlaps the
writes (Postgres writes batch k while the workers parse batch k+1), so the shares do not add up.
The load average is printed too: other work on the machine moves these figures a lot.

The floor, measured in the same run right after each import: (a) `COPY` of the rows the import
accepted (name, phone, email) into the same table, public.contacts with all its indexes, triggers
and checks, as a second user, in a transaction rolled back (then VACUUM); (b) the phone parsing's
CPU seconds divided by the cores. The ratio printed is end to end / max(a, b); target: <= 1.3.
The two parts are not free to overlap: they share the machine's cores, so together they need at
least (COPY's CPU + parsing's CPU) / cores, which the script prints as the shared-cores bound
(on 2 cores, where parsing costs about what COPY does, it lies above max(a, b)).
After each first import comes the SQL floor too: the import's own writes (whatsched.imports.writer,
the same statements in the same batch sizes) of the same accepted rows, numbers already parsed, as
a second user in one rolled-back transaction. The COPY floor runs as a superuser, because COPY FROM
is refused on a table with row-level security: SQL floor / COPY is what writing as the user costs
(RLS checks, INSERT ... ON CONFLICT from a staging table), end to end / SQL floor what reading the
file, parsing and the pipeline add.
On a machine others share, wall time mostly measures waiting for a core: the script also prints
the CPU the import used (the API process, its parsing workers, and the database's server
processes when the server runs on this machine) against the CPU of the floor's two parts.
With --index-costs, each index on contacts is then dropped in turn (inside a rolled-back
transaction) and the same COPY timed without it, in alternating rounds: what each index costs.
Target on a 2-core machine: < 5 s, < 400 MB, end to end within 1.3x of the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import jwt
import psutil

from whatsched.auth.keys import local_signing_key
from whatsched.auth.local import LocalProvider
from whatsched.db.embedded import free_port
from whatsched.db.pool import create_pool, user_begin
from whatsched.db.setup import Prepared
from whatsched.imports import writer
from whatsched.imports.normalize import Batch, batch_bounds

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import benchlib  # noqa: E402

FIRST = ["José", "María", "Ana", "Íñigo", "Begoña", "Ñuño", "Sofía", "Matías", "Valentina", "Agustín", "Renée", "Zoë"]
LAST = ["Muñoz", "González", "Pérez", "Núñez", "Díaz", "Rodríguez", "Peña", "Ibáñez", "O'Higgins", "Sáez"]
INVALID = ["12345", "hola", "", "+44 20 7946 0958", "9 123", "+56 9", "n/a", "0000"]


def messy(rng: random.Random, digits: str) -> str:
    a, b = digits[:4], digits[4:]
    return rng.choice(
        [
            f"+569{digits}",
            f"+56 9 {a} {b}",
            f"9 {a} {b}",
            f"9-{a}-{b}",
            f"(9) {a}-{b}",
            f"9.{a}.{b}",
            f"0056 9 {a} {b}",
            f"00569{digits}",
            f"+56 (9) {a}.{b}",
        ]
    )


def letters(i: int) -> str:
    """A word of its own for each i: A, B, ..., Z, Ba, Bb, ... (a plain name needs no cleaning)."""
    word = ""
    while True:
        i, digit = divmod(i, 26)
        word = chr(ord("a") + digit) + word
        if not i:
            return word.capitalize()


def make_csv(rows: int, seed: int = 6, suffix: str = "", distinct_names: bool = False) -> tuple[bytes, dict[str, int]]:
    """The file and what a correct import must answer for it (as a first import). The same seed
    gives the same numbers; a `suffix` on every last name makes each contact's name change. Names
    repeat (12 first names, 10 last names) unless `distinct_names` adds a word of each row's own."""
    rng = random.Random(seed)
    lines = ["Nombre,Apellido,Teléfono,Correo"]
    seen: list[str] = []  # digits of valid numbers so far
    used: set[str] = set()
    invalid = duplicates = 0
    for i in range(rows):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        roll = rng.random()
        if roll < 0.05:
            phone, invalid = rng.choice(INVALID), invalid + 1
        elif roll < 0.10 and seen:
            phone, duplicates = messy(rng, rng.choice(seen)), duplicates + 1
        else:
            digits = f"{rng.randrange(10_000_000, 100_000_000):08d}"
            while digits in used:
                digits = f"{rng.randrange(10_000_000, 100_000_000):08d}"
            used.add(digits)
            seen.append(digits)
            phone = messy(rng, digits)
        email = f"{first.lower()}.{i}@example.com" if rng.random() < 0.6 else ""
        name = f'"{first}, {last}"' if rng.random() < 0.05 else first
        last += f" {letters(i)}" if distinct_names else ""
        lines.append(f"{name},{last}{suffix},{phone},{email}")
    expected = {"total_rows": rows, "created": len(seen), "skipped_duplicates": duplicates, "invalid_count": invalid}
    return ("\n".join(lines) + "\n").encode("utf-8"), expected


class Sampler(threading.Thread):
    """Peak RSS of a process, alone and with all its descendants, sampled every `interval` s."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak_main = 0
        self.peak_total = 0
        self.peak_children = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                main = self.process.memory_info().rss
                kids = 0
                for child in self.process.children(recursive=True):
                    try:
                        kids += child.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            self.peak_main = max(self.peak_main, main)
            self.peak_children = max(self.peak_children, kids)
            self.peak_total = max(self.peak_total, main + kids)
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


class CpuUse:
    """CPU seconds (user + system) of the API process, of its children (the parsing workers) and of
    the benchmark database's server processes (when the server runs on this machine), per process,
    so a delta counts processes that started in between. Steadier than wall time when other work
    shares the machine: it tells how much work an import is, not how long it waited for a core."""

    def __init__(self, api_pid: int, admin_url: str) -> None:
        self.api = psutil.Process(api_pid)
        self.admin_url = admin_url

    async def _server_pids(self) -> list[int]:
        conn = await asyncpg.connect(self.admin_url)
        try:
            rows = await conn.fetch(
                "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        return [r["pid"] for r in rows]

    def snapshot(self) -> dict[str, dict[int, float]]:
        def cpu(process: psutil.Process) -> float:
            times = process.cpu_times()
            return float(times.user + times.system)

        kids: dict[int, float] = {}
        for child in self.api.children(recursive=True):
            try:
                kids[child.pid] = cpu(child)
            except psutil.Error:
                pass
        server = {pid: used for pid in asyncio.run(self._server_pids()) if (used := backend_cpu(pid)) is not None}
        return {"API": {self.api.pid: cpu(self.api)}, "workers": kids, "Postgres": server}

    @staticmethod
    def used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        return {
            group: sum(seconds - before[group].get(pid, 0.0) for pid, seconds in after[group].items())
            for group in after
        }


def server_timing(header: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if name and rest:
            out[name] = float(rest) / 1000
    return out


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the API process exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the API did not start")


@dataclass(frozen=True)
class Users:
    """The app's URL and the admin URL; the importing user (`owner`, with a token and a group) and
    a second user with a token: the floors write the same rows as that user, so (created_by,
    phone) stays unique."""

    app_url: str
    admin_url: str
    owner: str
    token: str
    group: str
    other: str
    other_token: str


async def setup(prepared: Prepared, data_dir: Path, public_url: str) -> Users:
    key = local_signing_key(data_dir, None)
    pool = await create_pool(prepared.app_url, min_size=1, max_size=2)
    provider = LocalProvider(pool, key, public_url + "/auth/v1", 3600, 30)
    await provider.create_user("bench@example.com", "bench password 1")
    await provider.create_user("floor@example.com", "bench password 2")
    session = await provider.login("bench@example.com", "bench password 1", "127.0.0.1", "bench")
    other = await provider.login("floor@example.com", "bench password 2", "127.0.0.1", "bench")
    await pool.close()
    admin = await asyncpg.connect(prepared.admin_url)
    group = await admin.fetchval(
        "insert into groups (created_by, name) values ($1, 'Importados') returning id::text", session.user.id
    )
    await admin.close()
    return Users(
        prepared.app_url,
        prepared.admin_url,
        str(session.user.id),
        session.access_token,
        str(group),
        str(other.user.id),
        other.access_token,
    )


COLUMNS = ["created_by", "name", "phone", "email"]


async def index_drops(admin_url: str) -> dict[str, str]:
    """Each index on contacts and the statement that removes it (with its constraint, and what
    depends on that: the foreign keys that reference contacts)."""
    conn = await asyncpg.connect(admin_url)
    try:
        rows = await conn.fetch(
            "select i.relname as index, c.conname as constraint from pg_index x"
            " join pg_class i on i.oid = x.indexrelid"
            " left join pg_constraint c on c.conindid = x.indexrelid and c.conrelid = x.indrelid"
            " where x.indrelid = 'public.contacts'::regclass order by i.relname"
        )
    finally:
        await conn.close()
    return {
        r["index"]: (
            f'alter table public.contacts drop constraint "{r["constraint"]}" cascade'
            if r["constraint"]
            else f'drop index public."{r["index"]}"'
        )
        for r in rows
    }


def backend_cpu(pid: int) -> float | None:
    """CPU seconds a server process has used (user + system), when the server runs on this machine:
    steadier than wall time on a machine others share."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
            return None  # a server elsewhere: the pid is not one of ours
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def copy_floor(
    admin_url: str, owner: str, other: str, variants: dict[str, list[str]], rounds: int = 1
) -> dict[str, list[tuple[float, float | None]]]:
    """Seconds `COPY` takes to write the contacts `owner` has (the rows the import accepted) into
    public.contacts again as `other`, for each variant (statements run first, untimed, in the same
    transaction: dropping indexes); wall time and the server process's CPU time. Each COPY is
    rolled back and the table vacuumed after it."""
    conn = await asyncpg.connect(admin_url)
    try:
        pid = await conn.fetchval("select pg_backend_pid()")
        data = io.BytesIO()
        await conn.copy_from_query(
            "select $1::uuid, name, phone, email from public.contacts where created_by = $2::uuid order by phone",
            other,
            owner,
            output=data,
        )
        out: dict[str, list[tuple[float, float | None]]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, statements in variants.items():
                tx = conn.transaction()
                await tx.start()
                try:
                    for statement in statements:
                        await conn.execute(statement)
                    data.seek(0)
                    cpu, began = backend_cpu(pid), time.perf_counter()
                    await conn.copy_to_table("contacts", schema_name="public", source=data, columns=COLUMNS)
                    wall, cpu_after = time.perf_counter() - began, backend_cpu(pid)
                    out[name].append((wall, None if cpu is None or cpu_after is None else cpu_after - cpu))
                finally:
                    await tx.rollback()
                await conn.execute("vacuum public.contacts")
        return out
    finally:
        await conn.close()


def index_costs(admin_url: str, owner: str, other: str, rounds: int) -> None:
    """COPY with every index, without each one in turn, with none, and with no trigger (nor the
    foreign key's check), in alternating rounds."""
    drops = asyncio.run(index_drops(admin_url))
    variants = {"all indexes": [], **{f"without {name}": [sql] for name, sql in drops.items()}}
    variants["no index at all"] = list(drops.values())
    variants["all indexes, no trigger or foreign-key check"] = ["set local session_replication_role = replica"]
    times = asyncio.run(copy_floor(admin_url, owner, other, variants, rounds))

    def medians(name: str) -> tuple[float, float | None]:
        cpus = [c for _, c in times[name] if c is not None]
        return statistics.median(w for w, _ in times[name]), statistics.median(cpus) if cpus else None

    full_wall, full_cpu = medians("all indexes")
    print(f"\nCOPY of the accepted rows into contacts, median of {rounds} alternating rounds (wall; server CPU):")
    for name in times:
        wall, cpu = medians(name)
        line = f"  {name:<48} wall {wall:5.2f} s"
        if cpu is not None and full_cpu is not None:
            line += f"  CPU {cpu:5.2f} s"
            if name != "all indexes":
                line += f"  (costs {full_cpu - cpu:+.2f} CPU-s, {(full_cpu - cpu) / full_cpu:+.0%} of the COPY)"
        elif name != "all indexes":
            line += f"  (costs {full_wall - wall:+.2f} s, {(full_wall - wall) / full_wall:+.0%})"
        print(line + "  [" + ", ".join(f"{w:.2f}" for w, _ in times[name]) + "]")


@dataclass
class Round:
    """One first import and its floors, measured one after the other."""

    elapsed: float
    copy_s: float
    copy_cpu: float | None
    parse_cpu: float
    sql_s: float
    sql_cpu: float | None

    def floor(self, cores: int) -> float:
        return floor_of(self.copy_s, self.parse_cpu, cores)


def floor_of(copy_s: float, parse_cpu: float, cores: int) -> float:
    """The issue's floor: the larger of the COPY and the parsing's CPU spread over the cores."""
    return max(copy_s, parse_cpu / cores)


async def sql_floor(app_url: str, admin_url: str, owner: str, other_token: str) -> tuple[float, float | None]:
    """Seconds the import's own writes take with the numbers already parsed: the rows `owner` has
    (what the import accepted), shuffled as the file's are, cut as the import cuts its rows
    (`batch_bounds`, here counted in accepted rows) and written by `whatsched.imports.writer` as the
    second user (the token's) in one transaction as that user (RLS, the same statements), rolled
    back; wall time and the server process's CPU time. Then VACUUM."""
    admin = await asyncpg.connect(admin_url)
    pool = await create_pool(app_url, min_size=1, max_size=1)
    try:
        rows = await admin.fetch(
            "select phone, name, email from public.contacts where created_by = $1::uuid order by random()", owner
        )
        records = [(r["phone"], r["name"], r["email"]) for r in rows]
        batches = [Batch(end - start, records[start:end], [], 0) for start, end in batch_bounds(len(records))]
        claims = jwt.decode(other_token, options={"verify_signature": False})
        written = writer.Written()
        async with pool.acquire() as conn:
            await conn.execute(user_begin(claims))
            try:
                pid = await conn.fetchval("select pg_backend_pid()")
                await writer.prepare(conn)
                cpu, began = backend_cpu(pid), time.perf_counter()
                for batch in batches:
                    await writer.write_batch(conn, batch, [], "skip", written)
                wall, cpu_after = time.perf_counter() - began, backend_cpu(pid)
            finally:
                await conn.execute("rollback")
        if written.created != len(records):
            raise SystemExit(f"the SQL floor wrote {written.created} of {len(records)} rows")
        await admin.execute("vacuum public.contacts")
        return wall, None if cpu is None or cpu_after is None else cpu_after - cpu
    finally:
        await pool.close()
        await admin.close()


async def empty_book(admin_url: str, owner: str) -> None:
    """The owner's contacts gone (and vacuumed), so that the next import is a first import again."""
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute("delete from public.contacts where created_by = $1::uuid", owner)
        await admin.execute("vacuum public.contacts")
    finally:
        await admin.close()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f})"


def measure(
    args: argparse.Namespace, db: benchlib.Throwaway, data_dir: Path, files: list[bytes], expected: dict[str, int]
) -> None:
    api: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        public_url = f"http://127.0.0.1:{port}"
        users = asyncio.run(setup(db.prepared, data_dir, public_url))
        env = {
            **os.environ,
            "DATABASE_URL": db.url,
            "APP_DATABASE_URL": users.app_url,
            "DATA_DIR": str(data_dir),
            "PUBLIC_URL": public_url,
            "BRIDGE_URL": "http://127.0.0.1:9",
        }
        command = [sys.executable, "-m", "uvicorn", "--factory", "whatsched.api.app:app", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
        api = subprocess.Popen(command, env=env, cwd=data_dir)
        wait_ready(port, api)
        idle = psutil.Process(api.pid).memory_info().rss
        print(f"API process {api.pid} on {public_url}, idle RSS {idle / 1e6:.0f} MB", flush=True)

        cores = os.cpu_count() or 1
        rounds: list[Round] = []
        headers = {"Authorization": f"Bearer {users.token}"}
        with httpx.Client(base_url=public_url, headers=headers, timeout=300) as http:
            runs = [("skip", files[0])] * args.rounds + [("update", content) for content in files[1:]]
            for run, (mode, content) in enumerate(runs, start=1):
                first = mode == "skip"
                if first and run > 1:
                    asyncio.run(empty_book(users.admin_url, users.owner))
                sampler = Sampler(api.pid)
                sampler.start()
                meter = CpuUse(api.pid, users.admin_url)
                cpu_before = meter.snapshot()
                began = time.perf_counter()
                response = http.post(
                    "/api/contacts/import",
                    files={"file": ("contactos.csv", content, "text/csv")},
                    data={"on_duplicate": mode, **({"group_ids": users.group} if args.group else {})},
                )
                elapsed = time.perf_counter() - began
                cpu_used = CpuUse.used(cpu_before, meter.snapshot())
                sampler.stop()
                if response.status_code != 200:
                    raise SystemExit(f"the import answered {response.status_code}: {response.text[:500]}")
                body = response.json()
                timings = server_timing(response.headers.get("server-timing", ""))
                got = {k: body[k] for k in ("total_rows", "created", "updated", "skipped_duplicates", "invalid_count")}
                if first:
                    check = {k: body[k] for k in expected}
                    verdict = "as expected" if check == expected else f"EXPECTED {expected}"
                    what = "first import" + (", cold worker pool" if run == 1 else ", into an emptied book")
                else:
                    verdict = "every contact renamed" if body["updated"] == expected["created"] else "UNEXPECTED"
                    what = "same numbers, every name changed"
                what += ", into a group" if args.group else ""
                print(f"\nrun {run} (on_duplicate={mode}; {what}): {got} {verdict}")
                print(f"  end to end        {elapsed:6.2f} s   {args.rows / elapsed:,.0f} rows/s")
                total_cpu = sum(cpu_used.values())
                print(
                    "  CPU used          " + "  ".join(f"{k} {v:.2f} s" for k, v in cpu_used.items())
                    + f"  total {total_cpu:.2f} CPU-s ({total_cpu / cores:.2f} s over {cores} cores)"
                )  # fmt: skip
                print(
                    f"  peak RSS          API process {sampler.peak_main / 1e6:.0f} MB;"
                    f" with children {sampler.peak_total / 1e6:.0f} MB (children alone {sampler.peak_children / 1e6:.0f} MB)"
                )
                order = ("read", "phones", "phones_cpu", "validate", "names", "write", "wait", "commit", "total")
                print("  server timings    " + "  ".join(f"{k} {timings[k]:.2f} s" for k in order if k in timings))
                parse, cpu = timings.get("phones", 0.0), timings.get("phones_cpu", 0.0)
                print(
                    f"  phone parsing     {parse / elapsed:.0%} of the end-to-end time ({parse:.2f} s from the first number"
                    f" sent to the pool to the last parsed, overlapping the writes; {cpu:.2f} CPU-s over the workers)",
                    flush=True,
                )
                copy_s, copy_cpu = asyncio.run(copy_floor(users.admin_url, users.owner, users.other, {"floor": []}))[
                    "floor"
                ][0]
                floor = floor_of(copy_s, cpu, cores)
                server_cpu = f" ({copy_cpu:.2f} CPU-s in the server)" if copy_cpu is not None else ""
                print(
                    f"  floor             COPY of the {expected['created']:,} accepted rows into contacts {copy_s:.2f} s"
                    f"{server_cpu}; parsing {cpu:.2f} CPU-s / {cores} cores = {cpu / cores:.2f} s"
                )
                print(
                    f"  ratio             end to end / floor = {elapsed:.2f} / {floor:.2f} = {elapsed / floor:.2f} (target <= 1.3)",
                    flush=True,
                )
                if copy_cpu is not None:
                    # The work, steadier than the time on a shared machine: all the CPU the import
                    # used against the CPU of the floor's two parts (COPY in the server, parsing).
                    work = copy_cpu + cpu
                    shared = work / cores
                    print(
                        f"  shared cores      the floor's two parts on {cores} cores need at least"
                        f" ({copy_cpu:.2f} + {cpu:.2f}) / {cores} = {shared:.2f} s = {shared / floor:.2f} x the floor;"
                        f" end to end / that = {elapsed / max(floor, shared):.2f}",
                        flush=True,
                    )
                    print(
                        f"  work              import CPU / floor CPU = {total_cpu:.2f} / ({copy_cpu:.2f} + {cpu:.2f})"
                        f" = {total_cpu / work:.2f}",
                        flush=True,
                    )
                if first:
                    sql_s, sql_cpu = asyncio.run(
                        sql_floor(users.app_url, users.admin_url, users.owner, users.other_token)
                    )
                    sql_server = f" ({sql_cpu:.2f} CPU-s in the server)" if sql_cpu is not None else ""
                    print(
                        f"  SQL floor         the import's own writes as the user, numbers already parsed {sql_s:.2f} s"
                        f"{sql_server}: {sql_s / copy_s:.2f} x the COPY; end to end / SQL floor = {elapsed / sql_s:.2f}",
                        flush=True,
                    )
                    rounds.append(Round(elapsed, copy_s, copy_cpu, cpu, sql_s, sql_cpu))
                if run == 1:
                    rows = f"{args.rows:,} rows{', into a group' if args.group else ''}"
                    benchlib.record("import", f"end to end, {rows} (CSV through the API)", elapsed, "s", "< 5")
                    benchlib.record("import", "rows/s", args.rows / elapsed, "rows/s", "")
                    benchlib.record("import", "peak RSS of the API process", sampler.peak_main / 1e6, "MB", "< 400")
                    benchlib.record("import", "share of time in phone parsing (overlaps the writes)",
                                    100 * parse / elapsed, "%", "")  # fmt: skip
                    if copy_cpu is not None:
                        benchlib.record("import", "import CPU / floor CPU", total_cpu / work, "x", "")
                        benchlib.record("import", "shared-cores bound / floor", shared / floor, "x", "")
        summarize(rounds, cores)
        if args.index_costs:
            index_costs(users.admin_url, users.owner, users.other, args.index_costs)
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                api.kill()


def summarize(rounds: list[Round], cores: int) -> None:
    """The first imports' ratios: median of the rounds and their spread."""
    if not rounds:
        return
    ratio = [r.elapsed / r.floor(cores) for r in rounds]
    sql_copy = [r.sql_s / r.copy_s for r in rounds]
    end_sql = [r.elapsed / r.sql_s for r in rounds]
    print(f"\nfirst import, median of {len(rounds)} round{'s' if len(rounds) > 1 else ''} (spread):")
    print(
        f"  end to end        {spread([r.elapsed for r in rounds])} s; floor {spread([r.floor(cores) for r in rounds])} s"
    )
    print(f"  end to end / floor             {spread(ratio)} (target <= 1.3)")
    print(f"  SQL floor / COPY               {spread(sql_copy)} (writing as the user, under RLS, with on conflict)")
    print(f"  end to end / SQL floor         {spread(end_sql)} (reading, parsing and the pipeline)")
    cpus = [r.sql_cpu / r.copy_cpu for r in rounds if r.sql_cpu is not None and r.copy_cpu]
    if cpus:
        print(f"  SQL floor CPU / COPY CPU       {spread(cpus)}")
    benchlib.record(
        "import", "floor: COPY of the accepted rows into contacts", statistics.median(r.copy_s for r in rounds), "s"
    )
    benchlib.record(
        "import", "floor: phone parsing CPU / cores", statistics.median(r.parse_cpu / cores for r in rounds), "s"
    )
    benchlib.record("import", f"end to end / floor (median of {len(rounds)})", statistics.median(ratio), "x", "<= 1.3")
    benchlib.record("import", f"SQL floor / COPY (median of {len(rounds)})", statistics.median(sql_copy), "x")
    benchlib.record("import", f"end to end / SQL floor (median of {len(rounds)})", statistics.median(end_sql), "x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="first imports (skip), each into an emptied book")
    ap.add_argument("--updates", type=int, default=1, help="then imports that rename every contact (update)")
    ap.add_argument("--group", action="store_true", help="also add every contact to a group (group_ids)")
    ap.add_argument("--distinct-names", action="store_true", help="a name of its own on every row (real books)")
    ap.add_argument("--index-costs", type=int, default=0, metavar="ROUNDS",
                    help="after the runs, time the floor's COPY without each index of contacts, in ROUNDS rounds")  # fmt: skip
    args = ap.parse_args()

    started = time.perf_counter()
    content, expected = make_csv(args.rows, distinct_names=args.distinct_names)
    files = [content]
    files += [
        make_csv(args.rows, suffix=f" {run}", distinct_names=args.distinct_names)[0]
        for run in range(1, args.updates + 1)
    ]
    print(
        f"generated {args.rows:,} rows ({len(content) / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the runs", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="whatsched-bench-import-")
    data_dir = Path(tmp.name)
    try:
        with benchlib.throwaway_database_sync(data_dir, data_dir) as db:
            measure(args, db, data_dir, files, expected)
    finally:
        tmp.cleanup()


if __name__ == "__main__":
    main()
