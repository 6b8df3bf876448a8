"""Soak: N concurrent browser sessions visit every page and move sliders against one app server.

    python tests/soak.py --sessions 8 --seconds 60 [--url http://127.0.0.1:8501]
    python tests/soak.py --sessions 4 --retrain   # cached slider moves while one session retrains

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
PAGES = (
    "",
    "advisor",
    "low_rank",
    "sensitivity",
    "spectra",
    "pruning",
    "layer_removal",
    "storage",
    "changes",
    "compare",
    "train_data",
)  # every page ("" is the Overview)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict | None = None, log: pathlib.Path | None = None) -> tuple[subprocess.Popen, str]:
    """``streamlit run app.py`` on a free local port; returns (process, url) once it listens.
    ``log``: a file its output is appended to (a failed test shows the server's own traceback)."""
    port = free_port()
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child holds it open
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
        stdout=output,
        stderr=output,
    )
    if log:
        output.close()  # the child has its own copy
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("streamlit did not start within 60 s")


# Counts finished script runs in the page: Streamlit marks its root with the script's state. A
# record's old value is the state it left (the current value may have moved on by the callback).
COUNT_RUNS = """
window.__runs = 0;
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver((changes) => {
    for (const c of changes) if (c.oldValue === "running") window.__runs++;
  }).observe(document.documentElement,
             {subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ["data-test-script-state"]});
});
"""
SETTLED = """() => { const app = document.querySelector('[data-testid="stApp"]');
  return !!app && app.getAttribute("data-test-script-state") === "notRunning"
         && !document.querySelector('[data-testid="stSpinner"]'); }"""


async def _runs(page) -> int:
    return await page.evaluate("() => window.__runs || 0")


async def _settle(page, runs_before: int, timeout_s: float) -> None:
    """Waits until a script run has finished since ``runs_before`` and none is running now."""
    try:
        await page.wait_for_function("(n) => (window.__runs || 0) > n", arg=runs_before, timeout=5_000)
    except Exception:  # the action started no run (a slider already at its end): nothing to wait for
        pass
    await page.wait_for_function(SETTLED, timeout=timeout_s * 1000)


async def _check(page, name: str, index: int, report: dict) -> None:
    for test_id, what in (("stException", "traceback"), ("stAlertContentError", "st.error")):
        shown = page.locator(f'[data-testid="{test_id}"]')
        if await shown.count():
            # The error's own first lines, so a failed run says what went wrong, not only where.
            text = " ".join((await shown.first.inner_text()).split())[:300]
            report["errors"].append(f"session {index}: {what} on {name or 'overview'}: {text}")


async def _open(page, url: str, name: str, timeout_s: float = 300) -> None:
    """Switches page through the sidebar's navigation, as a user does (the
    session stays), and waits until the page's script has finished."""
    link = page.locator(f'[data-testid="stSidebarNavLink"][href$="/{name}"]').first
    if await link.count():
        before = await _runs(page)
        await link.click()
    else:  # first page of the session: a fresh load
        before = 0
        await page.goto(f"{url}/{name}")
    await _settle(page, before, timeout_s)


WARMING = "Preparing in the background"
BEFORE_RETRAIN_S = 20  # --retrain: cached moves are first timed with no retraining, for comparison


async def _wait_until_warm(page, url: str, name: str, timeout_s: float = 600) -> None:
    """Reruns the page (slider there and back, not timed) until the sidebar no longer says the
    server's background warm-up is running: the timed window measures a started app."""
    deadline = time.time() + timeout_s
    while await page.get_by_text(WARMING).count() and time.time() < deadline:
        await page.wait_for_timeout(2000)
        sliders = page.get_by_role("slider")
        if await sliders.count():
            for key in ("ArrowLeft", "ArrowRight"):
                before = await _runs(page)
                await sliders.first.press(key)
                await _settle(page, before, 300)
        else:  # no slider: open the page again through the sidebar (a rerun)
            await _open(page, url, name)


