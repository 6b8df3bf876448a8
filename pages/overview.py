"""Overview: the loaded model, and every measured variant on one Pareto chart."""

import plotly.graph_objects as go
import streamlit as st

from lowrank_core import advisor, charts, measure, methods, report, runtimes
from lowrank_core.errors import LowrankError
from pages.common import (
    FIRST_LATENCY_POLL_S,
    METHOD_COLORS,
    baseline_accuracy,
    baseline_timed,
    cached_results,
    checkpoint_digest,
    checkpoint_dir,
    clear_in_memory_results,
    fmt_mib,
    get_engine,
    latency_stats,
    parameter_breakdown,
    run_with_errors,
    session,
    style,
)


def baseline_latency(batch: int, pending: bool) -> None:
    """The baseline's latency metric; while it is being timed in the background, a fragment polls
    for it and, once it lands, reruns the page once (its latency axis and answer need it too)."""

    @st.fragment(run_every=FIRST_LATENCY_POLL_S if pending else None)
    def metric() -> None:
        base = baseline_timed()
        if base is None:
            st.metric(
                f"Latency, batch {batch:,}",
                "timing…",
                help="timed in the background once no page is running, so it never slows anyone's move",
            )
            return
        st.metric(
            f"Latency, batch {base['batch_size']:,}",
            f"{base['latency_ms']:.0f} ms",
            help=f"JAX/XLA: median of {latency_stats(base)['repeats']} runs after warm-up (compile apart), IQR "
            f"{latency_stats(base)['iqr_ms']:.1f} ms; batch 1: {base['latency_batch1_ms']:.2f} ms; "
            f"measured on {base['measured_on']['cpu']} ({base['measured_on']['backend']})",
        )
        if pending:
            st.rerun()

    metric()


st.title("Compression trade-offs at a glance")
summary_slot, layers_slot = st.container(), st.container()  # filled in this order: layers first

# First paint: where the weights are, from the checkpoint alone (no data needed),
# while CIFAR-10 and the measurements load.
folder = checkpoint_dir()
try:
    layers = parameter_breakdown(str(folder), checkpoint_digest(folder))
except LowrankError:
    layers = None  # get_engine() below says what is wrong
if layers:
    total = sum(row["parameters"] for row in layers)
    dense_share = sum(row["share"] for row in layers if row["kind"] == "dense")
    bars = go.Figure(
        go.Bar(
            x=[row["layer"] for row in layers],
            y=[row["parameters"] for row in layers],
            marker_color=[METHOD_COLORS["svd"] if row["kind"] == "dense" else "#9aa9b8" for row in layers],
            text=[f"{row['share']:.1%}" for row in layers],
            hovertemplate="%{x}: %{y:,} parameters<extra></extra>",
        )
    )
    layers_slot.plotly_chart(
        style(bars, f"Where the {total:,} parameters are", "layer", "parameters", 300), key="overview_layers"
    )
    layers_slot.caption(
        f"Computed from the checkpoint's layer shapes: the dense layers hold {dense_share:.1%} of the weights, "
        "which is why truncating, pruning or quantizing them is what shrinks this network."
    )

