"""Low-rank (SVD): slide the rank fraction, see accuracy, latency and size live."""

import streamlit as st

from pages.common import baseline_result, checkpoint_dir, data_path, get_engine, svd_result

st.title("Low-rank approximation (truncated SVD)")
eng = get_engine()
if eng is not None:
    c1, c2, c3 = st.columns([2, 1, 1])
    fraction = c1.slider("Rank fraction f (k = ⌊f·min(m, n)⌋)", 0.01, 1.0, 0.5, 0.01, key="svd_fraction")
    form = c2.radio("Form", ["reconstructed", "factorized"], key="svd_form", horizontal=True)
    include_output = c3.checkbox("Include output layer", True, key="svd_include_output")
    measure_latency = st.toggle("Measure latency (slower)", False, key="svd_latency")
    base = baseline_result(str(checkpoint_dir()), data_path())
    with st.spinner("Computing on all test images…"):
        result = svd_result(str(checkpoint_dir()), data_path(), float(fraction), form, include_output,
                            measure_latency)
    cols = st.columns(4)
    cols[0].metric("Test accuracy", f"{result['accuracy']:.2%}", f"{result['accuracy'] - base['accuracy']:+.2%}")
    cols[1].metric("Parameters", f"{result['params']:,}", f"{result['params'] - base['params']:+,}", delta_color="inverse")
    cols[2].metric("MACs / image", f"{result['macs'] / 1e6:.2f} M", f"{(result['macs'] - base['macs']) / 1e6:+.2f} M", delta_color="inverse")
    if "latency_ms" in result:
        cols[3].metric("Latency, batch 1,000", f"{result['latency_ms']:.0f} ms",
                       f"{result['latency_ms'] - base['latency_ms']:+.0f} ms", delta_color="inverse")
    else:
        cols[3].metric("Stored size", f"{result['bytes'] / 2**20:.1f} MiB", f"×{result['compression_ratio']:.2f} smaller")
    st.caption(f"Accuracy on {result['n_test']:,} test images. Ranks: "
               + ", ".join(f"{k} {v}" for k, v in result["facts"]["ranks"].items())
               + ". Break-even ranks (factorized form smaller below): "
               + ", ".join(f"{k} {v:.0f}" for k, v in result["facts"]["break_even_ranks"].items()))
