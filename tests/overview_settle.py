"""The Overview's first open on a fresh cache, in Chromium (a benchmark script, not a test).

    LOWRANK_ARTIFACTS=$(mktemp -d) python tests/overview_settle.py

Starts ``streamlit run app.py`` (data from ``$LOWRANK_CIFAR10``) with the browser already up,
opens the Overview and reads it every 0.25 s; prints one JSON object with the seconds from the
server's start until the measured Pareto chart is drawn, until the baseline's latency is shown,
and until the page has settled (latency shown, chart drawn, no script running).
"""

from __future__ import annotations

import asyncio
import json
import time

import soak

PARETO = ".st-key-overview_pareto .js-plotly-plot"


async def overview_settle(limit_s: float = 120) -> dict:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=soak.CHROMIUM)
        page = await browser.new_page()  # the browser is up before the server starts, as a user's is
        proc, url = soak.start_server()
        started, out = time.perf_counter(), {}
        try:
            await page.goto(url)
            while time.perf_counter() - started < limit_s:
                await page.wait_for_timeout(250)
                now = round(time.perf_counter() - started, 1)
                metrics = await page.locator('[data-testid="stMetric"]').all_inner_texts()
                latency = any(m.startswith("Latency") and " ms" in m for m in metrics)
                pareto = await page.locator(PARETO).count()
                if pareto:
                    out.setdefault("pareto_chart_s", now)
                if latency:
                    out.setdefault("latency_shown_s", now)
                if latency and pareto and await page.evaluate(soak.SETTLED):
                    out["settled_s"] = now
                    break
        finally:
            proc.terminate()
            await browser.close()
        return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(overview_settle())))
