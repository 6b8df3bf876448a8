"""Spectra: how singular values decay, layer by layer, trained vs initialization."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank_core import compress, paths
from pages.common import (
    checkpoint_digest,
    data_spectra,
    get_engine,
    other_spectra,
    reference_line,
    run_with_errors,
    session,
    spectra,
    validate_path,
)

st.title("Singular-value spectra of the dense layers")
eng = get_engine()
if eng is not None:
    c1, c2 = st.columns([2, 1])
    fraction = c1.slider("Truncation: rank fraction f", 0.01, 1.0, 0.5, 0.01, key="spectra_fraction")
    view = c2.radio("View", ["singular values", "normalized", "cumulative energy"], key="spectra_view", horizontal=True)
    o1, o2 = st.columns([1, 2])
    show_init = o1.checkbox("Overlay the layer at its random initialization", True, key="spectra_init")
    show_data = o1.checkbox(
        "Beside σ(W): σ(LᵀW), the layer as the data sees it",
        False,
        key="spectra_data",
        help="L Lᵀ = XᵀX over the layer's inputs on 5,000 training images: why a layer truncates better or worse "
        "than its weight spectrum suggests (the activation basis of the Low-rank page truncates this)",
    )
    trained = sorted(str(p.parent) for p in (paths.artifacts_dir() / "checkpoints").glob("*/params.npz"))
    other_path = o2.selectbox(
        "Overlay another checkpoint (e.g. one trained on the Train page)",
        [""] + [str(paths.BASELINE_DIR)] + trained,
        key="spectra_other",
        accept_new_options=True,
        help="a checkpoint folder of the same architecture; type a path or pick one",
    )
    other = None
    if other_path:
        problem = validate_path(other_path, "checkpoint")
        if problem:
            st.error(f"{problem}: pick a folder holding params.npz and metadata.json")
        else:
            other = run_with_errors(other_spectra, session(), other_path, checkpoint_digest(other_path))
    all_spectra = spectra(session())
    seen = run_with_errors(data_spectra, session()) if show_data else None
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
        ranks = np.arange(1, len(spec["trained"][curve_key]) + 1)  # arrays travel to the browser as binary
        fig.add_trace(go.Scatter(x=ranks, y=spec["trained"][curve_key], name="trained", line=dict(color="#1f77b4")))
        if show_init:
            fig.add_trace(
                go.Scatter(
                    x=ranks, y=spec["init"][curve_key], name="initialization", line=dict(color="#aaaaaa", dash="dot")
                )
            )
        if seen is not None:
            theirs = seen[name]["curves"][curve_key]
            fig.add_trace(
                go.Scatter(
                    x=np.arange(1, len(theirs) + 1),
                    y=theirs,
                    name="σ(LᵀW), as data sees it",
                    line=dict(color="#2ca02c"),
                )
            )
        if other is not None:
            theirs = other[name]["curves"][curve_key]
            fig.add_trace(
                go.Scatter(
                    x=np.arange(1, len(theirs) + 1), y=theirs, name="other checkpoint", line=dict(color="#ff7f0e")
                )
            )
        reference_line(fig, x=k, text=f"k = {k}", color="#d62728")
        fig.update_yaxes(exponentformat="e")  # 1e-15, not plotly's SI "1f"
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
                "non-zero σ": st_tr["nonzero"],
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
    st.caption(
        "Where a trained spectrum stops before the axis ends, the singular values after it are zero (a log axis "
        "cannot draw 0; the table counts the non-zero ones, the numerical rank): exactly zero for the layer's "
        "dead hidden units (all-zero incoming weights with a non-positive bias, or never read by the next layer: "
        "weight decay and float16 storage leave many in the shipped baseline; each is a zero row or column of W, "
        "which the SVD leaves out exactly, and dropping them is lossless, see the Int8 & cleanup page), and "
        "reported as zero below 10⁻⁶·σ_max, where the float64 SVD cannot tell them from zero."
    )
