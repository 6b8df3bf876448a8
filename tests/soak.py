"""Soak: N concurrent browser sessions move sliders against one app server.

    python tests/soak.py --sessions 8 --seconds 60 [--url http://127.0.0.1:8501]

Without ``--url`` it starts ``streamlit run app.py`` on a free 127.0.0.1 port
(data from ``$LOWRANK_CIFAR10``), drives Debian's Chromium with Playwright
(one browser context per session, all concurrent), and prints one JSON object:
actions, errors, p50/p95 response time (slider release to the script
finishing) and the server's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np

CHROMIUM = "/usr/bin/chromium"
REPO = pathlib.Path(__file__).resolve().parents[1]
PAGES = ("low_rank", "pruning", "spectra")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free local port; returns (process, url) once it listens."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env=env or dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("streamlit did not start within 60 s")


async def _idle(page, timeout_s: float) -> None:
    await page.wait_for_timeout(200)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        running = await page.locator('[data-testid="stStatusWidget"]').filter(has_text="Running").count()
        spinners = await page.locator('[data-testid="stSpinner"]').count()
        if not running and not spinners:
            return
        await page.wait_for_timeout(50)
    raise TimeoutError(f"the script kept running for {timeout_s:.0f} s")


async def _session(browser, url: str, index: int, seconds: float, rng: random.Random, report: dict) -> None:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    page.on("pageerror", lambda exc: report["errors"].append(f"session {index}: {exc}"))
    name = PAGES[index % len(PAGES)]
    phase = "first load"
    try:
        await page.goto(f"{url}/{name}")
        await _idle(page, 300)
        thumb = page.get_by_role("slider").first  # each page's main slider comes first
        await thumb.wait_for(timeout=300_000)
        await _idle(page, 300)
        stop_at = time.time() + seconds  # the first load (data, compile) is not part of the soak
        phase = "slider moves"
        while time.time() < stop_at:
            await thumb.focus()
            started = time.perf_counter()
            key = rng.choice(["ArrowLeft", "ArrowRight"])
            for _ in range(rng.randint(1, 5)):
                await thumb.press(key)
            await _idle(page, 120)
            report["latencies"].append(time.perf_counter() - started)
            if await page.locator('[data-testid="stException"]').count():
                report["errors"].append(f"session {index}: traceback on {name}")
            if await page.locator('[data-testid="stAlertContentError"]').count():
                report["errors"].append(f"session {index}: st.error on {name}")
    except Exception as exc:  # a timeout or a crash is an error of the run, not of the script
        report["errors"].append(f"session {index} ({name}, {phase}): {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        await context.close()


async def soak(url: str, sessions: int, seconds: float, seed: int = 0) -> dict:
    from playwright.async_api import async_playwright

    report: dict = {"errors": [], "latencies": []}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        await asyncio.gather(
            *(_session(browser, url, i, seconds, random.Random(seed + i), report) for i in range(sessions))
        )
        await browser.close()
    return report


def run(sessions: int, seconds: float, url: str | None = None) -> dict:
    """Runs a soak (starting a server if ``url`` is None) and returns the summary."""
    import psutil

    proc = None
    if url is None:
        proc, url = start_server()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and proc is not None:
            try:
                peak[0] = max(peak[0], psutil.Process(proc.pid).memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = asyncio.run(soak(url, sessions, seconds))
    finally:
        done.set()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    lat = np.asarray(report["latencies"]) if report["latencies"] else np.asarray([np.nan])
    return {
        "sessions": sessions,
        "seconds": seconds,
        "actions": len(report["latencies"]),
        "errors": len(report["errors"]),
        "error_samples": report["errors"][:5],
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "server_peak_rss_gib": peak[0] / 2**30 if proc is not None else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--url", help="an app already running (default: start one)")
    args = parser.parse_args()
    if args.sessions < 1 or args.seconds <= 0:
        print("error: --sessions must be ≥ 1 and --seconds > 0", file=sys.stderr)
        return 2
    summary = run(args.sessions, args.seconds, args.url)
    print(json.dumps(summary))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
