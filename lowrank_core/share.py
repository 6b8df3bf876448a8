"""A self-contained HTML report of what was measured, to send to someone who
was not in the room: plotly's JavaScript inlined once, images embedded as
PNG data, no network needed to open it."""

from __future__ import annotations

import base64
import datetime
import html
import io

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from lowrank_core import charts, measure, methods, report

CHANGED_IMAGES = 12


def _png(image: np.ndarray, scale: int = 3) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).resize((32 * scale, 32 * scale), Image.NEAREST).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pareto_figure(results: list[dict]) -> go.Figure:
    """Accuracy vs stored size of every measured variant, by method, the front joined."""
    fig = charts.pareto(results, cost_of=lambda r: r["bytes"] / 2**20)
    return charts.style(
        fig, "Accuracy vs stored size, every measured variant", "stored size (MiB)", "test accuracy (%)", 480
    ).update_xaxes(type="log")


def chosen_variants(results: list[dict], baseline: dict, limit: int = 8) -> list[dict]:
    """The baseline, the best within 1 point, and the Pareto front by stored size (up to ``limit``)."""
    best = report.best_within(results, baseline)
    front = report.pareto_mask([r["bytes"] for r in results], [r["accuracy"] for r in results])
    picked = (
        [baseline]
        + list(best.values())
        + sorted((r for r, f in zip(results, front) if f), key=lambda r: -r["accuracy"])
    )
    unique, seen = [], set()
    for r in picked:
        if r["label"] not in seen:
            unique.append(r)
            seen.add(r["label"])
    return unique[:limit]


def build(engine, results: list[dict] | None = None) -> str:
    """The report's HTML for ``engine``'s checkpoint and its measured results."""
    baseline = engine.evaluate(methods.REFERENCE, with_latency=False)
    results = [
        r
        for r in (results if results is not None else engine.cached_results())
        if r.get("n_test") == baseline["n_test"]
    ]
    if not any(r["method"] == methods.REFERENCE for r in results):
        results.append(baseline)
    best = report.best_within(results, baseline)
    parts = [
        "<h1>Compressing the CIFAR-10 network: what it costs and buys</h1>",
        _meta(baseline),
        _model_card(engine, baseline),
        _headline(best, baseline),
        pareto_figure(results).to_html(include_plotlyjs=True, full_html=False),
        _variants_table(chosen_variants(results, baseline), baseline),
    ]
    if best:
        parts.append(_changes(engine, baseline, best["params"]))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Compression report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    ".meta{color:#666}.headline{font-size:1.2em}.gallery{display:flex;flex-wrap:wrap;gap:8px}"
    "figure{margin:0;width:110px;font-size:11px}img{image-rendering:pixelated}"
)


def _meta(baseline: dict) -> str:
    env = measure.environment()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<p class=meta>Written {now} on {html.escape(env['cpu'])} ({env['backend']}, {env['cores']} cores, "
        f"jax {env['jax']}). Every figure was measured by this product on all {baseline['n_test']:,} test "
        "images of the data below; latencies are those measured on the machine each record names.</p>"
    )


def _model_card(engine, baseline: dict) -> str:
    card = {
        "checkpoint": f"{engine.checkpoint_dir} (content {engine.checkpoint_hash})",
        "preset": engine.metadata.get("preset"),
        "test accuracy": f"{baseline['accuracy']:.2%}",
        "parameters": f"{baseline['params']:,}",
        "stored": f"{baseline['bytes'] / 2**20:.1f} MiB ({baseline['storage_dtype']})",
        "data": f"{engine.data.source} (sha256 {engine.data.sha256[:16]}…)",
        "layers": ", ".join(f"{n} {'×'.join(map(str, s['w']))}" for n, s in engine.spec.shapes().items()),
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in card.items())
    return f"<h2>Model card</h2><table>{rows}</table>"


def _headline(best: dict, baseline: dict) -> str:
    if not best:
        return "<h2>Best measured trade-off</h2><p>No measured variant lies within 1 point of the baseline yet.</p>"
    p, b = best["params"], best["bytes"]
    return (
        f"<h2>Best measured trade-off</h2><p class=headline>Within 1 point of the baseline: <b>"
        f"{baseline['params'] / p['params']:.1f}× fewer parameters</b> ({html.escape(p['label'])}, "
        f"{p['accuracy']:.2%}); <b>{baseline['bytes'] / b['bytes']:.1f}× smaller stored</b> "
        f"({html.escape(b['label'])}, {b['accuracy']:.2%}).</p>"
    )


def _variants_table(chosen: list[dict], baseline: dict) -> str:
    rows = []
    for r in chosen:
        latency = (
            f"{r['latency_ms']:.0f} ms (batch {r['batch_size']:,}, {r['measured_on']['cpu']})"
            if "latency_ms" in r
            else "not measured"
        )
        rows.append(
            f"<tr><td>{html.escape(r['label'])}</td><td>{r['accuracy']:.2%}</td>"
            f"<td>{100 * (r['accuracy'] - baseline['accuracy']):+.2f} pts</td><td>{r['params']:,}</td>"
            f"<td>{r['bytes'] / 2**20:.2f} MiB</td><td>{html.escape(latency)}</td></tr>"
        )
    return (
        "<h2>Chosen variants</h2><table><tr><th>variant</th><th>accuracy</th><th>change</th>"
        "<th>parameters</th><th>stored</th><th>latency (batch, where)</th></tr>" + "".join(rows) + "</table>"
    )


def _changes(engine, baseline: dict, target: dict) -> str:
    """Per-class accuracy and a gallery of broken and fixed images for ``target`` against the baseline."""
    found = engine.impact(target)
    names = found["class_names"]
    fig = charts.per_class(found, "baseline", target["method"])
    fig.update_layout(title=f"Accuracy per class: {target['label']}", height=380, yaxis_title="accuracy (%)")
    parts = [
        f"<h2>What changes ({html.escape(target['label'])})</h2>",
        f"<p>{len(found['fixed']):,} test images fixed, {len(found['broken']):,} broken, "
        f"{len(found['changed_wrong']):,} moved between wrong classes.</p>",
        fig.to_html(include_plotlyjs=False, full_html=False),
    ]
    reference, variant = engine.predictions(baseline), engine.predictions(target)
    for group in ("broken", "fixed"):
        parts.append(
            f"<h3>{group.capitalize()} (first {min(CHANGED_IMAGES, len(found[group]))} of "
            f"{len(found[group]):,})</h3><div class=gallery>"
        )
        for i in found[group][:CHANGED_IMAGES]:
            caption = f"{names[engine.data.y_test[i]]}: was {names[reference[i]]}, now {names[variant[i]]}"
            parts.append(
                f"<figure><img src='{_png(engine.data.x_test[i])}' alt='test image {i}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    return "".join(parts)
