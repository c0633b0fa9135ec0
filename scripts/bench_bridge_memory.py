"""Bridge memory: what one bridge process holds, as its own GET /status reports it (`rss_bytes`:
the node process plus, for the wwebjs driver, every Chromium process it started, each one's VmRSS
summed; pages the processes share count once per process, so the sum is an upper bound). This is
the figure the watch compares with NUMBER_MEMORY_CAP_MB.

    .venv/bin/python scripts/bench_bridge_memory.py                 # simulator, then wwebjs if Chromium exists
    .venv/bin/python scripts/bench_bridge_memory.py --no-wwebjs     # simulator only
    .venv/bin/python scripts/bench_bridge_memory.py --seconds 120   # watch wwebjs longer

The simulator bridge is sampled for a few seconds after it connects. The wwebjs bridge starts
Chromium (/usr/bin/chromium, or CHROME_PATH) with a fresh profile and no session, so it waits for a
QR code (offline, it never gets one and keeps retrying): sampled every second for --seconds, it
prints the lowest, the last and the highest reading.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from whatsched.db.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-bridge-token"
MIB = 1024 * 1024


def status(url: str) -> dict[str, object] | None:
    request = urllib.request.Request(url + "/status", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            answer: dict[str, object] = json.loads(resp.read())
            return answer
    except OSError:
        return None


def start(driver: str, folder: Path, chrome: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "WHATSAPP_DRIVER": driver,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_TOKEN": TOKEN,
        "BRIDGE_DATA_DIR": str(folder),
        "BRIDGE_EVENTS_URL": "",
        "WHATSAPP_SESSION_PATH": str(folder / "session"),
        **({"CHROME_PATH": chrome} if chrome else {}),
    }
    log = (folder / "bridge.log").open("ab")
    process = subprocess.Popen(
        ["node", str(REPO / "bridge" / "src" / "main.js")],
        cwd=REPO / "bridge",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def sample(url: str, seconds: float, every: float, until: str | None = None) -> list[tuple[str, int]]:
    """(status, rss_bytes) readings; with `until`, wait (up to `seconds`) for that status first."""
    readings: list[tuple[str, int]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = status(url)
        if answer is not None:
            readings.append((str(answer.get("status")), int(str(answer.get("rss_bytes") or 0))))
            if until is not None and readings[-1][0] == until:
                return readings
        time.sleep(every)
    return readings


def simulator(folder: Path) -> None:
    process, url = start("simulator", folder)
    try:
        if not any(s == "connected" for s, _ in sample(url, 20, 0.1, until="connected")):
            sys.exit(f"the simulator bridge did not connect; see {folder / 'bridge.log'}")
        rss = [r for _, r in sample(url, 3, 0.5)]
        print(f"simulator bridge: {min(rss) / MIB:.1f}-{max(rss) / MIB:.1f} MiB RSS (node; {len(rss)} readings)")
    finally:
        stop(process)


def wwebjs(folder: Path, chrome: str, seconds: float) -> None:
    process, url = start("wwebjs", folder, chrome)
    try:
        readings = sample(url, seconds, 1.0)
        if not readings:
            sys.exit(f"the wwebjs bridge never answered; see {folder / 'bridge.log'}")
        rss = [r for _, r in readings]
        states = sorted({s for s, _ in readings})
        print(
            f"wwebjs bridge ({chrome}): lowest {min(rss) / MIB:.0f} MiB, last {rss[-1] / MIB:.0f} MiB, "
            f"highest {max(rss) / MIB:.0f} MiB RSS summed over node and Chromium's processes "
            f"({len(rss)} readings over {seconds:.0f} s; states seen: {', '.join(states)})"
        )
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long to sample the wwebjs bridge")
    parser.add_argument("--no-wwebjs", action="store_true", help="measure the simulator only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whatsched-bench-memory-") as tmp:
        simulator(Path(tmp) / "simulator")
        chrome = os.environ.get("CHROME_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
        if args.no_wwebjs:
            return
        if not Path(chrome).exists():
            print("wwebjs bridge: skipped (no Chromium at /usr/bin/chromium; set CHROME_PATH)")
            return
        wwebjs(Path(tmp) / "wwebjs", chrome, args.seconds)


if __name__ == "__main__":
    main()
