"""What every page shares: the loaded engine, kept across reruns, and the look.

Streamlit reruns a page top to bottom on every interaction, so the engine
(params, SVDs, the convolutions' test-set output, compiled functions) lives in
``st.cache_resource`` and per-setting results in ``st.cache_data``. Results
are also cached on disk by the engine, so other tabs and later sessions reuse
them. Nothing here computes a number; it only asks the core.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

# Imported whole before any page builds a plotly figure: plotly looks pandas up in sys.modules
# without importing it, and a first import still running in another thread (a session's page or the
# warm-up) left it half-initialized there ("partially initialized module 'pandas' has no attribute
# 'Series'", seen on the Overview's first paint).
import pandas  # noqa: F401
import plotly.graph_objects as go
import streamlit as st

from lowrank_core import checkpoint, curves, data, engine, fairness, methods, model, paths, report, runtimes
from lowrank_core.charts import style  # noqa: F401  (re-exported for the pages)
from lowrank_core.errors import ConfigError, DataMissing, LowrankError
from lowrank_core.finetune import FinetuneConfig

CHECKPOINT_ENV = "LOWRANK_CHECKPOINT"
ARCHIVE_CHOICE, TFDS_CHOICE = "CIFAR-10 archive or folder", "TensorFlow Datasets (cifar10)"

# One colour per method, on every page (the registry's).
METHOD_COLORS = {name: method.colour for name, method in methods.REGISTRY.items()}
FORM_DASH = {"reconstructed": "dot", "factorized": "solid"}


def data_path_setting() -> str | None:
    """The data setting as typed (a path, "tfds[:DIR]", or None for the defaults), without reading anything."""
    if st.session_state.get("data_kind") == TFDS_CHOICE:
        directory = (st.session_state.get("data_path") or "").strip()
        return f"{data.TFDS}:{directory}" if directory else data.TFDS
    return st.session_state.get("data_path") or None


OTHER_CHECKPOINT = "another folder…"
SHARED_ENV = "LOWRANK_SHARED"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def shared_mode() -> bool:
    """Whether visitors other than the person at this machine can reach the app: on when
    LOWRANK_SHARED=1, off when 0, else on whenever the server is not bound to loopback. In it,
    no path typed in the browser reaches the filesystem (checkpoints: known ones or uploads) and
    long jobs that change what everyone sees (training, clearing the cache) are off."""
    setting = os.environ.get(SHARED_ENV, "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    return (st.get_option("server.address") or "0.0.0.0") not in LOOPBACK


def long_jobs_note() -> str:
    return "off in shared mode (the server is shared: set LOWRANK_SHARED=0 where it is yours alone)"


def checkpoint_choices() -> dict[str, pathlib.Path]:
    """The picker's checkpoints: $LOWRANK_CHECKPOINT first if set, the shipped baseline, every one trained here."""
    known = checkpoint.known_checkpoints()
    if env := os.environ.get(CHECKPOINT_ENV):
        known = {f"$LOWRANK_CHECKPOINT ({pathlib.Path(env).name})": pathlib.Path(env)} | known
    return known


def checkpoint_dir() -> pathlib.Path:
    """The checkpoint folder: the picker's choice, or the folder typed for "another folder…"
    (if valid), else the first choice ($LOWRANK_CHECKPOINT, or the shipped baseline)."""
    choices = checkpoint_choices()
    choice = st.session_state.get("checkpoint_choice")
    if choice in choices:
        return choices[choice]
    if shared_mode():
        return next(iter(choices.values()))  # nothing typed reaches the filesystem
    typed = st.session_state.get("checkpoint_path")
    if typed and validate_path(typed, "checkpoint") is None:
        return pathlib.Path(typed).expanduser()
    return next(iter(choices.values()))


def data_path() -> str | None:
    """The resolved data source (setting, then LOWRANK_CIFAR10, then the cache).

    Resolving it on every run keys the caches by the file actually read, so
    changing the setting or the environment never reuses another source's engine.
    """
    setting = None if shared_mode() else data_path_setting()
    if data.is_tfds(setting):
        return setting
    if setting is None and data.is_tfds(os.environ.get(data.ENV_VAR)):
        return os.environ[data.ENV_VAR]
    return str(data.resolve_source(setting, download=False).path)


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime, inode) → sha256 of the params file's bytes