async def _slider_value(page) -> str:
    """The main slider's value as the page shows it (Streamlit's slider sets no aria-valuenow:
    reading that gave None for every value, so every move after the first counted as cached)."""
    return await page.locator('[data-testid="stSliderThumbValue"]').first.inner_text(timeout=10_000)


async def _move_sliders(page, name: str, index: int, rng: random.Random, report: dict, key: str) -> None:
    sliders = page.get_by_role("slider")
    for _ in range(rng.randint(1, 3) if await sliders.count() else 0):
        thumb = sliders.first  # each page's main slider comes first
        started, before = time.perf_counter(), await _runs(page)
        direction = rng.choice(["ArrowLeft", "ArrowRight"])
        path = []  # every value the slider passes through: each press is a rerun of its own
        try:
            await thumb.focus(timeout=10_000)
            for _ in range(rng.randint(1, 5)):
                await thumb.press(direction, timeout=10_000)
                path.append((name, await _slider_value(page)))
        except Exception:
            if not await sliders.count():
                return  # it was the previous page's slider, on screen until this page's run ended
            raise
        await _settle(page, before, 300)
        elapsed = time.perf_counter() - started
        final = (name, await _slider_value(page))  # the value the last run measured
        if final != path[-1]:
            path.append(final)
        report[key].append(elapsed)
        report["by_page"].setdefault(name or "overview", []).append(elapsed)
        # Cached: every value it passed through had been measured before (by any session); a move
        # through one new value waits for that measurement, wherever it ends. Only a move's final
        # value is known to be measured once it settles: the values it passed through may have been
        # skipped (a key press while a run is starting replaces that run before it measures anything).
        cached = all(value in report["seen_values"] for value in path)
        report["cached_moves" if cached else "uncached_moves"].append(elapsed)
        report["seen_values"].add(path[-1])
        await _check(page, name, index, report)