with summary_slot:
    eng = get_engine()
    if eng is not None:
        # Accuracy first (seconds), latency after the chart: the page is useful
        # while the latency repeats run. The timing is asked for now, so that the
        # warm-up's optional steps let it go first once the page is done.
        baseline_timed()
        with st.spinner("Measuring the checkpoint on every test image…"):
            base = baseline_accuracy(session())
        batch = measure.timed_batch_sizes(eng.data.x_test.shape[0])[-1]
        cols = st.columns(5)
        cols[0].metric(
            "Test accuracy", f"{base['accuracy']:.2%}", help=f"measured on all {base['n_test']:,} test images"
        )
        cols[1].metric("Parameters", f"{base['params']:,}")
        cols[2].metric("MACs / image", f"{base['macs'] / 1e6:.1f} M", help="computed from the layer shapes")
        cols[3].metric(
            "Stored size",
            fmt_mib(base["bytes"]),
            help=f"{base['bytes']:,} bytes: the params file as stored ({base['storage_dtype']})",
        )
        base_timed = baseline_timed()
        with cols[4]:
            baseline_latency(batch, pending=base_timed is None)

        measured = cached_results(session())
        cards = report.headline_cards(measured, base)
        if cards:
            st.markdown(
                f"**Within 1 point of the baseline** (best of {len(measured)} measured variants, all "
                f"{base['n_test']:,} test images each)"
            )
            card_cols = st.columns(len(cards))
            for col, card in zip(card_cols, cards):
                col.metric(
                    f"× {card['title']}",
                    f"{card['ratio']:.1f}×",
                    f"{card['drop_points']:+.2f} points",
                    help=f"{card['record']['label']}: accuracy {card['record']['accuracy']:.2%} measured on all "
                    f"{card['record']['n_test']:,} test images, against the baseline's; parameters counted, stored "
                    "size the length of the variant's file, latency (if shown) at the baseline's timed batch here",
                )
                col.caption(card["name"])
            with st.expander("The full recipes"):
                for card in cards:
                    st.markdown(f"- **{card['title']}**: {card['record']['label']} ({card['record']['accuracy']:.2%})")
        else:
            st.info("How small can it get within 1 point of accuracy? Nothing is measured yet.")
            if st.button(
                "Ask the advisor now (1–2 minutes cold on a 2-core machine)", type="primary", key="overview_ask"
            ):
                bar = st.progress(0.0, text="starting")
                found = run_with_errors(
                    advisor.smallest_within,
                    eng,
                    advisor.AdvisorConfig(),
                    lambda stage, share: bar.progress(min(1.0, share), text=stage),
                )
                bar.empty()
                if found is not None:
                    clear_in_memory_results()
                    st.rerun()

        st.subheader("Every measured variant")
        latency_axes = {f"latency (ms per batch of {batch:,})": runtimes.PRODUCT} | {
            f"latency, {runtimes.get(name).label} (ms per batch of {batch:,})": name
            for name in runtimes.available()[1:]
        }
        axis = st.radio("Cost axis", ["stored size (MiB)", *latency_axes], horizontal=True, key="overview_axis")
        by_latency = axis in latency_axes
        runtime = latency_axes.get(axis, runtimes.PRODUCT)
        timed = [r for r in measured if "latency_ms" in r and r["batch_size"] == batch]  # this machine's, one batch

        def timing(record: dict) -> dict:
            return record if runtime == runtimes.PRODUCT else (record.get("runtimes") or {}).get(runtime, {})

        if by_latency:
            in_runtime = [r for r in measured if timing(r).get("latency_ms") and timing(r).get("batch_size") == batch]
            results = in_runtime or ([base_timed] if base_timed else [])
        else:
            results = measured or [base]
        cost_of = (lambda r: timing(r)["latency_ms"]) if by_latency else (lambda r: r["bytes"] / 2**20)

        def accuracy_of(record: dict) -> float:
            """The accuracy the chosen runtime measured (an int8 graph's own, in ONNX Runtime)."""
            return timing(record).get("accuracy", record["accuracy"]) if by_latency else record["accuracy"]

        if results:
            fig = charts.pareto(results, cost_of, accuracy_of)
            st.plotly_chart(
                style(fig, "Accuracy vs cost (outlined: Pareto-optimal)", axis, "test accuracy (%)", 460),
                key="overview_pareto",
            )
        else:
            st.info(
                "Nothing has its latency measured in this runtime yet: the baseline is being timed in the "
                "background, when no page is running; the chart draws itself when it lands."
            )
        st.caption(
            f"{len(results)} variant{'s' if len(results) != 1 else ''}"
            f"{' with measured latency' if by_latency else ''}, from the cache of this "
            "checkpoint. Variants appear here as soon as any page or the CLI measures them."
        )

        st.subheader("Does rank truncation save time?")
        headlines = [line for m in methods.REGISTRY.values() for line in m.headlines(timed, base_timed or base)]
        if headlines:
            for line in headlines:
                st.markdown("- " + line)
        elif base_timed is None:
            st.caption("The baseline is being timed in the background; the answer follows.")
        else:
            st.info("Measure the SVD curves on the Low-rank page (button 'Measure curves') to answer this from data.")

        with st.expander("Model card"):
            meta = eng.metadata
            st.dataframe(report.parameter_breakdown(eng.spec), hide_index=True)
            st.write(
                {
                    "preset": meta.get("preset"),
                    "recorded test accuracy": meta.get("test_accuracy"),
                    "training seconds": meta.get("train_seconds"),
                    "trained on": meta.get("trained_on", "this machine"),
                    "data sha256": meta.get("data_sha256"),
                    "storage": meta.get("storage_dtype"),
                }
            )
            st.json(meta.get("config", {}), expanded=False)
