"""The Low-rank page's first minute on a fresh cache, in Chromium (a benchmark script, not a test).

    LOWRANK_ARTIFACTS=$(mktemp -d) python tests/first_minute.py [--seconds 100]

Starts ``streamlit run app.py`` (data from ``$LOWRANK_CIFAR10``), opens the Low-rank page
straight away with no click, and every 2 s reads its latency metric and the curves' status
caption; prints one JSON object: when the latency was first shown and how many curve points
had their accuracy and latency at each reading (seconds from the server's start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time

import soak

STATUS = re.compile(r"(\d+) of (\d+) points have their accuracy, (\d+) their latency")


async def first_minute(seconds: float) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=soak.CHROMIUM)
        page = await browser.new_page()  # the browser is up before the server starts, as a user's is
        proc, url = soak.start_server()
        started, readings, latency_s = time.perf_counter(), [], None
        try:
            await page.goto(f"{url}/low_rank")
            while time.perf_counter() - started < seconds:
                await page.wait_for_timeout(2000)
                now = round(time.perf_counter() - started, 1)
                metrics = await page.locator('[data-testid="stMetric"]').all_inner_texts()
                if latency_s is None and any(m.startswith("Latency") and " ms" in m for m in metrics):
                    latency_s = now
                captions = await page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
                status = next((m for c in captions if (m := STATUS.search(c))), None)
                if status:
                    readings.append(
                        {"s": now, "accuracy": int(status[1]), "latency": int(status[3]), "of": int(status[2])}
                    )
        finally:
            proc.kill()
            await browser.close()
    return {"latency_shown_s": latency_s, "curve_points": readings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=100)
    print(json.dumps(asyncio.run(first_minute(parser.parse_args().seconds))))


if __name__ == "__main__":
    main()