def checkpoint_digest(directory: pathlib.Path) -> str:
    """sha256 of the checkpoint's params file, re-hashed only when the file changes
    (a retrain into the same folder replaces it: new inode and mtime)."""
    path = pathlib.Path(directory) / checkpoint.PARAMS_FILE
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return "missing"
    if stat.st_size > checkpoint.MAX_PARAMS_BYTES:
        return "too large"  # never hashed: loading it says what is wrong
    identity = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if identity not in _DIGESTS:
        with open(path, "rb") as handle:
            _DIGESTS[identity] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _DIGESTS[identity]


@st.cache_resource(show_spinner="Loading checkpoint and CIFAR-10…", max_entries=2)
def _engine(on: Session) -> engine.Engine:
    # The session's digest keys the cache by content: a retrained checkpoint in the same folder gets a new engine.
    loaded, dataset = checkpoint.load_beside(
        on.checkpoint_path, lambda: data.load_cifar10(on.data_source, download=False)
    )
    return engine.Engine(on.checkpoint_path, dataset, loaded=loaded)


def get_engine() -> engine.Engine | None:
    """The engine for the current checkpoint and data, or None after showing ``st.error``."""
    try:
        eng = _engine(session())
    except DataMissing:
        data_missing_panel()
        return None
    except LowrankError as exc:
        st.error(f"{exc}")
        return None
    eng.warm_up()  # the shared intermediates, in the background (idempotent)
    if pending := eng.still_warming():
        st.sidebar.caption(
            f"Preparing in the background: {', '.join(pending)}. Pages that need them wait for them; "
            "the others are ready."
        )
    if eng.write_problem:
        st.warning(
            f"{eng.write_problem}. Results stay available until the app restarts; "
            "set LOWRANK_ARTIFACTS to a writable folder to keep them."
        )
    if eng.data.y_test.shape[0] < SMALL_TEST_SET:
        st.warning(
            f"This data source has only {eng.data.y_test.shape[0]:,} test images (CIFAR-10 has 10,000): "
            "every accuracy here is measured on those few and says so."
        )
    return eng


SMALL_TEST_SET = 1000
WHERE_DATA_GOES = (
    "type the path of cifar-10-python.tar.gz (or its cifar-10-batches-py/ folder) into the sidebar's "
    f"'CIFAR-10 path' field, or start the app with {data.ENV_VAR}=/path/to/cifar-10-python.tar.gz"
)


def data_missing_panel() -> None:
    """What to do when CIFAR-10 is nowhere: one click downloads it (md5-checked, atomic, with progress)."""
    url = data.download_url()
    host = url.split("/")[2] if "://" in url else url
    st.error(f"CIFAR-10 is not on this machine yet. Download it below, or {WHERE_DATA_GOES}.")
    label = f"Download CIFAR-10 ({data.CIFAR10_BYTES / 1e6:.0f} MB from {host}, checksum verified)"
    if not st.button(label, key="data_download", type="primary"):
        return
    bar = st.progress(0.0, text="Downloading CIFAR-10…")

    def on_progress(done: int, total: int) -> None:
        share = done / total if total else 0.0
        bar.progress(min(1.0, share), text=f"Downloading CIFAR-10… {done / 1e6:.0f} of {total / 1e6:.0f} MB")

    try:
        data.download_to_cache(on_progress)
    except LowrankError:
        bar.empty()
        st.error(
            f"Could not download CIFAR-10 from {url} (offline, or the file was wrong). Instead, {WHERE_DATA_GOES}."
        )
        return
    bar.empty()
    st.rerun()  # the data is in the cache now: every page finds it


@dataclasses.dataclass(frozen=True)
class Session:
    """What every cached call of a page is keyed by: the checkpoint folder, the data source and
    the checkpoint's content digest (a retrained checkpoint in the same folder is a new session)."""

    checkpoint_path: str
    data_source: str | None
    digest: str


DISTILLED = "the loss distills the checkpoint's own logits on the training images and their mirror images"


def session() -> Session:
    """The session of this script run (the sidebar's checkpoint and data)."""
    directory = checkpoint_dir()
    return Session(str(directory), data_path(), checkpoint_digest(directory))


@st.cache_data(show_spinner=False, max_entries=512)
def evaluate(on: Session, method, config=None, *, finetune_steps: int = 0, with_latency: bool = False) -> dict:
    """A measured variant (frozen configs and variants are hashable cache keys); with latency,
    in every runtime installed here (each its own accuracy and latency)."""
    finetune = FinetuneConfig(steps=finetune_steps) if finetune_steps else None
    return _engine(on).evaluate(
        method, config, finetune=finetune, with_latency=with_latency, runtimes=measured_runtimes(with_latency)
    )


