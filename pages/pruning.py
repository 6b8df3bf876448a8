"""Pruning: magnitude pruning, one-shot or gradual, unstructured or structured."""

import plotly.graph_objects as go
import streamlit as st

from lowrank_core import model
from lowrank_core.methods.prune import PruneConfig
from pages.common import (
    METHOD_COLORS,
    config_or_stop,
    get_engine,
    long_jobs_note,
    shared_mode,
    style,
    variant_metrics,
)

st.title("Magnitude pruning")
eng = get_engine()
if eng is not None:
    sparsity = st.slider(
        "Sparsity (share of kernel weights, or of hidden units if structured)",
        0.0,
        0.99,
        0.5,
        0.01,
        key="prune_sparsity",
    )
    c1, c2, c3 = st.columns(3)
    kind = c1.radio("Kind", ["unstructured", "structured (drop hidden units)"], key="prune_kind", horizontal=True)
    structured = kind.startswith("structured")
    schedule = c2.radio(
        "Schedule",
        ["one-shot", "gradual"],
        key="prune_schedule",
        horizontal=True,
        disabled=structured or shared_mode(),
        help="gradual: Zhu & Gupta's cubic schedule while the dense stack fine-tunes (takes a minute)"
        + (f"; training is {long_jobs_note()}" if shared_mode() else ""),
    )
    scope = c3.radio(
        "Threshold",
        ["layer", "global"],
        key="prune_scope",
        horizontal=True,
        disabled=structured,
        help="layer: every pruned kernel to the sparsity; global: one magnitude threshold over all pruned "
        "kernels (gradual schedule too)",
    )
    o1, o2 = st.columns(2)
    with_convolutions = o1.toggle(
        "Prune the convolutions too",
        False,
        key="prune_convolutions",
        help="the two convolutions hold 0.1 % of the weights: pruning them saves next to nothing, costs accuracy, "
        "and makes every new point run the convolutions over all test images again (seconds)",
    )
    measure_latency = o2.toggle(
        "Measure latency too (shown once accuracy is)", True, key="prune_latency", help="switch off for faster moves"
    )
    dense_only = () if with_convolutions else tuple(model.dense_layer_names(eng.params))
    config = config_or_stop(
        lambda: PruneConfig(
            sparsity=float(sparsity),
            scope=scope,
            structured=structured,
            schedule="one-shot" if structured else schedule,
            gradual_steps=300,
            only=() if structured else dense_only,
        )
    )
    training = "Gradual pruning while fine-tuning" if config.schedule == "gradual" else None
    result, add_latency = variant_metrics("prune", config, measure_latency, training)
    if structured:
        st.info(
            "Structured pruning makes the matrices physically smaller, so parameters, MACs and latency drop. "
            "Unstructured pruning only zeroes weights: stored densely, it runs no faster."
        )
    else:
        st.caption(
            f"Non-zero weights: {result['nonzero_params']:,} of {result['params']:,}. Stored densely, a "
            "masked matrix runs no faster; switch to structured to see latency move."
        )
    sparsities = result["facts"]["sparsity"]
    fig = go.Figure(
        go.Bar(
            x=list(sparsities),
            y=[100 * v for v in sparsities.values()],
            marker_color=METHOD_COLORS["prune"],
            text=[f"{100 * v:.0f} %" for v in sparsities.values()],
        )
    )
    st.plotly_chart(
        style(fig, "Share of exactly-zero kernel weights per layer", "layer", "zero weights (%)", 320), key="prune_bars"
    )
