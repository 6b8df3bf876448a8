"""Spectra: how singular values decay, layer by layer, trained vs initialization."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank_core import compress
from pages.common import get_engine, keys, spectra

st.title("Singular-value spectra of the dense layers")
eng = get_engine()
if eng is not None:
    c1, c2 = st.columns([2, 1])
    fraction = c1.slider("Truncation: rank fraction f", 0.01, 1.0, 0.5, 0.01, key="spectra_fraction")
    view = c2.radio("View", ["singular values", "normalized", "cumulative energy"], key="spectra_view", horizontal=True)
    show_init = st.checkbox("Overlay the layer at its random initialization", True, key="spectra_init")
    all_spectra = spectra(*keys())
    curve_key = {
        "singular values": "singular_values",
        "normalized": "normalized",
        "cumulative energy": "cumulative_energy",
    }[view]
    y_title = {"singular values": "σᵢ", "normalized": "σᵢ / σ₁", "cumulative energy": "Σ_{j≤i} σⱼ² / Σσ²"}[view]
    cols = st.columns(2)
    for i, (name, spec) in enumerate(all_spectra.items()):
        m, n = spec["shape"]
        k = compress.rank_for_fraction(fraction, m, n)
        fig = go.Figure()
        ranks = list(range(1, len(spec["trained"][curve_key]) + 1))
        fig.add_trace(go.Scatter(x=ranks, y=spec["trained"][curve_key], name="trained", line=dict(color="#1f77b4")))
        if show_init:
            fig.add_trace(
                go.Scatter(
                    x=ranks, y=spec["init"][curve_key], name="initialization", line=dict(color="#aaaaaa", dash="dot")
                )
            )
        fig.add_vline(x=k, line=dict(color="#d62728"), annotation_text=f"k = {k}")
        fig.update_layout(
            title=f"{name} ({m}×{n})",
            height=320,
            margin=dict(t=40, b=40, l=50, r=10),
            xaxis_title="index i (rank)",
            yaxis_title=y_title,
            yaxis_type="log" if view != "cumulative energy" else "linear",
        )
        cols[i % 2].plotly_chart(fig, key=f"spectrum_{name}")
    rows = []
    for name, spec in all_spectra.items():
        st_tr, st_in = spec["stats"], spec["init_stats"]
        rows.append(
            {
                "layer": name,
                "max rank": st_tr["max_rank"],
                "rank 90 %": st_tr["rank_90"],
                "rank 95 %": st_tr["rank_95"],
                "rank 99 %": st_tr["rank_99"],
                "effective rank": round(st_tr["effective_rank"], 1),
                "effective rank at init": round(st_in["effective_rank"], 1),
                "stable rank": round(st_tr["stable_rank"], 2),
                "stable rank at init": round(st_in["stable_rank"], 2),
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption(
        "Rank for E % energy: smallest k with Σ_{i≤k} σᵢ² ≥ E·Σσ². Effective rank: exp of the entropy of "
        "σ/Σσ. Stable rank: ‖W‖_F² / ‖W‖₂²."
    )