def measured_runtimes(with_latency: bool) -> tuple[str, ...]:
    """The runtimes a page measures in: all installed ones when latency is asked for."""
    return runtimes.available() if with_latency else ()


@st.cache_data(show_spinner=False, max_entries=4)
def parameter_breakdown(checkpoint_path: str, digest: str) -> list[dict]:
    """Parameters per layer from the checkpoint alone: drawn before the data has loaded."""
    return report.parameter_breakdown(model.spec_of(checkpoint.param_shapes(checkpoint_path)))


@st.cache_data(show_spinner=False, max_entries=4)
def baseline_accuracy(on: Session) -> dict:
    """The checkpoint's accuracy, size and MACs (no latency: seconds sooner)."""
    return _engine(on).evaluate(methods.REFERENCE, with_latency=False)


def baseline_timed() -> dict | None:
    """The baseline's record once its latency is timed on the product path (the other runtimes
    fill in after), or None while it is being timed: timing runs in the background once the CPU
    is quiet (:func:`curves.time_later`), never inside a page's run, where it would hold every
    other session's measurements up."""
    eng, baseline = _engine(session()), methods.Variant.of(methods.REFERENCE)
    if curves.timed_record(eng, baseline) is None:
        curves.time_later(eng, baseline)
    return curves.first_timed_record(eng, baseline)


@st.cache_data(show_spinner="Computing singular values of every dense layer…", max_entries=4)
def spectra(on: Session) -> dict:
    return _engine(on).spectra()


@st.cache_data(show_spinner="Computing the other checkpoint's singular values…", max_entries=4)
def other_spectra(on: Session, other: str, other_digest: str) -> dict:
    """Spectra of another checkpoint (keyed by its content digest too)."""
    return _engine(on).checkpoint_spectra(other)


@st.cache_data(show_spinner="Computing σ(LᵀW) of every layer on 5,000 training images…", max_entries=4)
def data_spectra(on: Session) -> dict:
    return _engine(on).data_spectra()


@st.cache_data(show_spinner=False, ttl=5, max_entries=8)
def cached_results(on: Session) -> list[dict]:
    """Every result on disk for this checkpoint (short ttl: other tabs add to it)."""
    return _engine(on).cached_results()


def clear_in_memory_results() -> None:
    """Forgets every result this process keeps for the pages (the disk cache is the engine's)."""
    for fn in (evaluate, baseline_accuracy, cached_results):
        fn.clear()


def progress_callback(label: str, before_first: str | None = None):
    """An ``on_progress(done, total)`` that drives a Streamlit progress bar; ``before_first``: what
    the bar says until the first step is reported (what is prepared before it)."""
    bar = st.progress(0.0, text=before_first or label)

    def on_progress(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(1, total)), text=f"{label} {done}/{total}")

    return on_progress, bar


def config_or_stop(make):
    """``make()``, a config built from the widgets; if it is invalid, its one-line reason as
    ``st.error`` (what to change) and the page stops there."""
    try:
        return make()
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()


def run_with_errors(fn, *args, **kwargs):
    """Calls ``fn``; a user-facing error becomes ``st.error`` and None."""
    try:
        return fn(*args, **kwargs)
    except LowrankError as exc:
        st.error(str(exc))
        return None


def latency_stats(result: dict) -> dict:
    """The latency record at the batch actually timed."""
    return result["latency"][str(result["batch_size"])]


def fmt_mib(n_bytes: float) -> str:
    """A stored size in MiB (KiB below one MiB, so small networks still show differences)."""
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.1f} KiB"


