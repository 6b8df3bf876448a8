"""Layer removal: drop hidden dense layers, retrain the rewired head, compare."""

import plotly.graph_objects as go
import streamlit as st

from lowrank_core import model
from lowrank_core.methods.remove import RemoveConfig
from pages.common import (
    METHOD_COLORS,
    baseline_accuracy,
    config_or_stop,
    get_engine,
    long_jobs_note,
    session,
    shared_mode,
    style,
    variant_metrics,
)

st.title("Removing hidden layers")
eng = get_engine()
if eng is not None:
    layers = st.multiselect(
        "Hidden layers to remove", model.dense_layer_names(eng.params)[:-1], default=["linear_1"], key="remove_layers"
    )
    steps = st.slider(
        "Retraining steps (dense head over frozen convolutions, batch 256)", 0, 2000, 300, 50, key="remove_steps"
    )
    measure_latency = st.toggle(
        "Measure latency",
        True,
        key="remove_latency",
        help="in every installed runtime, in the background once no page is running (it never slows a move)",
    )
    st.caption(
        "Every layer after a cut sees new inputs, so the whole dense head is retrained on the cached "
        "outputs of the convolutions (the second seed's option A)."
    )
    config = config_or_stop(lambda: RemoveConfig(layers=tuple(layers), retrain_steps=int(steps)))
    base = baseline_accuracy(session())
    result = None
    if eng.cached_result("remove", config) is not None:
        result, _ = variant_metrics("remove", config, measure_latency)
    else:
        if shared_mode():
            st.info(f"Retraining is {long_jobs_note()}; variants measured before are shown.")
        if st.button("Remove and retrain", type="primary", key="remove_run", disabled=shared_mode()):
            result, _ = variant_metrics("remove", config, measure_latency, training="Retraining")
        else:
            st.info(
                "Not measured yet: press 'Remove and retrain' (features of the training set are computed once, "
                "then each step takes a fraction of a second)."
            )
    if result is not None:
        fig = go.Figure()
        names = ["accuracy (%)", "parameters (M)", "MACs (M)"]
        for label, r, colour in (
            ("baseline", base, METHOD_COLORS["baseline"]),
            ("without " + "+".join(layers), result, METHOD_COLORS["remove"]),
        ):
            fig.add_trace(
                go.Bar(
                    name=label,
                    x=names,
                    y=[100 * r["accuracy"], r["params"] / 1e6, r["macs"] / 1e6],
                    marker_color=colour,
                )
            )
        st.plotly_chart(style(fig, "Result beside the baseline", "", "value", 340), key="remove_bars")
