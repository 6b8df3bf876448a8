"""Per-layer sensitivity: each dense layer truncated alone, as a heatmap, and
how well single-layer drops add up when every layer is truncated together."""

import pandas as pd
import streamlit as st

from lowrank_core import charts, report, sensitivity
from lowrank_core.methods.svd import SvdConfig
from pages.common import baseline_accuracy, evaluate, get_engine, progress_callback, session

st.title("Per-layer sensitivity (truncated SVD)")
eng = get_engine()
if eng is not None:
    base = baseline_accuracy(session())
    n_test = base["n_test"]
    names = {n: f"{n} ({'×'.join(map(str, eng.params[n]['w'].shape))})" for n in eng.spec.dense_layers}
    rows = eng.svd_sensitivity(compute=False)
    if rows is None:
        st.info(
            f"Each of the {len(eng.spec.dense_layers)} dense layers truncated alone at "
            f"{len(sensitivity.DEFAULT_FRACTIONS)} rank fractions, every other layer intact, each cell measured on "
            f"all {n_test:,} test images (≈ 25–30 s on 2 cores, the SVDs included; then cached)."
        )
        if st.button("Measure the table", type="primary", key="sensitivity_run"):
            on_progress, bar = progress_callback("Measuring")
            slot, partial = st.empty(), []

            def on_row(row: dict) -> None:
                """Redraws the table each time a layer's row is complete."""
                partial.append(row)
                if len(partial) % len(sensitivity.DEFAULT_FRACTIONS) == 0:
                    hidden = list(names)[:-1]
                    figure = charts.sensitivity_heatmap(
                        partial, base, hidden, list(sensitivity.DEFAULT_FRACTIONS), names
                    )
                    slot.plotly_chart(figure, key=f"sensitivity_partial_{len(partial)}")

            rows = eng.svd_sensitivity(on_progress=on_progress, on_row=on_row)
            bar.empty()
            slot.empty()
        else:
            st.stop()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    fractions = list(dict.fromkeys(r["fraction"] for r in rows))
    grid = {(r["layer"], r["fraction"]): r for r in rows}
    show_output = st.toggle(
        "Include the output layer (its drops dwarf the hidden layers')", False, key="sensitivity_show_output"
    )
    shown = layers if show_output else layers[:-1]
    st.plotly_chart(charts.sensitivity_heatmap(rows, base, shown, fractions, names), key="sensitivity_heatmap")
    output = layers[-1]
    worst = max(fractions, key=lambda f: base["accuracy"] - grid[(output, f)]["accuracy"])
    st.caption(
        f"Each cell: all {n_test:,} test images, the baseline {base['accuracy']:.2%}. The output layer "
        f"({output}) has rank at most {min(eng.params[output]['w'].shape)}, so ⌊f·10⌋ leaves it only a few "
        f"directions: at f = {worst:g} alone it costs "
        f"{100 * (base['accuracy'] - grid[(output, worst)]['accuracy']):.1f} points, which is why truncating "
        "every layer at one fraction (the seed's semantics) collapses while the hidden layers alone barely move."
    )

    st.subheader("Do single-layer drops add up?")
    hidden_only = st.toggle("Hidden layers only (output layer kept)", True, key="sensitivity_hidden")
    chosen = layers[:-1] if hidden_only else layers
    checks = [f for f in (0.02, 0.05, 0.1, 0.2) if f in fractions]
    if st.button(
        f"Measure all {len(chosen)} layers together at f = {', '.join(map(str, checks))}", key="sensitivity_additivity"
    ):
        with st.spinner("Measuring on every test image…"):
            for f in checks:
                evaluate(session(), "svd", SvdConfig(f, include_output=not hidden_only), with_latency=False)
    measured = {}
    for f in checks:
        record = eng.cached_result("svd", SvdConfig(f, include_output=not hidden_only))
        if record is not None:
            measured[f] = record["accuracy"]
    table = report.additivity(rows, base["accuracy"], measured, chosen)
    if table:
        frame = pd.DataFrame(table)
        frame["sum_of_single_drops"] *= 100
        frame["measured_drop"] *= 100
        st.dataframe(
            frame.rename(
                columns={
                    "fraction": "rank fraction f",
                    "sum_of_single_drops": "sum of single drops (points)",
                    "measured_drop": "measured drop, all together (points)",
                }
            ),
            hide_index=True,
        )
        st.caption("The advisor chooses per-layer ranks assuming drops add up, then measures every candidate.")
    else:
        st.caption("Not measured yet: press the button above.")