def metric_row(result: dict, base: dict) -> None:
    """Accuracy, latency, parameters, MACs and stored size, each with its delta vs the baseline."""
    cols = st.columns(5)
    cols[0].metric(
        "Test accuracy",
        f"{result['accuracy']:.2%}",
        f"{result['accuracy'] - base['accuracy']:+.2%}",
        help=f"measured on all {result['n_test']:,} test images of the loaded data",
    )
    fastest = fastest_timing(result, base)
    if fastest is not None:
        name, timed, reference = fastest
        stats = latency_stats(timed)
        where = timed.get("measured_on") or {}
        cols[1].metric(
            f"Latency · {runtime_label(name)}",
            f"{timed['latency_ms']:.0f} ms",
            f"{timed['latency_ms'] - reference['latency_ms']:+.0f} ms",
            delta_color="inverse",
            help=f"batch {timed['batch_size']:,}, in the fastest runtime measured here for this variant, against the "
            f"baseline in the same runtime: median of {stats['repeats']} runs after warm-up (compile or session creation apart), IQR "
            f"{stats['iqr_ms']:.1f} ms; batch 1: {timed['latency_batch1_ms']:.2f} ms; measured on "
            f"{where.get('cpu', '?')} ({where.get('backend', '?')}, {where.get('cores', '?')} cores)",
        )
    else:
        cols[1].metric("Latency", "—", help="not measured: switch on 'Measure latency'")
    runtime_caption(result, base)
    cols[2].metric(
        "Parameters", f"{result['params']:,}", f"{result['params'] - base['params']:+,}", delta_color="inverse"
    )
    cols[3].metric(
        "MACs / image",
        f"{result['macs'] / 1e6:.2f} M",
        f"{(result['macs'] - base['macs']) / 1e6:+.2f} M",
        delta_color="inverse",
        help="computed from the layer shapes, not measured",
    )
    cols[4].metric(
        "Stored size",
        fmt_mib(result["bytes"]),
        ("+" if result["bytes"] >= base["bytes"] else "-") + fmt_mib(abs(result["bytes"] - base["bytes"])),
        delta_color="inverse",
        help=f"bytes of the variant's .npz as Compare & export writes it ({result['bytes']:,} B; floats "
        f"as {result.get('storage_dtype', 'float32')}, int8 matrices with float32 scales)",
    )


POLL_S = 3  # how often a page redraws what the background measures (latency, curve points)
# The Overview's one latency card is the first minute's last figure to land: polled more often
# (a poll that finds nothing new is a small fragment run, and no foreground work).
FIRST_LATENCY_POLL_S = 1


def variant_metrics(method: str, config, measure_latency: bool, training: str | None = None, finetune_steps: int = 0):
    """:func:`metrics_then_latency` for one variant: through the page cache, or — when building it
    trains (``training`` names it for the progress bar) — straight from the engine with progress."""
    if training is None:
        return metrics_then_latency(
            lambda timed: evaluate(session(), method, config, finetune_steps=finetune_steps, with_latency=timed),
            measure_latency,
        )
    finetune = FinetuneConfig(steps=finetune_steps) if finetune_steps else None
    inputs = "the training images' features" + (
        ", their mirror images' and the checkpoint's logits on both" if finetune and finetune.needs_teacher else ""
    )
    on_progress, bar = progress_callback(
        training, f"{training}: preparing {inputs} first (kept for later trainings while the app runs)…"
    )
    measured = metrics_then_latency(
        lambda timed: _engine(session()).evaluate(
            method,
            config,
            finetune=finetune,
            with_latency=timed,
            runtimes=measured_runtimes(timed),
            on_progress=on_progress,
        ),
        measure_latency,
    )
    bar.empty()
    return measured


def metrics_then_latency(compute, measure_latency: bool):
    """The metric row with accuracy as soon as it is measured (``compute(False)``); with
    ``measure_latency`` its latency in every runtime is timed in the background once the CPU
    is quiet (:func:`curves.time_later`: it never slows a move) and the row fills it in when
    it lands. Returns (the record, a function giving the timed record once there is one)."""
    with st.spinner("Computing on every test image…" + queue_note()):
        result = compute(False)
    eng, variant = _engine(session()), methods.Variant.from_dict(result)
    baseline = methods.Variant.of(methods.REFERENCE)

    def every_runtime_timed() -> bool:
        return bool(curves.timed_record(eng, baseline) and curves.timed_record(eng, variant))

    pending = measure_latency and not every_runtime_timed()
    if pending:
        curves.time_later(eng, variant)  # first: the row shows its latency as soon as it is in
        baseline_timed()  # then the baseline's, for the row's deltas

    def timed() -> dict:
        return (curves.first_timed_record(eng, variant) if measure_latency else None) or result

    @st.fragment(run_every=POLL_S if pending else None)  # polls only while the latency is being timed
    def metrics() -> None:
        shown, base = timed(), baseline_timed() if measure_latency else None
        metric_row(shown, base if base is not None and "latency_ms" in shown else baseline_accuracy(session()))
        note = st.empty()  # always there: a fragment's element count must not change between reruns
        if measure_latency and "latency_ms" not in shown:
            note.caption(
                "Latency: timing it in every runtime in the background, when no page is running (it never "
                "slows a move); it appears here when done." + queue_note()
            )
        elif pending and not every_runtime_timed():
            others = ", ".join(runtime_label(n) for n in runtimes.available()[1:])
            note.caption(
                f"Latency so far in {runtime_label(runtimes.PRODUCT)}; {others}: being timed in the background."
            )

    metrics()
    return result, timed


