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

from lowrank_core import measure, report

CHANGED_IMAGES = 12


def _png(image: np.ndarray, scale: int = 3) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).resize((32 * scale, 32 * scale), Image.NEAREST).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pareto_figure(results: list[dict]) -> go.Figure:
    """Accuracy vs stored size of every measured variant, by method, the front joined."""
    front = report.pareto_mask([r["bytes"] for r in results], [r["accuracy"] for r in results])
    fig = go.Figure()
    for method in sorted({r["method"] for r in results}, key=lambda m: (m != "baseline", m)):
        points = [r for r in results if r["method"] == method]
        fig.add_trace(
            go.Scatter(
                x=[r["bytes"] / 2**20 for r in points],
                y=[100 * r["accuracy"] for r in points],
                mode="markers",
                name=report.method_label(method),
                text=[r["label"] for r in points],
                marker=dict(color=report.method_colour(method), size=10),
                hovertemplate="%{text}<br>%{y:.2f} %<br>%{x:.2f} MiB<extra></extra>",
            )
        )
    order = sorted((r for r, f in zip(results, front) if f), key=lambda r: r["bytes"])
    fig.add_trace(
        go.Scatter(
            x=[r["bytes"] / 2**20 for r in order],
            y=[100 * r["accuracy"] for r in order],
            mode="lines",
            name="Pareto front",
            line=dict(color="#999", dash="dash"),
        )
    )
    fig.update_layout(
        title="Accuracy vs stored size, every measured variant",
        xaxis_title="stored size (MiB)",
        yaxis_title="test accuracy (%)",
        xaxis_type="log",
        height=480,
    )
    return fig


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
    baseline = engine.evaluate("baseline", with_latency=False)
    results = [
        r
        for r in (results if results is not None else engine.cached_results())
        if r.get("n_test") == baseline["n_test"]
    ]
    if not any(r["method"] == "baseline" for r in results):
        results.append(baseline)
    env = measure.environment()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = engine.metadata
    best = report.best_within(results, baseline)
    parts = [
        "<h1>Compressing the CIFAR-10 network: what it costs and buys</h1>",
        f"<p class=meta>Written {now} on {html.escape(env['cpu'])} ({env['backend']}, {env['cores']} cores, "
        f"jax {env['jax']}). Every figure was measured by this product on all {baseline['n_test']:,} test "
        "images of the data below; latencies are those measured on the machine each record names.</p>",
        "<h2>Model card</h2><table>",
    ]
    card = {
        "checkpoint": f"{engine.checkpoint_dir} (content {engine.checkpoint_hash})",
        "preset": meta.get("preset"),
        "test accuracy": f"{baseline['accuracy']:.2%}",
        "parameters": f"{baseline['params']:,}",
        "stored": f"{baseline['bytes'] / 2**20:.1f} MiB ({baseline['storage_dtype']})",
        "data": f"{engine.data.source} (sha256 {engine.data.sha256[:16]}…)",
        "layers": ", ".join(f"{n} {'×'.join(map(str, s['w']))}" for n, s in engine.spec.shapes().items()),
    }
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in card.items()]
    parts.append("</table><h2>Best measured trade-off</h2>")
    if best:
        p, b = best["params"], best["bytes"]
        parts.append(
            f"<p class=headline>Within 1 point of the baseline: <b>{baseline['params'] / p['params']:.1f}× "
            f"fewer parameters</b> ({html.escape(p['label'])}, {p['accuracy']:.2%}); <b>"
            f"{baseline['bytes'] / b['bytes']:.1f}× smaller stored</b> ({html.escape(b['label'])}, "
            f"{b['accuracy']:.2%}).</p>"
        )
    else:
        parts.append("<p>No measured variant lies within 1 point of the baseline yet.</p>")
    parts.append(pareto_figure(results).to_html(include_plotlyjs=True, full_html=False))
    parts.append(
        "<h2>Chosen variants</h2><table><tr><th>variant</th><th>accuracy</th><th>change</th>"
        "<th>parameters</th><th>stored</th><th>latency (batch, where)</th></tr>"
    )
    for r in chosen_variants(results, baseline):
        latency = (
            f"{r['latency_ms']:.0f} ms (batch {r['batch_size']:,}, {r['measured_on']['cpu']})"
            if "latency_ms" in r
            else "not measured"
        )
        parts.append(
            f"<tr><td>{html.escape(r['label'])}</td><td>{r['accuracy']:.2%}</td>"
            f"<td>{100 * (r['accuracy'] - baseline['accuracy']):+.2f} pts</td><td>{r['params']:,}</td>"
            f"<td>{r['bytes'] / 2**20:.2f} MiB</td><td>{html.escape(latency)}</td></tr>"
        )
    parts.append("</table>")
    if best:
        target = best["params"]
        found = engine.impact(target)
        names = found["class_names"]
        fig = go.Figure(
            [
                go.Bar(
                    x=names, y=[100 * c["reference"] for c in found["per_class"]], name="baseline", marker_color="#222"
                ),
                go.Bar(
                    x=names,
                    y=[100 * c["variant"] for c in found["per_class"]],
                    name="variant",
                    marker_color=report.method_colour(target["method"]),
                ),
            ]
        )
        fig.update_layout(
            barmode="group", title=f"Accuracy per class: {target['label']}", height=380, yaxis_title="accuracy (%)"
        )
        parts.append(f"<h2>What changes ({html.escape(target['label'])})</h2>")
        parts.append(
            f"<p>{len(found['fixed']):,} test images fixed, {len(found['broken']):,} broken, "
            f"{len(found['changed_wrong']):,} moved between wrong classes.</p>"
        )
        parts.append(fig.to_html(include_plotlyjs=False, full_html=False))
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
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".meta{color:#666}.headline{font-size:1.2em}.gallery{display:flex;flex-wrap:wrap;gap:8px}"
        "figure{margin:0;width:110px;font-size:11px}img{image-rendering:pixelated}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Compression report</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
