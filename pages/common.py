"""What every page shares: the loaded engine, kept across reruns.

Streamlit reruns a page top to bottom on every interaction, so the engine
(params, SVDs, the convolutions' test-set output, compiled functions) lives in
``st.cache_resource`` and per-setting results in ``st.cache_data``.
"""

from __future__ import annotations

import os
import pathlib

import streamlit as st

from lowrank_core import compress, data, engine, paths
from lowrank_core.errors import LowrankError

CHECKPOINT_ENV = "LOWRANK_CHECKPOINT"


def checkpoint_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CHECKPOINT_ENV) or paths.BASELINE_DIR)


def data_path() -> str | None:
    """The resolved data source (setting, then LOWRANK_CIFAR10, then the cache).

    Resolving it on every run keys the caches by the file actually read, so
    changing the setting or the environment never reuses another source's engine.
    """
    return str(data.resolve_source(st.session_state.get("data_path") or None, download=False).path)


@st.cache_resource(show_spinner="Loading checkpoint and CIFAR-10…", max_entries=2)
def _engine(checkpoint: str, data_source: str | None) -> engine.Engine:
    return engine.Engine(checkpoint, data.load_cifar10(data_source, download=False))


def get_engine() -> engine.Engine | None:
    """The engine for the current checkpoint and data, or None after showing ``st.error``."""
    try:
        return _engine(str(checkpoint_dir()), data_path())
    except LowrankError as exc:
        st.error(f"{exc}")
        return None


@st.cache_data(show_spinner=False, max_entries=512)
def svd_result(checkpoint: str, data_source: str | None, fraction: float, form: str,
               include_output: bool, with_latency: bool) -> dict:
    eng = _engine(checkpoint, data_source)
    config = compress.SvdConfig(rank_fraction=fraction, form=form, include_output=include_output)
    return eng.evaluate("svd", config, with_latency=with_latency)


@st.cache_data(show_spinner=False, max_entries=4)
def baseline_result(checkpoint: str, data_source: str | None) -> dict:
    return _engine(checkpoint, data_source).evaluate("baseline", with_latency=True)


def sidebar() -> None:
    """Data source setting and the loaded model, shown on every page."""
    with st.sidebar:
        st.text_input("CIFAR-10 path (archive or folder)", key="data_path",
                      placeholder="default: $LOWRANK_CIFAR10 or artifacts/data",
                      help="cifar-10-python.tar.gz or a cifar-10-batches-py/ folder")
        st.caption(f"Data: {data.describe_source(st.session_state.get('data_path') or None)}")
        st.caption(f"Checkpoint: {checkpoint_dir()}")


@st.cache_data(show_spinner="Computing singular values of every dense layer…", max_entries=4)
def spectra(checkpoint: str, data_source: str | None) -> dict:
    return _engine(checkpoint, data_source).spectra()