def queue_note() -> str:
    """ " (N measurements ahead of this one …)" when other sessions' measurements are queued."""
    ahead = fairness.MEASUREMENTS.ahead()
    if not ahead:
        return ""
    return f" ({ahead} measurement{'s' if ahead != 1 else ''} ahead of this one; served in arrival order)"


def runtime_label(name: str) -> str:
    return runtimes.get(name).label if name in runtimes.REGISTRY else name


def timings(record: dict) -> dict[str, dict]:
    """Every runtime's latency measurement of a record here: the product path's, then the others'."""
    out = {runtimes.PRODUCT: record} if "latency_ms" in record else {}
    out.update({n: e for n, e in (record.get("runtimes") or {}).items() if "latency_ms" in e})
    return out


def fastest_timing(result: dict, base: dict) -> tuple[str, dict, dict] | None:
    """(runtime, its measurement of ``result``, its measurement of ``base``) for the runtime that ran
    ``result`` fastest among those that timed both at the same batch; None if none did."""
    mine, theirs = timings(result), timings(base)
    both = [n for n in mine if n in theirs and mine[n]["batch_size"] == theirs[n]["batch_size"]]
    if not both:
        return None
    name = min(both, key=lambda n: mine[n]["latency_ms"])
    return name, mine[name], theirs[name]


def runtime_caption(result: dict, base: dict) -> None:
    """One line per installed runtime: its own accuracy and latency (the metric above shows the
    fastest). One slot per runtime whether it is timed yet or not: inside a polling fragment the
    number of elements must not change between reruns (Streamlit's "Bad delta path index")."""
    timed = timings(result)
    for name in runtimes.available():
        slot = st.empty()
        if (entry := timed.get(name)) is None:
            continue
        label = runtime_label(name)
        reference = timings(base).get(name, {})
        speed = ""
        if reference.get("latency_ms"):
            speed = f" ({reference['latency_ms'] / entry['latency_ms']:.2f}× the baseline's speed there)"
        threads = f"{entry['threads']} threads, " if "threads" in entry else ""
        how = runtimes.get(name).int8 if name in runtimes.REGISTRY and _is_int8(result) else ""
        slot.caption(
            f"**{label}** ({threads}on {entry['measured_on'].get('cpu', '?')}): accuracy {entry['accuracy']:.2%} on "
            f"{entry['n_test']:,} test images; latency batch {entry['batch_size']:,} {entry['latency_ms']:.0f} ms"
            f"{speed}, batch 1 {entry['latency_batch1_ms']:.2f} ms (median of "
            f"{entry['latency'][str(entry['batch_size'])]['repeats']}, compile or session creation apart)"
            + (f"; {how}" if how else "")
        )


def _is_int8(result: dict) -> bool:
    return bool((result.get("facts") or {}).get("int8_layers"))


def reference_line(
    fig: go.Figure, *, x: float | None = None, y: float | None = None, text: str, color: str, dash: str = "solid"
) -> go.Figure:
    """A labeled vertical (``x``) or horizontal (``y``) line across the plot. Plotly's
    ``add_vline``/``add_hline`` walk every subplot and validate as they go (≈ 30 ms a
    call, more under load, on every rerun); one shape and one annotation draw the same."""
    line = dict(color=color, dash=dash)
    if x is not None:
        fig.add_shape(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=line)
        fig.add_annotation(x=x, xref="x", y=1, yref="paper", text=text, showarrow=False, xanchor="left", yanchor="top")
    else:
        fig.add_shape(type="line", xref="paper", yref="y", x0=0, x1=1, y0=y, y1=y, line=line)
        fig.add_annotation(x=0, xref="paper", y=y, yref="y", text=text, showarrow=False, xanchor="left", yanchor="top")
    return fig


def validate_path(text: str, kind: str) -> str | None:
    """An error message for a typed path that is not an existing file or folder of ``kind``."""
    if problem := paths.path_problem(text):
        return problem
    path = pathlib.Path(text).expanduser()
    if kind == "checkpoint":
        if not (path / checkpoint.PARAMS_FILE).is_file():
            return f"{text} is not a checkpoint folder (no {checkpoint.PARAMS_FILE} in it)"
    return None


