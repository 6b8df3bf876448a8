"""Compare & export: measured variants side by side; download parameters and tables."""

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank_core import report, share
from pages.common import cached_results, export_buttons, get_engine, run_with_errors, session, style

st.title("Compare and export")
eng = get_engine()
if eng is not None:
    results = cached_results(session())
    if not results:
        st.info("Nothing measured yet: move a slider on the Low-rank, Pruning or Layer removal page first.")
        st.stop()
    labels = report.unique_labels(results)
    default = [label for label, r in labels.items() if r["method"] == "baseline"][:1] + [
        label for label, r in labels.items() if r["method"] != "baseline"
    ][:2]
    picked = st.multiselect("Variants", list(labels), default=default, key="compare_pick")
    chosen = [labels[p] for p in picked]
    if chosen:
        table = pd.DataFrame([report.flat_row(r) for r in chosen]).drop(columns=["steps", "finetune", "checkpoint"])
        st.dataframe(table, hide_index=True)
        cols = st.columns(3)
        for col, (title, value, unit) in zip(
            cols,
            [
                ("Test accuracy", lambda r: 100 * r["accuracy"], "%"),
                ("Latency (batch in the table)", lambda r: r.get("latency_ms"), "ms"),
                ("Stored size", lambda r: r["bytes"] / 2**20, "MiB"),
            ],
        ):
            fig = go.Figure(
                go.Bar(
                    x=picked,
                    y=[value(r) for r in chosen],
                    marker_color=[report.method_colour(r["method"]) for r in chosen],
                )
            )
            fig.update_xaxes(showticklabels=False)
            col.plotly_chart(style(fig, title, "variant (hover for name)", unit, 320), key=f"compare_{unit}")
    st.subheader("Export")
    e1, e2 = st.columns(2)
    e1.download_button(
        "Results table (CSV)", report.to_csv(results), "lowrank_results.csv", "text/csv", key="export_csv"
    )
    e2.download_button(
        "Results table (JSON)",
        json.dumps(results, indent=1),
        "lowrank_results.json",
        "application/json",
        key="export_json",
    )
    if st.button("Prepare a shareable report (HTML, opens offline)", key="export_report_prepare"):
        with st.spinner("Writing the report (charts, per-class impact, changed images)…"):
            text = run_with_errors(share.build, eng, results)
        if text is not None:
            st.session_state["export_report_html"] = text
    if st.session_state.get("export_report_html"):
        st.download_button(
            "Download report.html",
            st.session_state["export_report_html"],
            "report.html",
            "text/html",
            key="export_report",
        )
    target = st.selectbox("One variant (.npz parameters, or an ONNX model)", list(labels), key="export_variant")
    export_buttons(eng, labels[target], target, "export")
