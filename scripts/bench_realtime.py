"""Benchmark the real-time socket: N concurrent authenticated sockets on one API process (uvicorn,
as `whatsched api` runs it), each subscribed to a message that is being sent.

Figures printed:
- API process memory per idle socket: RSS of the uvicorn process before and after opening N idle
  authenticated sockets (psutil), divided by N;
- fan-out latency from the database commit to the client: the driver updates deliveries as the
  worker does (one delivery per message per update, many messages per commit, autocommit) and
  records the time right after each commit returns; each client records when the resulting
  `message_progress` (identified by message id and `sent` count) arrives. p50/p95/p99/max.

    .venv/bin/python scripts/bench_realtime.py                 # embedded PostgreSQL, 1000 sockets
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python scripts/bench_realtime.py

The database is a fresh one (created and dropped on DATABASE_URL's server, or an embedded server in
a temporary folder). Users are inserted in SQL; their tokens are issued with the local provider's key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import psutil
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from api_processes import ApiProcess  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import benchlib  # noqa: E402

from whatsched.auth.keys import local_signing_key  # noqa: E402
from whatsched.auth.tokens import issue_access_token  # noqa: E402
from whatsched.config import Settings  # noqa: E402


def raise_open_files_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def seed(admin_url: str, settings: Settings, n: int, deliveries: int) -> list[tuple[str, str, str]]:
    """(user id, token, message id) per socket: users in SQL, one `sending` message each."""
    conn = await asyncpg.connect(admin_url)
    try:
        ids = [uuid.uuid4() for _ in range(n)]
        await conn.execute(
            """
            insert into auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                                    created_at, updated_at, email_confirmed_at)
            select '00000000-0000-0000-0000-000000000000', id, 'authenticated', 'authenticated',
                   'bench-' || id || '@example.com', '{"provider":"email","providers":["email"]}', '{}',
                   now(), now(), now()
            from unnest($1::uuid[]) id
            """,
            ids,
        )
        messages = await conn.fetch(
            """
            insert into public.messages (created_by, content, status)
            select id, 'bench', 'sending' from unnest($1::uuid[]) id
            returning id, created_by
            """,
            ids,
        )
        await conn.execute(
            """
            insert into public.deliveries (message_id, created_by, phone, idempotency_key)
            select m.id, m.created_by, '+5691' || lpad(k::text, 7, '0'), m.id::text || ':' || k
            from public.messages m, generate_series(1, $1) k
            where m.content = 'bench'
            """,
            deliveries,
        )
    finally:
        await conn.close()
    key = local_signing_key(settings.data_dir, None)
    issuer = settings.effective_public_url + "/auth/v1"
    out = []
    for row in messages:
        user = {"id": str(row["created_by"]), "email": f"bench-{row['created_by']}@example.com"}
        token, _ = issue_access_token(key, issuer=issuer, user=user, session_id=str(uuid.uuid4()), lifetime_s=3600)
        out.append((user["id"], token, str(row["id"])))
    return out


class Clients:
    """Sockets of one client process, read by one task each; arrivals are matched to commits later."""

    def __init__(self, base_url: str, compression: str | None) -> None:
        self.base_url = base_url
        self.compression = compression
        self.sockets: list[ClientConnection] = []
        self.arrivals: list[tuple[str, int, float]] = []
        self.readers: list[asyncio.Task[None]] = []

    async def open(self, users: list[tuple[str, str, str]], concurrency: int = 100) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(user_id: str, token: str) -> ClientConnection:
            async with gate:
                ws = await connect(
                    f"{self.base_url}/ws/{user_id}", proxy=None, compression=self.compression, open_timeout=60
                )
                await ws.send(json.dumps({"type": "auth", "token": token}))
                reply = json.loads(await ws.recv())
                assert reply == {"type": "auth_ok"}, reply
                return ws

        self.sockets = list(await asyncio.gather(*(one(u, t) for u, t, _ in users)))

    async def subscribe(self, users: list[tuple[str, str, str]]) -> None:
        async def one(ws: ClientConnection, message_id: str) -> None:
            await ws.send(json.dumps({"type": "subscribe_message", "message_id": message_id}))
            while True:  # the snapshot: status, then progress
                frame = json.loads(await ws.recv())
                if frame["type"] == "message_progress":
                    return

        await asyncio.gather(*(one(ws, m) for ws, (_, _, m) in zip(self.sockets, users, strict=True)))
        self.readers = [asyncio.create_task(self._read(ws)) for ws in self.sockets]

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes on one machine
            frame = json.loads(raw)
            if frame.get("type") == "message_progress":
                self.arrivals.append((frame["message_id"], frame["sent"], now))

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


def run_client_process(args: argparse.Namespace) -> None:
    """A client process, driven by lines on stdin: it opens its sockets, then `subscribe`, then
    `stop` (arrivals written to --arrivals as JSON)."""
    raise_open_files_limit(10_000)
    users = [tuple(u) for u in json.loads(Path(args.client_of).read_text())]
    arrivals = asyncio.run(client_process(args, users))  # type: ignore[arg-type]
    Path(args.arrivals).write_text(json.dumps(arrivals))
    print("done", flush=True)


async def client_process(args: argparse.Namespace, users: list[tuple[str, str, str]]) -> list[tuple[str, int, float]]:
    clients = Clients(args.base_url, None if args.compression == "none" else "deflate")
    await clients.open(users)
    assert clients.sockets[0].response is not None
    print("open", clients.sockets[0].response.headers.get("Sec-WebSocket-Extensions") or "none", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while command := (await reader.readline()).decode().strip():
        if command == "subscribe":
            await clients.subscribe(users)
            print("subscribed", flush=True)
        elif command == "stop":
            break
    await clients.close()
    return clients.arrivals


class ClientProcesses:
    """The sockets spread over a few client processes, as real clients are not in the server's
    process nor in the driver's."""

    def __init__(self, base_url: str, users: list[tuple[str, str, str]], processes: int, compression: str) -> None:
        self.base_url, self.users, self.compression = base_url, users, compression
        self.shares = [users[i::processes] for i in range(processes)]
        self.procs: list[asyncio.subprocess.Process] = []
        self.folder = Path(tempfile.mkdtemp(prefix="whatsched-bench-clients-"))
        self.commit_at: dict[tuple[str, int], tuple[float, float]] = {}  # (before, after) the commit

    async def _ask(self, command: str | None, expect: str) -> list[str]:
        answers = []
        for proc in self.procs:
            assert proc.stdin is not None and proc.stdout is not None
            if command is not None:
                proc.stdin.write(command.encode() + b"\n")
                await proc.stdin.drain()
        for proc in self.procs:
            assert proc.stdout is not None
            line = (await proc.stdout.readline()).decode().strip()
            if not line.startswith(expect):
                raise RuntimeError(f"client process answered {line!r}, expected {expect!r}")
            answers.append(line)
        return answers

    async def open(self) -> str:
        for i, share in enumerate(self.shares):
            (self.folder / f"users-{i}.json").write_text(json.dumps(share))
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--client-of",
                    str(self.folder / f"users-{i}.json"),
                    "--arrivals",
                    str(self.folder / f"arrivals-{i}.json"),
                    "--base-url",
                    self.base_url,
                    "--compression",
                    self.compression,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
        answers = await self._ask(None, "open")
        return answers[0].split(" ", 1)[1]

    async def subscribe(self) -> None:
        await self._ask("subscribe", "subscribed")

    async def stop(self) -> list[tuple[str, int, float]]:
        await self._ask("stop", "done")
        for proc in self.procs:
            await proc.wait()
        arrivals = []
        for i in range(len(self.procs)):
            arrivals += [tuple(a) for a in json.loads((self.folder / f"arrivals-{i}.json").read_text())]
        return arrivals  # type: ignore[return-value]

    def kill(self) -> None:
        """Stops what is left of the client processes and removes their folder (called last)."""
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def latencies(self, arrivals: list[tuple[str, int, float]]) -> tuple[list[float], list[float]]:
        """Per event: arrival minus the time right after the commit returned, and minus the time
        the commit was sent (an upper bound)."""
        after, before = [], []
        for message_id, sent, arrived in arrivals:
            committed = self.commit_at.get((message_id, sent))
            if committed is not None:
                before.append(arrived - committed[0])
                after.append(arrived - committed[1])
        return after, before