def sidebar() -> None:
    """Data source and checkpoint settings, and the loaded model, on every page."""
    with st.sidebar:
        shared = shared_mode()
        if shared:
            st.caption("Shared mode: data and checkpoints from this server's own list, or an upload.")
        else:
            data_fields()
        options = list(checkpoint_choices()) + ([] if shared else [OTHER_CHECKPOINT])
        if st.session_state.get("checkpoint_choice") not in options:
            # A folder typed earlier (or a choice that is gone): keep the typed one, else the first.
            typed = st.session_state.get("checkpoint_path") and not shared
            st.session_state["checkpoint_choice"] = OTHER_CHECKPOINT if typed else options[0]
        choice = st.selectbox(
            "Checkpoint",
            options,
            key="checkpoint_choice",
            help="the shipped baseline, or one trained on the Train page",
        )
        if choice == OTHER_CHECKPOINT:
            checkpoint_field()
        if shared:
            upload_field()
        st.caption(f"Data: {data.describe_source(None if shared else data_path_setting())}")
        st.caption(f"Checkpoint: {checkpoint_dir()}")


def data_fields() -> None:
    kind = st.radio(
        "Data source",
        [ARCHIVE_CHOICE, TFDS_CHOICE],
        key="data_kind",
        help="TensorFlow Datasets needs the tfds extra and cifar10 prepared in its data directory",
    )
    if kind == TFDS_CHOICE:
        st.text_input(
            "TFDS data directory",
            key="data_path",
            placeholder="default: $TFDS_DATA_DIR",
            help="the folder holding cifar10/ as `tfds build cifar10` prepared it",
        )
    else:
        st.text_input(
            "CIFAR-10 path (archive or folder)",
            key="data_path",
            placeholder="default: $LOWRANK_CIFAR10 or artifacts/data",
            help="cifar-10-python.tar.gz or a cifar-10-batches-py/ folder",
        )


def checkpoint_field() -> None:
    st.text_input(
        "Checkpoint folder",
        key="checkpoint_path",
        placeholder="a folder holding params.npz and metadata.json",
        help="a folder holding params.npz and metadata.json",
    )
    typed = st.session_state.get("checkpoint_path")
    if typed and (problem := validate_path(typed, "checkpoint")):
        st.error(f"{problem}; using the default checkpoint instead")


def upload_field() -> None:
    """An upload (params.npz, optionally its metadata.json), checked and kept by content, then picked."""
    files = st.file_uploader(
        "Upload a checkpoint (params.npz, and its metadata.json if you have it)",
        type=["npz", "json"],
        accept_multiple_files=True,
        key="checkpoint_upload",
    )
    by_name = {f.name: f for f in files or []}
    params = next((f for name, f in by_name.items() if name.endswith(".npz")), None)
    if params is None:
        return
    meta = next((f for name, f in by_name.items() if name.endswith(".json")), None)
    if params.size > checkpoint.MAX_PARAMS_BYTES or (meta is not None and meta.size > checkpoint.MAX_METADATA_BYTES):
        st.error("That upload is larger than any checkpoint of this network; it was not read.")
        return
    folder = run_with_errors(checkpoint.store_upload, params.getvalue(), None if meta is None else meta.getvalue())
    if folder is not None:
        label = checkpoint.upload_label(folder.name)
        if st.session_state.get("checkpoint_choice") != label:
            st.caption(f"Checked and stored as '{label}': pick it above.")


def export_buttons(eng: engine.Engine, result: dict, name: str, key: str) -> None:
    """Prepare-then-download buttons for a measured variant: its .npz (the stored size measured)
    and its ONNX model (uint8 images in, logits out; int8 on integer kernels)."""
    formats = {"npz": (eng.variant_npz, "application/octet-stream"), "onnx": (eng.variant_onnx, "application/onnx")}
    cols = st.columns(len(formats))
    for col, (suffix, (build, mime)) in zip(cols, formats.items()):
        slot = f"{key}_{suffix}_blob"
        if col.button(f"Prepare the .{suffix}", key=f"{key}_{suffix}_prepare"):
            with st.spinner(f"Building the .{suffix} of {name}…"):
                blob = run_with_errors(build, result)
            if blob is not None:
                st.session_state[slot] = (name, blob)
        if st.session_state.get(slot, (None,))[0] == name:
            blob = st.session_state[slot][1]
            col.download_button(
                f"Download variant.{suffix} ({fmt_mib(len(blob))})",
                blob,
                f"variant.{suffix}",
                mime,
                key=f"{key}_{suffix}_download",
            )
