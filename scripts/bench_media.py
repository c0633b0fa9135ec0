"""Attachments benchmark (issue #22): a large document uploaded through the API (time, and the API
process's memory while the body streams to disk), and one image sent to many recipients against
the same text (deliveries per second, and how many times the bridge fetched the file).

    .venv/bin/python scripts/bench_media.py                     # embedded PostgreSQL
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python scripts/bench_media.py

Processes: the API as users run it (`whatsched api`, one process, uvicorn's access log on), the
real bridge (simulator driver, latency 0, BRIDGE_EVENTS_URL = <api>/api/bridge/events, so the
bridge sends its token to the API's origin) and real workers (careful sending off: spacing 0, no
caps, no quiet hours; PUBLIC_URL = <api>, the origin of the media URLs they hand the bridge). A
fresh database is created on the server (or an embedded one) and dropped afterwards.

- Upload: a valid PDF of --upload-mb MiB (a small document whose one stream object holds random
  bytes) POSTed as multipart/form-data to POST /api/media with aiohttp; the time is from the
  request's start to the 201 (the API has streamed it to disk, hashed it, read its type and
  recorded it). A thread samples the API process's VmRSS every 20 ms from before the request to
  after the answer; VmHWM (the kernel's exact peak, reset through /proc/<pid>/clear_refs before
  each upload) backs the sampled peak up. A small PDF is uploaded first, so that first-use
  imports do not count. The floor: the same bytes, with the same client, POSTed to a trivial
  aiohttp server in another process that reads and discards the body. --rounds rounds, API and
  floor alternating; the median is the figure.
- Dispatch: per round, one new message to --recipients new contacts as text, then one as an image
  (a new noisy JPEG each round, uploaded through the API by the message's owner; the caption is
  the text). Deliveries per second as bench_dispatch.py counts them: from scheduled_for to the
  last send in the simulator's outbox (and, separately, first send to last). The bridge's
  fetches of the file are counted in the API's access log (GET /api/bridge/media/<id>: one line
  per request that reached the API, whatever the bridge thinks it did); the outbox shows every
  image send carried the SHA-256 of the uploaded file. The simulator reads and hashes the file it is
  handed once per send (as the whatsapp-web.js driver reads it, base64, once per send), so the
  image's cost grows with its size: the figure is the bridge's per-send file handling, not only the
  dispatch. The simulator's acks are deferred (10 min) so that the API process serves only the file
  during the run, for text and image alike. Then the bridge's share: the same number of POST /send
  straight to the bridge from this process (200 at a time, as a worker sends a claim), text and then
  the last image (already in the bridge's cache), with no database and no worker.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from aiohttp import web
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from api_processes import ApiProcess  # noqa: E402

from tests.bridge_process import BridgeProcess, WorkerProcess, workers_listening  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import benchlib  # noqa: E402

from whatsched.auth.keys import local_signing_key  # noqa: E402
from whatsched.auth.tokens import issue_access_token  # noqa: E402
from whatsched.config import Settings  # noqa: E402
from whatsched.db.embedded import free_port  # noqa: E402

MIB = 1024 * 1024
BOUNDARY = "whatsched-bench-" + secrets.token_hex(8)
CAPTION = "Hola {{name}}, mira el afiche de esta semana."
ACKS_DEFERRED_MS = 600_000


# -- Files ---------------------------------------------------------------------------------------


def pdf_of(size: int) -> bytes:
    """A valid PDF of exactly `size` bytes: one empty page and one (unreferenced) stream object of random bytes, with
    its cross-reference table (`filetype`, which reads the first bytes, says application/pdf;
    nothing on the way can compress it)."""

    def build(length: int) -> bytes:
        parts = [
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
            b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n",
            b"2 0 obj\n<< /Type /Pages /Kids [3 0 R] /Count 1 >>\nendobj\n",
            b"3 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>\nendobj\n",
            f"4 0 obj\n<< /Length {length} >>\nstream\n".encode() + bytes(length) + b"\nendstream\nendobj\n",
        ]
        offsets = [sum(map(len, parts[:i])) for i in range(1, len(parts))]
        xref = b"xref\n0 5\n0000000000 65535 f \n" + b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
        trailer = f"trailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n{sum(map(len, parts))}\n%%EOF\n".encode()
        return b"".join(parts) + xref + trailer

    length = size
    while len(layout := build(length)) != size:  # the digits of the lengths move the total a little
        length += size - len(layout)
    stream = layout.index(b"stream\n") + len(b"stream\n")
    return layout[:stream] + os.urandom(length) + layout[stream + length :]


def noisy_jpeg(side: int, quality: int) -> bytes:
    """A photo-like JPEG (noise compresses poorly, like a real picture); a new one on every call."""
    channels = [Image.effect_noise((side, side), 48).point(lambda v, k=k: (v + 60 * k) % 256) for k in range(3)]
    img = Image.merge("RGB", channels)
    img.paste(Image.frombytes("RGB", (32, 32), os.urandom(32 * 32 * 3)), (0, 0))  # unique per call
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def multipart_body(name: str, data: bytes, mime: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: {mime}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


# -- The API process's memory --------------------------------------------------------------------


def proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """VmRSS of one process every `interval` s, in a thread (the upload keeps the event loop busy)."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []  # KiB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(proc_status_kib(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(proc_status_kib(self.pid, "VmRSS"))


