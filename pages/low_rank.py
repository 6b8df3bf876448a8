"""Low-rank (SVD): choose ranks, see accuracy, latency and size live, and the curves."""

import dataclasses

import plotly.graph_objects as go
import streamlit as st

from lowrank_core import compress, curves, model
from lowrank_core.methods import REFERENCE, Variant
from lowrank_core.methods.svd import BASES as SVD_BASES, SvdConfig, global_fraction_points
from pages.common import (
    DISTILLED,
    FORM_DASH,
    METHOD_COLORS,
    POLL_S,
    baseline_accuracy,
    cached_results,
    config_or_stop,
    evaluate,
    get_engine,
    latency_stats,
    long_jobs_note,
    reference_line,
    session,
    shared_mode,
    style,
    variant_metrics,
)

CURVE_GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0)

st.title("Low-rank approximation (truncated SVD)")
# Fixed places: each part of the page in a container made first, and each polling fragment drawing
# the same number of elements on every rerun (placeholders where there is nothing to say yet); a
# page whose layout shifted under a polling fragment failed in Streamlit's frontend with "Bad delta
# path index" in the 8-session soak.
controls, measured, curves_area = st.container(), st.container(), st.container()
with controls:
    eng = get_engine()
if eng is not None:
    with controls:
        c1, c2, c3 = st.columns([2, 1, 1])
        mode = c1.radio(
            "Choose ranks by",
            ["global rank fraction", "energy threshold", "parameter budget"],
            key="svd_mode",
            horizontal=True,
        )
        basis = c2.radio(
            "Basis",
            list(SVD_BASES),
            key="svd_basis",
            horizontal=True,
            help="weights: truncate W; activations: truncate W whitened by the layer's inputs (data-aware); "
            "calibrated: then refit each layer in closed form to the original outputs, in order (seconds per move)",
        )
        compare_basis = c2.toggle("Show the other bases beside it", False, key="svd_compare_basis")
        form = c2.radio(
            "Form",
            ["factorized", "reconstructed"],
            key="svd_form",
            horizontal=True,
            help="factorized: two thinner layers U_k and S_k V_kᵀ (fewer weights and MACs below the break-even rank); "
            "reconstructed: W_k = U_k S_k V_kᵀ multiplied out, the original shapes (the seed's form: same cost)",
        )
        include_output = c3.checkbox(
            "Truncate the output layer too",
            False,
            key="svd_include_output",
            help="The seed's semantics: the 1000×10 output layer's rank falls to ⌊f·10⌋, which costs most of the "
            "accuracy at small f (see the Sensitivity page). Off: only the hidden layers are truncated.",
        )
        fraction, energy, budget = 0.05, None, None
        if mode == "global rank fraction":
            # Opens where the trade-off is: the baseline's hidden layers keep ~0.80 at 5 % of their rank.
            fraction = st.slider(
                "Rank fraction f (k = max(1, ⌊f·min(m, n)⌋))", 0.01, 1.0, 0.05, 0.01, key="svd_fraction"
            )
        elif mode == "energy threshold":
            energy = st.slider("Energy kept per layer (Σ_{i≤k} σᵢ² ≥ E·Σσ²)", 0.50, 1.0, 0.90, 0.01, key="svd_energy")
        else:
            budget = st.slider(
                "Parameter budget (share of the dense weights, factorized count)",
                0.01,
                1.0,
                0.2,
                0.01,
                key="svd_budget",
            )
        with st.expander("Per-layer rank fractions (override the rule above)"):
            dense_names = model.dense_layer_names(eng.params)
            override_cols = st.columns(len(dense_names))
            overrides = []
            for col, name in zip(override_cols, dense_names):
                value = col.number_input(
                    f"{name}", 0.0, 1.0, 0.0, 0.01, key=f"svd_override_{name}", help="0 = use the rule above"
                )
                if value > 0:
                    overrides.append((name, float(value)))
        o1, o2 = st.columns(2)
        finetune_steps = (
            300
            if o1.toggle(
                "Fine-tune the dense stack (300 steps, frozen convolutions)",
                False,
                key="svd_finetune",
                disabled=shared_mode(),
                help=f"training is {long_jobs_note()}" if shared_mode() else DISTILLED,
            )
            else 0
        )
        measure_latency = o2.toggle(
            "Measure latency too (shown once accuracy is)", True, key="svd_latency", help="switch off for faster moves"
        )
    with measured:
        config = config_or_stop(
            lambda: SvdConfig(
                rank_fraction=float(fraction),
                form=form,
                include_output=include_output,
                energy=energy,
                param_budget=budget,
                layer_fractions=tuple(overrides),
                basis=basis,
            )
        )
        result, add_latency = variant_metrics(
            "svd", config, measure_latency, "Fine-tuning" if finetune_steps else None, finetune_steps
        )
        if compare_basis:
            for other in (b for b in SVD_BASES if b != basis):
                with st.spinner(f"Measuring the {other} basis at the same rule…"):
                    twin = evaluate(
                        session(), "svd", dataclasses.replace(config, basis=other), finetune_steps=finetune_steps
                    )
                st.caption(
                    f"Same rule in the {other} basis: accuracy {twin['accuracy']:.2%} "
                    f"({twin['accuracy'] - result['accuracy']:+.2%} vs this one), ranks "
                    + ", ".join(f"{k} {v}" for k, v in twin["facts"]["ranks"].items())
                )
            st.caption(
                "The activation basis truncates LᵀW (L Lᵀ = XᵀX over each layer's inputs on 5,000 training images, "
                "never test images) and maps back with L⁻ᵀ: the rank-k layer closest in what it outputs on data. The "
                "calibrated basis takes those ranks and refits every compressed layer, in order, to the original "
                "layer's outputs from the inputs the compressed layers before it give (closed form, no gradient step)."
            )
        st.caption(
            "Ranks: "
            + ", ".join(f"{k} {v}" for k, v in result["facts"]["ranks"].items())
            + ". Break-even ranks (factorized form smaller below): "
            + ", ".join(f"{k} {v:.0f}" for k, v in result["facts"]["break_even_ranks"].items())
        )

        result = add_latency()  # the timed record once the background has timed it, else the accuracy's
        base = (
            curves.first_timed_record(eng, Variant.of(REFERENCE)) if measure_latency else None
        ) or baseline_accuracy(session())

    with curves_area:
        st.subheader("Accuracy and latency vs rank fraction")
        curve_variants = [
            Variant.of("svd", SvdConfig(rank_fraction=f, form=fm, include_output=include_output))
            for fm in ("factorized", "reconstructed")
            for f in CURVE_GRID
        ]
        filling = curves.fill(eng, curve_variants, with_latency=measure_latency).is_alive()

        @st.fragment(run_every=POLL_S if filling else None)  # polls only while the curves fill in
        def curves_section():
            """The curves, redrawn every few seconds from the cache while the background fills them in."""
            groups = global_fraction_points(cached_results(session()))
            points = {
                (form_, r["config"]["rank_fraction"]): r
                for (form_, with_output), series in groups.items()
                if with_output == include_output
                for r in series
            }
            grid = [(fm, f) for fm in ("factorized", "reconstructed") for f in CURVE_GRID]
            with_accuracy = sum(key in points for key in grid)
            with_latency = sum("latency_ms" in points.get(key, {}) for key in grid)
            status = st.empty()  # always there: a fragment's element count must not change between reruns
            if with_accuracy < len(grid) or (measure_latency and with_latency < len(grid)):
                status.caption(
                    f"Measuring the curves in the background: {with_accuracy} of {len(grid)} points have their accuracy, "
                    f"{with_latency} their latency (coarse points first, then the rest; it pauses while any page "
                    "runs). They draw themselves as the points arrive."
                )
            acc_fig, lat_fig = go.Figure(), go.Figure()
            # Both curves when measured: with the output layer truncated too (the seed's) and kept.
            for (fm, with_output), series in sorted(groups.items()):
                colour = METHOD_COLORS["svd"] if not with_output else "#9aa9b8"
                line = dict(color=colour, dash=FORM_DASH[fm])
                name = f"{fm}, output {'truncated too' if with_output else 'kept'}"
                acc_fig.add_trace(
                    go.Scatter(
                        x=[r["config"]["rank_fraction"] for r in series],
                        y=[100 * r["accuracy"] for r in series],
                        mode="lines+markers",
                        name=name,
                        line=line,
                    )
                )
                timed = [r for r in series if "latency_ms" in r and with_output == include_output]
                if timed:
                    lat_fig.add_trace(
                        go.Scatter(
                            x=[r["config"]["rank_fraction"] for r in timed],
                            y=[r["latency_ms"] for r in timed],
                            error_y=dict(array=[latency_stats(r)["iqr_ms"] for r in timed]),
                            mode="lines+markers",
                            name=name,
                            line=line,
                        )
                    )
            current = config.rank_fraction if mode == "global rank fraction" and not overrides else None
            if current is not None:
                acc_fig.add_trace(
                    go.Scatter(
                        x=[current],
                        y=[100 * result["accuracy"]],
                        mode="markers",
                        name="current",
                        marker=dict(size=14, color="#d62728", symbol="diamond"),
                    )
                )
                if "latency_ms" in result:
                    lat_fig.add_trace(
                        go.Scatter(
                            x=[current],
                            y=[result["latency_ms"]],
                            mode="markers",
                            name="current",
                            marker=dict(size=14, color="#d62728", symbol="diamond"),
                        )
                    )
            reference_line(
                acc_fig, y=100 * base["accuracy"], text="baseline", color=METHOD_COLORS["baseline"], dash="dash"
            )
            if "latency_ms" in base:
                reference_line(
                    lat_fig, y=base["latency_ms"], text="baseline", color=METHOD_COLORS["baseline"], dash="dash"
                )
            dense = model.dense_layer_names(eng.params)
            layers = dense if include_output else dense[:-1]
            break_even = compress.break_even_fraction([eng.params[n]["w"].shape for n in layers])
            for fig in (acc_fig, lat_fig):
                reference_line(fig, x=break_even, text=f"break-even f={break_even:.2f}", color="#888", dash="dot")
                fig.update_xaxes(range=[0, 1.02])  # the whole range of fractions, before any point arrives
            if not lat_fig.data:
                lat_fig.add_annotation(
                    text="latency points arrive as they are timed",
                    showarrow=False,
                    x=0.5,
                    y=0.5,
                    xref="paper",
                    yref="paper",
                )
                lat_fig.update_yaxes(range=[0, 1], showticklabels=False)
            left, right = st.columns(2)
            left.plotly_chart(style(acc_fig, "Test accuracy", "rank fraction f", "accuracy (%)"), key="svd_acc_curve")
            right.plotly_chart(
                style(lat_fig, "Latency, batch 1,000 (median, IQR bars)", "rank fraction f", "ms"),
                key="svd_latency_curve",
            )
            st.caption(
                "Break-even f: the factorized dense stack holds as many weights (MACs) as the dense one; below it, "
                "the factorized form is smaller. The reconstructed form keeps the dense shapes, so it never runs faster."
            )

        curves_section()