async def drive(
    admin_url: str, clients: ClientProcesses, message_ids: list[str], rate: float, tick: float, seconds: float
) -> int:
    """Update deliveries as the worker does: every `tick` one commit finishes one delivery for each
    message in the next slice, so every message advances `rate` times per second."""
    conn = await asyncpg.connect(admin_url)
    sent = dict.fromkeys(message_ids, 0)
    per_tick = max(1, round(len(message_ids) * rate * tick))
    sql = """
        update public.deliveries set state = 'sent', sent_at = now()
        where id in (select distinct on (message_id) id from public.deliveries
                     where message_id = any($1::uuid[]) and state = 'pending' order by message_id, phone)
    """
    commits, position, loop = 0, 0, asyncio.get_running_loop()
    started = loop.time()
    try:
        while loop.time() - started < seconds:
            batch = [message_ids[(position + i) % len(message_ids)] for i in range(per_tick)]
            position += per_tick
            issued = time.perf_counter()
            await conn.execute(sql, batch)  # autocommit: returns once committed
            committed = time.perf_counter()
            for message_id in batch:
                sent[message_id] += 1
                clients.commit_at[(message_id, sent[message_id])] = (issued, committed)
            commits += 1
            await asyncio.sleep(max(0.0, started + commits * tick - loop.time()))
    finally:
        await conn.close()
    return sum(sent.values())