# -- The floor: a server that reads and discards ------------------------------------------------


async def sink_server(port: int) -> None:
    async def discard(request: web.Request) -> web.Response:
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        return web.json_response({"received": received}, status=201)

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/sink", discard)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    async with http.post(url, data=body, headers=headers) as resp:
        answer = await resp.json()
        elapsed = time.perf_counter() - started
        if resp.status != 201:
            raise RuntimeError(f"POST {url}: {resp.status} {answer}")
    return elapsed, answer


async def bench_upload(
    args: argparse.Namespace, api: ApiProcess, api_url: str, token: str, sink_url: str
) -> dict[str, float]:
    size = args.upload_mb * MIB
    body = multipart_body("price-list.pdf", pdf_of(size), "application/pdf")
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    api_headers = {**headers, "authorization": f"Bearer {token}"}
    pid = api.pid
    children = psutil.Process(pid).children(recursive=True)
    if children:
        print(f"  note: the API process has {len(children)} child process(es); only pid {pid} is measured")
    rows: list[dict[str, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        # Warm-up: the first upload imports and allocates what every later one reuses.
        await post(http, api_url + "/api/media", multipart_body("warm.pdf", pdf_of(64 * 1024), "application/pdf"),
                   api_headers)  # fmt: skip
        await post(http, sink_url, body, headers)
        for _ in range(args.rounds):
            await asyncio.sleep(0.5)
            before = proc_status_kib(pid, "VmRSS")
            hwm_ok = reset_peak(pid)
            with RssSampler(pid) as sampler:
                api_s, answer = await post(http, api_url + "/api/media", body, api_headers)
            hwm = proc_status_kib(pid, "VmHWM") if hwm_ok else 0
            after = proc_status_kib(pid, "VmRSS")
            if (answer["mime_type"], answer["size_bytes"]) != ("application/pdf", size):
                raise RuntimeError(f"the API recorded {answer}")
            sink_s, got = await post(http, sink_url, body, headers)
            assert got["received"] == len(body), got
            rows.append(
                {
                    "api_s": api_s,
                    "sink_s": sink_s,
                    "before": before / 1024,
                    "peak": max(sampler.samples) / 1024,
                    "after": after / 1024,
                    "hwm": hwm / 1024,
                    "samples": len(sampler.samples),
                }
            )
            r = rows[-1]
            print(
                f"  API {r['api_s']:.2f} s ({args.upload_mb / r['api_s']:.0f} MiB/s), floor {r['sink_s']:.2f} s"
                f" ({args.upload_mb / r['sink_s']:.0f} MiB/s); API RSS before {r['before']:.1f} MiB, peak"
                f" {r['peak']:.1f} MiB ({int(r['samples'])} samples), VmHWM "
                + (f"{r['hwm']:.1f} MiB" if hwm_ok else "n/a")
                + f", after {r['after']:.1f} MiB"
            )
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    deltas = [max(r["peak"], r["hwm"]) - r["before"] for r in rows]
    med["delta"], med["delta_max"] = statistics.median(deltas), max(deltas)
    return med


# -- Dispatch: text against image ----------------------------------------------------------------


async def new_user(admin: asyncpg.Connection, settings: Settings) -> tuple[uuid.UUID, str]:
    user = uuid.uuid4()
    email = f"bench-{user.hex[:8]}@example.com"
    await admin.execute(
        """insert into auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                                   created_at, updated_at, email_confirmed_at)
           values ('00000000-0000-0000-0000-000000000000', $1, 'authenticated', 'authenticated', $2,
                   '{"provider":"email","providers":["email"]}', '{}', now(), now(), now())""",
        user,
        email,
    )
    key = local_signing_key(settings.data_dir, None)
    token, _ = issue_access_token(
        key,
        issuer=settings.effective_public_url + "/auth/v1",
        user={"id": str(user), "email": email},
        session_id=str(uuid.uuid4()),
        lifetime_s=3600,
    )
    return user, token


async def new_message(
    admin: asyncpg.Connection, owner: uuid.UUID, series: int, recipients: int, media_id: str | None
) -> uuid.UUID:
    """A draft to `recipients` new contacts of the owner (one group), with the caption and media_id."""
    # Ending in 1: the simulator treats numbers ending in 0000 as not on WhatsApp.
    await admin.execute(
        """insert into public.contacts (created_by, name, phone)
           select $1, 'Contact ' || n, '+569' || lpad($2::int::text, 2, '0') || lpad(n::text, 5, '0') || '1'
           from generate_series(1, $3) n""",
        owner,
        series,
        recipients,
    )
    group = await admin.fetchval(
        "insert into public.groups (created_by, name) values ($1, $2) returning id", owner, f"group {series}"
    )
    await admin.execute(
        """insert into public.group_contacts (group_id, contact_id, created_by)
           select $1, id, created_by from public.contacts
           where created_by = $2 and phone like '+569' || lpad($3::int::text, 2, '0') || '%'""",
        group,
        owner,
        series,
    )
    message: uuid.UUID = await admin.fetchval(
        "insert into public.messages (created_by, content, media_id) values ($1, $2, $3::uuid) returning id",
        owner,
        CAPTION,
        media_id,
    )
    await admin.execute(
        "insert into public.message_groups (message_id, group_id, created_by) values ($1, $2, $3)",
        message,
        group,
        owner,
    )
    return message


def media_fetches(api_log: str, media_id: str) -> Counter[str]:
    """Requests for this file that reached the API, by status (uvicorn's access log)."""
    pattern = re.compile(rf'"GET /api/bridge/media/{media_id} HTTP/[\d.]+" (\d+)')
    return Counter(m.group(1) for m in pattern.finditer(api_log))


async def dispatch_once(
    admin: asyncpg.Connection, bridge: BridgeProcess, message: uuid.UUID, recipients: int, lead_s: float
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Schedule `message` lead_s ahead, wait until it is sent; its figures and its outbox entries."""
    await bridge._call("DELETE", "/simulator/outbox")
    due: datetime = await admin.fetchval("select now() + make_interval(secs => $1)", lead_s)
    await admin.execute("select public.schedule_message($1, $2)", message, due)
    deadline = time.monotonic() + lead_s + 300
    while await admin.fetchval("select status not in ('sent', 'failed') from public.messages where id = $1", message):
        if time.monotonic() > deadline:
            raise RuntimeError(f"message {message} did not finish in time")
        await asyncio.sleep(0.1)
    prefix = f"{message}:"
    outbox = [m for m in await bridge.outbox() if str(m.get("idempotency_key") or "").startswith(prefix)]
    delivered = await admin.fetchval("select delivered_count from public.messages where id = $1", message)
    failed = await admin.fetch(
        "select last_error_code, count(*) as n from public.deliveries where message_id = $1 and state = 'failed'"
        " group by 1",
        message,
    )
    if len(outbox) != recipients or delivered != recipients:
        raise RuntimeError(
            f"{len(outbox)} sends in the outbox, delivered_count {delivered}, expected {recipients};"
            f" failed: {[dict(r) for r in failed]}"
        )
    times = sorted(datetime.fromisoformat(m["sent_at"].replace("Z", "+00:00")) for m in outbox)
    span = (times[-1] - due).total_seconds()
    sending = (times[-1] - times[0]).total_seconds()
    figures = {
        "seconds": span,
        "rate": len(outbox) / span,
        "first_lag": (times[0] - due).total_seconds(),
        "send_rate": (len(outbox) - 1) / sending if sending > 0 else float("inf"),
    }
    return figures, outbox


async def bridge_alone(bridge: BridgeProcess, count: int, media: dict[str, Any] | None, batch: int = 200) -> float:
    """POST /send straight to the bridge, `batch` at a time as a worker sends a claim: sends/s. With
    `media` (a file the bridge already holds) each send is the image, else the text."""
    run = secrets.token_hex(4)
    async with aiohttp.ClientSession(base_url=bridge.url, headers=bridge.headers) as http:

        async def one(i: int) -> None:
            payload: dict[str, Any] = {"to": f"+5699{i:07d}1", "body": CAPTION, "idempotency_key": f"alone-{run}:{i}"}
            if media is not None:
                payload["media"] = media
            async with http.post("/send", json=payload) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"the bridge answered {resp.status}: {await resp.text()}")

        started = time.perf_counter()
        for first in range(0, count, batch):
            await asyncio.gather(*(one(i) for i in range(first, min(count, first + batch))))
        return count / (time.perf_counter() - started)


async def bench_dispatch(
    args: argparse.Namespace,
    admin: asyncpg.Connection,
    prepared: Any,
    api: ApiProcess,
    api_url: str,
    bridge: BridgeProcess,
    owner: uuid.UUID,
    token: str,
    logs: Path,
) -> dict[str, float]:
    procs = [
        WorkerProcess(
            prepared.admin_url,
            prepared.app_url,
            bridge.url,
            logs / f"worker-{i}.log",
            token=bridge.token,
            PUBLIC_URL=api_url,
            **{k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")},
        )
        for i in range(args.workers)
    ]
    for proc in procs:
        proc.start()
    text_rates: list[float] = []
    image_rates: list[float] = []
    text_send: list[float] = []
    image_send: list[float] = []
    fetches_total = 0
    failures = 0
    uploaded: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 30
        while await workers_listening(admin) < args.workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start:\n" + "\n".join(p.log() for p in procs))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        series = 0
        async with aiohttp.ClientSession() as http:
            for round_no in range(1, args.rounds + 1):
                series += 1
                text = await new_message(admin, owner, series, args.recipients, None)
                t, _ = await dispatch_once(admin, bridge, text, args.recipients, args.lead)
                image = noisy_jpeg(args.image_side, args.image_quality)
                _, uploaded = await post(
                    http,
                    api_url + "/api/media",
                    multipart_body("flyer.jpg", image, "image/jpeg"),
                    {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "authorization": f"Bearer {token}"},
                )
                series += 1
                msg = await new_message(admin, owner, series, args.recipients, uploaded["id"])
                i, sent = await dispatch_once(admin, bridge, msg, args.recipients, args.lead)
                fetches = media_fetches(api.log(), uploaded["id"])
                same = all((m["media"] or {}).get("sha256") == uploaded["sha256"] for m in sent)
                ok = same and sum(fetches.values()) == 1 and fetches["200"] == 1
                failures += not ok
                fetches_total += sum(fetches.values())
                text_rates.append(t["rate"])
                image_rates.append(i["rate"])
                text_send.append(t["send_rate"])
                image_send.append(i["send_rate"])
                print(
                    f"  round {round_no}: text {t['rate']:.0f} deliveries/s ({t['seconds']:.2f} s from scheduled_for;"
                    f" first send at {t['first_lag']:+.2f} s, first->last {t['send_rate']:.0f}/s);"
                    f" image ({len(image) / 1024:.0f} KiB JPEG uploaded, {uploaded['size_bytes'] / 1024:.0f} KiB stored)"
                    f" {i['rate']:.0f} deliveries/s"
                    f" ({i['seconds']:.2f} s; first send at {i['first_lag']:+.2f} s, first->last"
                    f" {i['send_rate']:.0f}/s) -> ratio {i['rate'] / t['rate']:.2f};"
                    f" GET /api/bridge/media/<id> requests: {dict(fetches) or 0};"
                    f" every image send has the uploaded sha256: {same}" + ("" if ok else "  <-- MISMATCH")
                )
    finally:
        for proc in procs:
            proc.stop()
    # The bridge's share: the same sends without the database and the worker (the last image is still
    # in the bridge's cache, so this fetches nothing).
    await bridge._call("DELETE", "/simulator/outbox")
    ref = {k: uploaded[k] for k in ("sha256", "mime_type", "kind")} | {
        "url": f"{api_url}/api/bridge/media/{uploaded['id']}",
        "size": uploaded["size_bytes"],
        "filename": uploaded["original_name"],
    }
    alone_text = await bridge_alone(bridge, args.recipients, None)
    alone_image = await bridge_alone(bridge, args.recipients, ref)
    alone_fetches = sum(media_fetches(api.log(), uploaded["id"]).values()) - 1
    print(
        f"  the bridge alone (POST /send from this process, 200 at a time as a worker sends a claim):"
        f" text {alone_text:.0f}/s, image {alone_image:.0f}/s -> ratio {alone_image / alone_text:.2f};"
        f" fetches of the file meanwhile: {alone_fetches}"
    )
    return {
        "alone_text": alone_text,
        "alone_image": alone_image,
        "text": statistics.median(text_rates),
        "image": statistics.median(image_rates),
        "text_send": statistics.median(text_send),
        "image_send": statistics.median(image_send),
        "ratio": statistics.median(i / t for i, t in zip(image_rates, text_rates, strict=True)),
        "fetches_per_image": fetches_total / args.rounds,
        "failures": float(failures),
    }


# -- Main ----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, db: benchlib.Throwaway, tmp: Path) -> int:
    api: ApiProcess | None = None
    bridge: BridgeProcess | None = None
    sink: asyncio.subprocess.Process | None = None
    try:
        data_dir = tmp / "data"
        prepared = db.prepared
        bridge_port = free_port()
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=prepared.admin_url,
            app_database_url=prepared.app_url,
            data_dir=data_dir,
            bridge_url=f"http://127.0.0.1:{bridge_port}",
        )
        api = ApiProcess(settings, via_cli=True)  # `whatsched api`, as users run it (access log at info)
        api_url = f"http://127.0.0.1:{api.port}"
        bridge = BridgeProcess(
            tmp / "bridge",
            token=settings.bridge_token,
            port=bridge_port,
            events_url=api_url + "/api/bridge/events",
            latency_ms=0,
            ack_delay_ms=ACKS_DEFERRED_MS,
        )
        api.start()
        await asyncio.to_thread(api.wait_ready)
        bridge.start()
        sink_port = free_port()
        sink = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--sink", str(sink_port), stdout=asyncio.subprocess.PIPE, start_new_session=True
        )
        assert sink.stdout is not None
        if await asyncio.wait_for(sink.stdout.readline(), 30) != b"ready\n":
            raise RuntimeError("the sink did not start")
        admin = await asyncpg.connect(prepared.admin_url)
        owner, token = await new_user(admin, settings)
        print(
            f"{os.cpu_count()} CPUs; database {'embedded' if db.embedded else 'DATABASE_URL'}"
            f" ({await admin.fetchval('show server_version')}); API: `whatsched api` pid {api.pid}; bridge: simulator,"
            f" latency 0 ms, acks deferred; {args.workers} worker(s), spacing 0, no caps, no quiet hours"
        )

        print(f"upload: a {args.upload_mb} MiB PDF, POST /api/media (aiohttp), {args.rounds} rounds")
        up = await bench_upload(args, api, api_url, token, f"http://127.0.0.1:{sink_port}/sink")
        api_mibs, sink_mibs = args.upload_mb / up["api_s"], args.upload_mb / up["sink_s"]
        print(
            f"upload (median): {up['api_s']:.2f} s, {api_mibs:.0f} MiB/s against a floor of {sink_mibs:.0f} MiB/s"
            f" ({api_mibs / sink_mibs:.2f} of the floor); API RSS before {up['before']:.1f} MiB, peak"
            f" {max(up['peak'], up['hwm']):.1f} MiB, delta {up['delta']:+.1f} MiB (largest of the rounds"
            f" {up['delta_max']:+.1f} MiB) for a {args.upload_mb} MiB body"
        )
        label = f"{args.upload_mb} MiB PDF"
        benchlib.record("media", f"upload {label}, time", up["api_s"], "s")
        benchlib.record("media", f"upload {label}, MiB/s", api_mibs, "MiB/s")
        benchlib.record("media", f"upload {label}, MiB/s ÷ floor", api_mibs / sink_mibs, "")
        benchlib.record("media", f"upload {label}, API peak RSS - before", up["delta"], "MiB", "flat (<< body)")

        print(
            f"dispatch: 1 message x {args.recipients} recipients, text then image, {args.rounds} rounds;"
            f" image {args.image_side}x{args.image_side} JPEG q{args.image_quality}"
        )
        d = await bench_dispatch(args, admin, prepared, api, api_url, bridge, owner, token, tmp / "logs")
        print(
            f"dispatch (median): text {d['text']:.0f} deliveries/s, image {d['image']:.0f} deliveries/s"
            f" -> image/text {d['ratio']:.2f} (first->last send: text {d['text_send']:.0f}/s, image"
            f" {d['image_send']:.0f}/s); the API served the file {d['fetches_per_image']:g} time(s) per image"
            f" run of {args.recipients} recipients; the bridge alone: image/text {d['alone_image'] / d['alone_text']:.2f}"
        )
        benchlib.record("media", f"deliveries/s, text x {args.recipients}", d["text"], "/s")
        benchlib.record("media", f"deliveries/s, image x {args.recipients}", d["image"], "/s")
        benchlib.record("media", "deliveries/s image ÷ text", d["ratio"], "")
        benchlib.record("media", "the bridge alone, sends/s image ÷ text", d["alone_image"] / d["alone_text"], "")
        benchlib.record("media", f"file fetches per {args.recipients} image sends", d["fetches_per_image"], "", "1")
        await admin.close()
        return 1 if d["failures"] else 0
    finally:
        if sink is not None and sink.returncode is None:
            sink.terminate()
            try:
                await asyncio.wait_for(sink.wait(), 10)
            except TimeoutError:
                sink.kill()
                await sink.wait()
        if bridge is not None:
            bridge.stop()
        if api is not None:
            api.stop()


async def main() -> int:
    if sys.argv[1:2] == ["--sink"]:
        await sink_server(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--upload-mb", type=int, default=50, help="size of the PDF in MiB (at most the document limit, 100)"
    )
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="upload rounds and text/image dispatch rounds")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--lead", type=float, default=4.0, help="seconds between scheduling and scheduled_for")
    parser.add_argument("--image-side", type=int, default=1080, help="the image's width and height in pixels")
    parser.add_argument("--image-quality", type=int, default=80, help="its JPEG quality")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whatsched-bench-") as folder:
        tmp = Path(folder)
        data_dir = tmp / "data"
        data_dir.mkdir()
        async with benchlib.throwaway_database(tmp, data_dir) as db:
            return await run(args, db, tmp)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
