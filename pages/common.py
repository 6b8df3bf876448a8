"""What every page shares: the loaded engine, kept across reruns, and the look.

Streamlit reruns a page top to bottom on every interaction, so the engine
(params, SVDs, the convolutions' test-set output, compiled functions) lives in
``st.cache_resource`` and per-setting results in ``st.cache_data``. Results
are also cached on disk by the engine, so other tabs and later sessions reuse
them. Nothing here computes a number; it only asks the core.
"""

from __future__ import annotations

import os
import pathlib

import plotly.graph_objects as go
import streamlit as st

from lowrank_core import checkpoint, data, engine, paths
from lowrank_core.errors import LowrankError
from lowrank_core.finetune import FinetuneConfig

CHECKPOINT_ENV = "LOWRANK_CHECKPOINT"

# One colour per method, on every page.
METHOD_COLORS = {"baseline": "#222222", "svd": "#1f77b4", "prune": "#ff7f0e", "remove": "#2ca02c",
                 "quantize": "#9467bd", "dead_units": "#8c564b"}
FORM_DASH = {"reconstructed": "dot", "factorized": "solid"}


def checkpoint_dir() -> pathlib.Path:
    """The checkpoint folder: the sidebar setting (if valid), then $LOWRANK_CHECKPOINT, then the shipped baseline."""
    typed = st.session_state.get("checkpoint_path")
    if typed and validate_path(typed, "checkpoint") is None:
        return pathlib.Path(typed).expanduser()
    return pathlib.Path(os.environ.get(CHECKPOINT_ENV) or paths.BASELINE_DIR)


def data_path() -> str | None:
    """The resolved data source (setting, then LOWRANK_CIFAR10, then the cache).

    Resolving it on every run keys the caches by the file actually read, so
    changing the setting or the environment never reuses another source's engine.
    """
    return str(data.resolve_source(st.session_state.get("data_path") or None, download=False).path)


@st.cache_resource(show_spinner="Loading checkpoint and CIFAR-10…", max_entries=2)
def _engine(checkpoint_path: str, data_source: str | None) -> engine.Engine:
    return engine.Engine(checkpoint_path, data.load_cifar10(data_source, download=False))


def get_engine() -> engine.Engine | None:
    """The engine for the current checkpoint and data, or None after showing ``st.error``."""
    try:
        eng = _engine(str(checkpoint_dir()), data_path())
    except LowrankError as exc:
        st.error(f"{exc}")
        return None
    if eng.write_problem:
        st.warning(f"{eng.write_problem}. Results stay available until the app restarts; "
                   "set LOWRANK_ARTIFACTS to a writable folder to keep them.")
    return eng


def keys() -> tuple[str, str | None]:
    """(checkpoint, data source): the cache key every cached call takes first."""
    return str(checkpoint_dir()), data_path()


@st.cache_data(show_spinner=False, max_entries=512)
def evaluate(checkpoint_path: str, data_source: str | None, method: str, config, finetune_steps: int = 0,
             with_latency: bool = False) -> dict:
    """A measured variant (frozen configs are hashable cache keys)."""
    finetune = FinetuneConfig(steps=finetune_steps) if finetune_steps else None
    return _engine(checkpoint_path, data_source).evaluate(method, config, finetune=finetune,
                                                          with_latency=with_latency)


@st.cache_data(show_spinner=False, max_entries=4)
def baseline_accuracy(checkpoint_path: str, data_source: str | None) -> dict:
    """The checkpoint's accuracy, size and MACs (no latency: seconds sooner)."""
    return _engine(checkpoint_path, data_source).evaluate("baseline", with_latency=False)


@st.cache_data(show_spinner=False, max_entries=4)
def baseline_result(checkpoint_path: str, data_source: str | None) -> dict:
    return _engine(checkpoint_path, data_source).evaluate("baseline", with_latency=True)