async def measure(args: argparse.Namespace, db: benchlib.Throwaway, data_dir: Path) -> None:
    prepared = db.prepared
    api: ApiProcess | None = None
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=prepared.admin_url,
            app_database_url=prepared.app_url,
            data_dir=data_dir,
            bridge_url="http://127.0.0.1:9",
        )
        started = time.perf_counter()
        users = await seed(prepared.admin_url, settings, args.sockets, args.deliveries)
        print(
            f"seeded {len(users)} users, messages and {len(users) * args.deliveries} deliveries "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )

        api = ApiProcess(settings, via_cli=True)  # `whatsched api`, exactly as users run it
        api.start()
        await asyncio.to_thread(api.wait_ready)
        proc = psutil.Process(api.pid)
        compression = None if args.compression == "none" else "deflate"

        base_url = f"ws://127.0.0.1:{api.port}"
        warm = Clients(base_url, compression)  # import and allocate everything a socket touches once
        await warm.open(users[:20])
        await warm.close()
        await asyncio.sleep(2)
        rss_before = proc.memory_info().rss
        clients = ClientProcesses(base_url, users, args.client_processes, args.compression)
        try:
            started = time.perf_counter()
            negotiated = await clients.open()
            opened = time.perf_counter() - started
            await asyncio.sleep(3)
            rss_after = proc.memory_info().rss
            per_socket = (rss_after - rss_before) / len(users)
            print(
                f"opened and authenticated {len(users)} sockets from {args.client_processes} client processes "
                f"in {opened:.1f} s",
                flush=True,
            )
            print(
                f"API RSS: {rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB with {len(users)} "
                f"idle sockets -> {per_socket / 1024:.1f} KiB per idle socket (clients offer: {args.compression}; "
                f"negotiated: {negotiated})",
                flush=True,
            )
            benchlib.record("realtime", f"API memory per idle socket ({len(users)} sockets)", per_socket / 1024,
                            "KiB", "< 50 KB")  # fmt: skip

            await clients.subscribe()
            cpu_before = proc.cpu_times()
            expected = await drive(
                prepared.admin_url, clients, [m for _, _, m in users], args.rate, args.tick, args.seconds
            )
            await asyncio.sleep(2)  # let the last events arrive
            cpu = proc.cpu_times()
            arrivals = await clients.stop()
        finally:
            clients.kill()
        after, before = clients.latencies(arrivals)
        print(
            f"fan-out: {expected} progress events over {args.seconds:g} s "
            f"({expected / args.seconds:.0f}/s; {args.rate:g} update/s per message, one commit every "
            f"{args.tick * 1000:g} ms), {len(after)} received",
            flush=True,
        )
        for label, values in (("after the commit returned", after), ("before the commit was sent", before)):
            ms = [max(0.0, x) * 1000 for x in values]  # < 0: the event beat the commit's reply to the driver
            if ms:
                print(
                    f"latency from {label}: p50 {statistics.median(ms):.1f} ms, "
                    f"p95 {percentile(ms, 95):.1f} ms, p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms",
                    flush=True,
                )
                if label.startswith("after"):
                    benchlib.record("realtime", "fan-out latency commit -> client p50", statistics.median(ms), "ms")
                    benchlib.record("realtime", "fan-out latency commit -> client p99", percentile(ms, 99), "ms",
                                    "< 100")  # fmt: skip
        busy = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
        print(f"API process CPU while sending: {busy:.1f} s over {args.seconds:g} s", flush=True)
    finally:
        if api is not None:
            api.stop()


async def main(args: argparse.Namespace) -> None:
    raise_open_files_limit(args.sockets * 2 + 1024)
    with tempfile.TemporaryDirectory(prefix="whatsched-bench-") as folder:
        data_dir = Path(folder)
        async with benchlib.throwaway_database(data_dir, data_dir) as db:
            await measure(args, db, data_dir)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--deliveries", type=int, default=60, help="deliveries per message (>= rate * seconds)")
    parser.add_argument("--rate", type=float, default=1.0, help="updates per second per message")
    parser.add_argument("--tick", type=float, default=0.05, help="seconds between commits")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="what the clients offer (browsers offer permessage-deflate)",
    )
    parser.add_argument("--client-processes", type=int, default=2)
    # internal: run as one of the client processes
    parser.add_argument("--client-of", help=argparse.SUPPRESS)
    parser.add_argument("--arrivals", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.client_of:
        run_client_process(arguments)
    else:
        asyncio.run(main(arguments))
