"""Int8 storage and lossless cleanup: the two methods that change how a
network is stored rather than what it computes, alone or after SVD."""

import streamlit as st

from lowrank_core import methods
from lowrank_core.methods.dead_units import DeadUnitsConfig
from lowrank_core.methods.quantize import QuantizeConfig
from lowrank_core.methods.svd import SvdConfig
from pages.common import (
    baseline_accuracy,
    config_or_stop,
    fmt_mib,
    get_engine,
    session,
    variant_metrics,
)

STARTS = ("the checkpoint as it is", "dead units dropped (lossless)", "SVD factorized, hidden layers at fraction f")

st.title("Int8 storage and lossless cleanup")
eng = get_engine()
if eng is not None:
    c1, c2 = st.columns([2, 1])
    start = c1.radio("Start from", STARTS, key="storage_start")
    int8 = c2.toggle(
        "Store dense matrices as int8",
        True,
        key="storage_int8",
        help="symmetric int8, one float32 scale per output column; dequantized on the JAX path, integer kernels in ONNX Runtime",
    )
    fraction = None
    if start == STARTS[2]:
        fraction = st.slider(
            "Rank fraction f of the hidden layers (output layer kept)", 0.01, 1.0, 0.05, 0.01, key="storage_fraction"
        )
    measure_latency = st.toggle(
        "Measure latency",
        True,
        key="storage_latency",
        help="in every installed runtime, in the background once no page is running (it never slows a move)",
    )
    steps = []
    if start == STARTS[1]:
        steps.append(DeadUnitsConfig())
    elif start == STARTS[2]:
        steps.append(SvdConfig(float(fraction), "factorized", include_output=False))
    if int8:
        steps.append(QuantizeConfig())
    if not steps:
        st.info("The checkpoint as it is: pick a start or switch on int8 storage.")
        st.stop()
    variant = config_or_stop(lambda: methods.Variant.chain(*steps))
    base = baseline_accuracy(session())
    st.caption(f"Variant: {variant.describe()}")
    result, _ = variant_metrics(variant, None, measure_latency)
    st.caption(
        f"Stored size is the .npz this variant exports: {fmt_mib(result['bytes'])} vs "
        f"{fmt_mib(base['bytes'])} for the checkpoint ({base['bytes'] / result['bytes']:.1f}× smaller). "
        "Int8 halves a float16 checkpoint's dense matrices (quarters a float32 one). How fast it runs depends on "
        "the runtime: the product path (JAX/XLA) dequantizes it to float32 once, when loaded, so it runs no "
        "faster there; ONNX Runtime runs it on integer kernels (activations quantized per batch, so its accuracy "
        "is its own figure): each runtime's measurement is listed under the metrics above. Dead-unit "
        "removal drops hidden units that can never change the output, so accuracy is unchanged by construction."
    )
    if result["facts"].get("widths"):
        st.write("Hidden widths after dropping dead units:", result["facts"]["widths"])