@st.cache_data(show_spinner="Computing singular values of every dense layer…", max_entries=4)
def spectra(checkpoint_path: str, data_source: str | None) -> dict:
    return _engine(checkpoint_path, data_source).spectra()


@st.cache_data(show_spinner=False, ttl=5, max_entries=8)
def cached_results(checkpoint_path: str, data_source: str | None) -> list[dict]:
    """Every result on disk for this checkpoint (short ttl: other tabs add to it)."""
    return _engine(checkpoint_path, data_source).cached_results()


def progress_callback(label: str):
    """An ``on_progress(done, total)`` that drives a Streamlit progress bar."""
    bar = st.progress(0.0, text=label)

    def on_progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"{label} {done}/{total}")

    return on_progress, bar


def run_with_errors(fn, *args, **kwargs):
    """Calls ``fn``; a user-facing error becomes ``st.error`` and None."""
    try:
        return fn(*args, **kwargs)
    except LowrankError as exc:
        st.error(str(exc))
        return None


def metric_row(result: dict, base: dict) -> None:
    """Accuracy, latency, parameters, MACs and bytes, each with its delta vs the baseline."""
    cols = st.columns(5)
    cols[0].metric("Test accuracy", f"{result['accuracy']:.2%}", f"{result['accuracy'] - base['accuracy']:+.2%}",
                   help=f"measured on all {result['n_test']:,} test images")
    if "latency_ms" in result:
        cols[1].metric("Latency, batch 1,000", f"{result['latency_ms']:.0f} ms",
                       f"{result['latency_ms'] - base['latency_ms']:+.0f} ms", delta_color="inverse",
                       help=f"median of {result['latency']['1000']['repeats']} runs, IQR "
                            f"{result['latency']['1000']['iqr_ms']:.1f} ms; batch 1: {result['latency_batch1_ms']:.2f} ms")
    else:
        cols[1].metric("Latency, batch 1,000", "—", help="not measured: switch on 'Measure latency'")
    cols[2].metric("Parameters", f"{result['params']:,}", f"{result['params'] - base['params']:+,}",
                   delta_color="inverse")
    cols[3].metric("MACs / image", f"{result['macs'] / 1e6:.2f} M", f"{(result['macs'] - base['macs']) / 1e6:+.2f} M",
                   delta_color="inverse")
    cols[4].metric("Stored size", f"{result['bytes'] / 2**20:.1f} MiB",
                   f"{(result['bytes'] - base['bytes']) / 2**20:+.1f} MiB", delta_color="inverse")


def style(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 360) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, height=height,
                      margin=dict(t=50, b=40, l=60, r=20), legend=dict(orientation="h", y=-0.25))
    return fig


def validate_path(text: str, kind: str) -> str | None:
    """An error message for a typed path that is not an existing file or folder of ``kind``."""
    path = pathlib.Path(text).expanduser()
    if not path.exists():
        return f"{text} does not exist"
    if kind == "checkpoint":
        if not (path / checkpoint.PARAMS_FILE).is_file():
            return f"{text} is not a checkpoint folder (no {checkpoint.PARAMS_FILE} in it)"
    return None


def sidebar() -> None:
    """Data source and checkpoint settings, and the loaded model, on every page."""
    with st.sidebar:
        st.text_input("CIFAR-10 path (archive or folder)", key="data_path",
                      placeholder="default: $LOWRANK_CIFAR10 or artifacts/data",
                      help="cifar-10-python.tar.gz or a cifar-10-batches-py/ folder")
        st.text_input("Checkpoint folder", key="checkpoint_path",
                      placeholder="default: $LOWRANK_CHECKPOINT or artifacts/baseline",
                      help="a folder holding params.npz and metadata.json")
        typed = st.session_state.get("checkpoint_path")
        if typed and (problem := validate_path(typed, "checkpoint")):
            st.error(f"{problem}; using the default checkpoint instead")
        st.caption(f"Data: {data.describe_source(st.session_state.get('data_path') or None)}")
        st.caption(f"Checkpoint: {checkpoint_dir()}")
