"""Train / data: where the data comes from, retrain with live curves, manage the cache."""

import dataclasses
import pathlib

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lowrank_core import checkpoint, configs, data, train
from pages.common import (
    cached_results,
    clear_in_memory_results,
    get_engine,
    long_jobs_note,
    run_with_errors,
    session,
    shared_mode,
    style,
)

st.title("Training and data")
eng = get_engine()
if eng is not None:
    st.subheader("Data")
    st.write(f"Source: {data.describe_source(st.session_state.get('data_path') or None)}")
    counts = np.bincount(eng.data.y_test, minlength=10)
    st.caption(
        f"{eng.data.x_train.shape[0]:,} training and {eng.data.x_test.shape[0]:,} test images; "
        f"sha256 {eng.data.sha256[:16]}…; test images per class: "
        + ", ".join(f"{n} {c}" for n, c in zip(eng.data.class_names, counts))
    )

    st.subheader("Retrain")
    c1, c2 = st.columns(2)
    preset = c1.selectbox(
        "Preset",
        ["default", "tiny", "seed", "baseline"],
        key="train_preset",
        help="; ".join(
            f"{name}: {c.num_steps:,} steps of {c.batch_size}, {c.lr_schedule} "
            f"learning rate, augment {c.augment}, {c.init} init"
            for name, c in configs.PRESETS.items()
        ),
    )
    base_config = configs.get_preset(preset)
    steps = c2.number_input("Steps", 1, 50_000, base_config.num_steps, 100, key=f"train_steps_{preset}")
    out_dir = checkpoint.trained_dir(preset)
    st.caption(
        f"Writes {out_dir} (the previous checkpoint there stays intact until the new one is complete); "
        "the sidebar's checkpoint picker lists it."
    )
    shared = shared_mode()
    if shared:
        st.info(f"Training is {long_jobs_note()}.")
    if st.button("Start training", type="primary", key="train_start", disabled=shared):
        config = dataclasses.replace(base_config, num_steps=int(steps))
        bar = st.progress(0.0, text="training")
        chart = st.empty()
        history = []

        def on_progress(p: train.TrainProgress) -> None:
            bar.progress(p.step / config.num_steps, text=f"step {p.step}/{config.num_steps}")
            if p.loss is None:
                return
            history.append({"step": p.step, "loss": p.loss, "val_accuracy": p.val_accuracy})
            frame = pd.DataFrame(history)
            fig = go.Figure(
                go.Scatter(
                    x=frame["step"],
                    y=frame["loss"],
                    mode="lines+markers",
                    name="training loss (mean since the previous evaluation)",
                )
            )
            val = frame.dropna(subset=["val_accuracy"])
            fig.add_trace(
                go.Scatter(
                    x=val["step"], y=val["val_accuracy"], name="validation accuracy", yaxis="y2", mode="lines+markers"
                )
            )
            fig.update_layout(yaxis2=dict(overlaying="y", side="right", title="accuracy"))
            chart.plotly_chart(style(fig, "Training", "step", "loss"), key=f"train_curve_{p.step}")

        metadata = run_with_errors(train.train_and_save, config, eng.data, out_dir, on_progress=on_progress)
        if metadata is not None:
            st.success(
                f"Test accuracy {metadata['test_accuracy']:.2%} on {metadata['n_test']:,} images, "
                f"{metadata['train_seconds']:.0f} s. Saved to {out_dir}."
            )
            label = checkpoint.trained_label(out_dir.name)
            st.button(
                "Use it now",
                key="train_use",
                type="primary",
                on_click=lambda: st.session_state.update(checkpoint_choice=label),
                help="switches every page to this checkpoint (the sidebar's picker)",
            )

    st.subheader("Cache")
    results = cached_results(session())
    size = (
        sum(p.stat().st_size for p in pathlib.Path(eng.cache_dir).rglob("*") if p.is_file())
        if eng.cache_dir.exists()
        else 0
    )
    st.write(f"{len(results)} measured variants of this checkpoint, {size / 2**20:.1f} MiB in {eng.cache_dir}.")
    if st.button(
        "Clear measured results of this checkpoint",
        key="cache_clear",
        disabled=shared,
        help=f"clears results for every visitor: {long_jobs_note()}" if shared else None,
    ):
        removed = eng.clear_results()
        clear_in_memory_results()
        st.success(f"Removed {removed} results; they will be measured again on demand.")
