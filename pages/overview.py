"""Overview: the loaded model, and every measured variant on one Pareto chart."""

import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank_core import model, report
from pages.common import METHOD_COLORS, baseline_accuracy, baseline_result, cached_results, get_engine, keys, style

st.title("Compression trade-offs at a glance")
eng = get_engine()
if eng is not None:
    # Accuracy first (seconds), latency after the chart: the page is useful
    # while the latency repeats run.
    with st.spinner("Measuring the checkpoint on every test image…"):
        base = baseline_accuracy(*keys())
    cols = st.columns(4)
    cols[0].metric("Test accuracy", f"{base['accuracy']:.2%}", help=f"measured now on {base['n_test']:,} test images")
    cols[1].metric("Parameters", f"{base['params']:,}")
    cols[2].metric("MACs / image", f"{base['macs'] / 1e6:.1f} M")
    latency_slot = cols[3].empty()
    latency_slot.metric("Latency, batch 1,000", "measuring…")

    st.subheader("Every measured variant")
    axis = st.radio("Cost axis", ["stored size (MiB)", "latency (ms per 1,000 images)"], horizontal=True,
                    key="overview_axis")
    by_latency = axis.startswith("latency")
    measured = cached_results(*keys())
    timed = [r for r in measured if "latency_ms" in r]
    if by_latency:
        results = timed or [baseline_result(*keys())]
    else:
        results = measured or [base]
    cost_of = (lambda r: r["latency_ms"]) if by_latency else (lambda r: r["bytes"] / 2**20)
    front = report.pareto_mask([cost_of(r) for r in results], [r["accuracy"] for r in results])
    fig = go.Figure()
    for method in METHOD_COLORS:
        points = [(r, on_front) for r, on_front in zip(results, front) if r["method"] == method]
        if not points:
            continue
        fig.add_trace(go.Scatter(
            x=[cost_of(r) for r, _ in points], y=[100 * r["accuracy"] for r, _ in points], mode="markers",
            name=report.METHOD_LABELS[method], text=[report.describe(r) for r, _ in points],
            hovertemplate="%{text}<br>accuracy %{y:.2f} %<br>cost %{x:.1f}<extra></extra>",
            marker=dict(color=METHOD_COLORS[method], size=[14 if f else 9 for _, f in points],
                        symbol="star" if method == "baseline" else "circle",
                        line=dict(width=[2 if f else 0 for _, f in points], color="#000"))))
    order = sorted(zip(results, front), key=lambda p: cost_of(p[0]))
    fig.add_trace(go.Scatter(x=[cost_of(r) for r, f in order if f], y=[100 * r["accuracy"] for r, f in order if f],
                             mode="lines", name="Pareto front", line=dict(color="#999", dash="dash")))
    st.plotly_chart(style(fig, "Accuracy vs cost (outlined: Pareto-optimal)", axis, "test accuracy (%)", 460),
                    key="overview_pareto")
    st.caption(f"{len(results)} variants{' with measured latency' if by_latency else ''}, from the cache of this "
               "checkpoint. Variants appear here as soon as any page or the CLI measures them.")

    with st.spinner("Timing the checkpoint (compile excluded, warm-up, 7 repeats)…"):
        base = baseline_result(*keys())
    latency_slot.metric("Latency, batch 1,000", f"{base['latency_ms']:.0f} ms",
                        help=f"median of {base['latency']['1000']['repeats']} runs, IQR "
                             f"{base['latency']['1000']['iqr_ms']:.1f} ms; batch 1: {base['latency_batch1_ms']:.2f} ms")

    st.subheader("Does rank truncation save time?")
    headlines = report.svd_headlines(timed, base)
    if headlines:
        for line in headlines:
            st.markdown("- " + line)
    else:
        st.info("Measure the SVD curves on the Low-rank page (button 'Measure curves') to answer this from data.")

    with st.expander("Model card"):
        meta = eng.metadata
        rows = [{"layer": name, "kernel shape": " × ".join(map(str, shapes["w"])),
                 "parameters": sum(math.prod(s) for s in shapes.values())}
                for name, shapes in model.expected_shapes().items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        st.write({"preset": meta.get("preset"), "recorded test accuracy": meta.get("test_accuracy"),
                  "training seconds": meta.get("train_seconds"), "trained on": meta.get("trained_on", "this machine"),
                  "data sha256": meta.get("data_sha256"), "storage": meta.get("storage_dtype")})
        st.json(meta.get("config", {}), expanded=False)
