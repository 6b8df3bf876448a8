"""Model card of the loaded checkpoint."""

import math

import pandas as pd
import streamlit as st

from lowrank_core import model
from pages.common import baseline_result, checkpoint_dir, data_path, get_engine

st.title("Model card")
eng = get_engine()
if eng is not None:
    meta = eng.metadata
    with st.spinner("Measuring the checkpoint on every test image…"):
        result = baseline_result(str(checkpoint_dir()), data_path())
    cols = st.columns(4)
    cols[0].metric("Test accuracy", f"{result['accuracy']:.2%}", help=f"measured now on {result['n_test']:,} test images")
    cols[1].metric("Parameters", f"{result['params']:,}")
    cols[2].metric("MACs / image", f"{result['macs'] / 1e6:.1f} M")
    cols[3].metric("Latency, batch 1,000", f"{result['latency_ms']:.0f} ms",
                   help=f"median of {result['latency']['1000']['repeats']} runs, IQR {result['latency']['1000']['iqr_ms']:.1f} ms; batch 1: {result['latency_batch1_ms']:.2f} ms")
    st.subheader("Architecture")
    rows = []
    for name, shapes in model.expected_shapes().items():
        w = shapes["w"]
        rows.append({"layer": name, "kernel shape": " × ".join(map(str, w)),
                     "parameters": sum(math.prod(s) for s in shapes.values())})
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption("conv 5×5×3→18, relu, avg-pool 2, relu, conv 5×5×18→48, relu, avg-pool 2, flatten (3,072), "
               "dense 3000 → 2000 → 2000 → 1000 → 10 with relu between.")
    st.subheader("Training")
    st.write({"preset": meta.get("preset"), "recorded test accuracy": meta.get("test_accuracy"),
              "training seconds": meta.get("train_seconds"), "trained on": meta.get("trained_on", "this machine"),
              "data": meta.get("data_source"), "data sha256": meta.get("data_sha256"), "date": meta.get("date"),
              "storage": meta.get("storage_dtype")})
    with st.expander("Full training configuration"):
        st.json(meta.get("config", {}))