async def _session(
    browser,
    url: str,
    index: int,
    seconds: float,
    rng: random.Random,
    report: dict,
    pages: tuple[str, ...],
    stay: bool = False,
    warm_first: bool = True,
) -> None:
    """Opens its first page, waits until the server's background warm-up is done
    (not timed; unless not ``warm_first``), then visits every page (in its own order) and moves each page's
    slider until ``seconds`` are over and every page was seen at least once; with
    ``stay`` the session keeps to its first page and only moves its slider."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    await context.add_init_script(COUNT_RUNS)
    page = await context.new_page()
    page.on("pageerror", lambda exc: report["errors"].append(f"session {index}: {exc}"))
    rest = [p for p in pages if p != pages[index % len(pages)]]
    rng.shuffle(rest)
    order = [pages[index % len(pages)], *rest]  # sessions start on different pages
    if stay:
        order = order[:1]
    seen: set[str] = set()
    name = order[0]
    try:
        started = time.perf_counter()
        await _open(page, url, name)
        report["first_visits"].append(time.perf_counter() - started)
        seen.add(name)
        if warm_first:
            await _wait_until_warm(page, url, name)
        report["warm_after_s"].append(time.perf_counter() - started)
        stop_at = time.time() + seconds
        turn = 0 if stay else 1  # the first page is open already
        while time.time() < stop_at or len(seen) < len(order):
            name = order[turn % len(order)]
            turn += 1
            if not (stay and name in seen):
                started = time.perf_counter()
                await _open(page, url, name)
                report["first_visits" if name not in seen else "visits"].append(time.perf_counter() - started)
                seen.add(name)
            await _check(page, name, index, report)
            await _move_sliders(page, name, index, rng, report, "moves")
    except Exception as exc:  # a timeout or a crash is an error of the run, not of the script
        report["errors"].append(f"session {index} ({name or 'overview'}): {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        await context.close()


async def _retrainer(browser, url: str, report: dict) -> None:
    """One session presses 'Remove and retrain' (the page's default: linear_1 out, 300 steps) and waits for it."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    await context.add_init_script(COUNT_RUNS)
    page = await context.new_page()
    try:
        await _open(page, url, "layer_removal")
        report["retrain_started"] = time.time()
        before = await _runs(page)
        await page.get_by_role("button", name="Remove and retrain").click()
        await _settle(page, before, 600)
        report["retrain_ended"] = time.time()
        await _check(page, "layer_removal", -1, report)
    except Exception as exc:
        report["errors"].append(f"retrainer: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        await context.close()


async def _cached_slider(browser, url: str, index: int, report: dict) -> None:
    """Moves the Low-rank slider between two positions measured before, while the retrain runs."""
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    await context.add_init_script(COUNT_RUNS)
    page = await context.new_page()
    try:
        await _open(page, url, "low_rank")
        await _wait_until_warm(page, url, "low_rank")
        thumb = page.get_by_role("slider").first
        await thumb.focus()
        for key in ("ArrowLeft", "ArrowRight"):  # measure the two positions once
            before = await _runs(page)
            await thumb.press(key)
            await _settle(page, before, 300)
        report["sliders_ready"] += 1
        while "retrain_ended" not in report:
            for key in ("ArrowLeft", "ArrowRight"):
                await thumb.focus()
                started, before = time.time(), await _runs(page)
                await thumb.press(key)
                await _settle(page, before, 120)
                if report.get("retrain_started", float("inf")) <= started and "retrain_ended" not in report:
                    report["moves_during_retrain"].append(time.time() - started)
                elif "retrain_started" not in report:  # the same moves with no retraining, for comparison
                    report["moves_before_retrain"].append(time.time() - started)
                await _check(page, "low_rank", index, report)
    except Exception as exc:
        report["errors"].append(f"session {index}: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        await context.close()


def _browsers() -> list:
    """This process's Chromium descendants (the soak's clients)."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith("chrom"):
                found.append(process)
        except psutil.Error:
            pass  # ended meanwhile (a closed tab's renderer)
    return found


def _renice_browsers(nice: int) -> None:
    for process in _browsers():
        try:
            process.nice(nice)
        except Exception:
            pass  # one that ended meanwhile


async def soak(
    url: str,
    sessions: int,
    seconds: float,
    seed: int = 0,
    retrain: bool = False,
    pages: tuple[str, ...] = PAGES,
    stay: bool = False,
    client_nice: int = 0,
    warm_first: bool = True,
) -> dict:
    from playwright.async_api import async_playwright

    report: dict = {
        "errors": [],
        "moves": [],
        "visits": [],
        "first_visits": [],
        "moves_during_retrain": [],
        "moves_before_retrain": [],
        "sliders_ready": 0,
        "by_page": {},
        "warm_after_s": [],
        "cached_moves": [],
        "uncached_moves": [],
        "seen_values": set(),
    }
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        if client_nice:
            _renice_browsers(client_nice)  # renderers started later inherit it from the browser's zygote
        if retrain:
            sliders = [_cached_slider(browser, url, i, report) for i in range(sessions)]

            async def retrain_when_ready() -> None:
                while report["sliders_ready"] < sessions and not report["errors"]:
                    await asyncio.sleep(0.5)
                await asyncio.sleep(BEFORE_RETRAIN_S)  # the same moves without a retraining first
                await _retrainer(browser, url, report)

            await asyncio.gather(retrain_when_ready(), *sliders)
        else:
            await asyncio.gather(
                *(
                    _session(browser, url, i, seconds, random.Random(seed + i), report, pages, stay, warm_first)
                    for i in range(sessions)
                )
            )
        await browser.close()
    return report


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "p50_s": float(np.percentile(v, 50)),
        "p95_s": float(np.percentile(v, 95)),
        "max_s": float(v.max()),
    }


def run(
    sessions: int,
    seconds: float,
    url: str | None = None,
    retrain: bool = False,
    pages: tuple[str, ...] = PAGES,
    stay: bool = False,
    server_pid: int | None = None,
    client_nice: int = 0,
    warm_first: bool = True,
) -> dict:
    """Runs a soak (starting a server if ``url`` is None; ``server_pid`` names a
    given server's process, for its memory) and returns the summary:
    ``actions`` (slider moves and page switches to a page seen before) with their
    p50/p95, first visits of each page apart (they compute what the page needs),
    errors, the server's peak memory, the CPU seconds the server and the browsers
    used (they share this machine's cores: remote users' browsers would not);
    with ``retrain`` the slider moves made while another session retrains;
    ``client_nice`` runs the browsers at that OS priority; ``warm_first=False`` starts moving
    at once instead of after the server's warm-up."""
    import psutil

    proc = None
    if url is None:
        proc, url = start_server()
        server_pid = proc.pid
    peak = [0]
    cpu: dict[str, dict[int, float]] = {"server": {}, "browsers": {}}  # pid → CPU seconds last seen
    done = threading.Event()

    def sample() -> None:
        while not done.is_set() and server_pid is not None:
            try:
                server = psutil.Process(server_pid)
                peak[0] = max(peak[0], server.memory_info().rss)
                cpu["server"][server_pid] = sum(server.cpu_times()[:2])
            except psutil.Error:
                return
            for browser in _browsers():
                try:
                    cpu["browsers"][browser.pid] = sum(browser.cpu_times()[:2])
                except psutil.Error:
                    pass
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = asyncio.run(
            soak(
                url,
                sessions,
                seconds,
                retrain=retrain,
                pages=pages,
                stay=stay,
                client_nice=client_nice,
                warm_first=warm_first,
            )
        )
    finally:
        done.set()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    actions = report["moves"] + report["visits"]
    summary = {
        "sessions": sessions,
        "seconds": seconds,
        "pages": len(pages),
        "actions": len(actions),
        "errors": len(report["errors"]),
        "error_samples": report["errors"][:5],
        **{k: v for k, v in _percentiles(actions).items() if k != "n"},
        "slider_moves": _percentiles(report["moves"]),
        "cached_slider_moves": _percentiles(report["cached_moves"]),
        "uncached_slider_moves": _percentiles(report["uncached_moves"]),
        "page_switches": _percentiles(report["visits"]),
        "first_visits": _percentiles(report["first_visits"]),
        "warm_after_s": max(report["warm_after_s"], default=None),
        "slider_moves_by_page": {name: _percentiles(v) for name, v in report["by_page"].items()},
        "server_peak_rss_gib": peak[0] / 2**30 if server_pid is not None else None,
        "cpu_s": {who: round(sum(seen.values()), 1) for who, seen in cpu.items()},
        "client_nice": client_nice,
    }
    if retrain:
        summary["retrain_s"] = report.get("retrain_ended", np.nan) - report.get("retrain_started", np.nan)
        summary["moves_during_retrain"] = _percentiles(report["moves_during_retrain"])
        summary["moves_before_retrain"] = _percentiles(report["moves_before_retrain"])
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--url", help="an app already running (default: start one)")
    parser.add_argument("--pages", help="comma-separated page names (default: every page; the Overview is '')")
    parser.add_argument("--stay", action="store_true", help="each session keeps to one page, moving its slider")
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="one more session retrains (Layer removal, 300 steps) while the others move cached sliders",
    )
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        help="run the browsers at this OS priority (19: as if remote, they take only CPU the server leaves)",
    )
    args = parser.parse_args()
    parser_pages = [p.strip() for p in args.pages.split(",")] if args.pages else list(PAGES)
    unknown = [p for p in parser_pages if p not in PAGES]
    if unknown:
        print(
            f"error: unknown page {unknown[0]!r}; pages: {', '.join(p or 'overview' for p in PAGES)}", file=sys.stderr
        )
        return 2
    if args.sessions < 1 or args.seconds <= 0:
        print("error: --sessions must be ≥ 1 and --seconds > 0", file=sys.stderr)
        return 2
    summary = run(
        args.sessions,
        args.seconds,
        args.url,
        args.retrain,
        tuple(parser_pages),
        args.stay,
        client_nice=args.client_nice,
    )
    print(json.dumps(summary))
    return 0 if summary["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
