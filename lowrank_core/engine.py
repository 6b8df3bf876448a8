"""Builds, measures and caches variants of one checkpoint: a thin facade.

* :class:`~lowrank_core.store.ResultStore` keeps measured records (hashed
  JSON, memory fallback), keyed by :func:`methods.result_key`;
* :class:`~lowrank_core.intermediates.Intermediates` keeps SVDs, the
  convolutions' outputs and initialization spectra, each under its own lock;
* :mod:`lowrank_core.methods` builds variants (pipelines of registered steps).

The engine holds no lock across work: concurrent requests for one variant
wait on that variant's lock only, so one session's retraining never stalls
another session's slider.

Every variant is measured as it is stored (:func:`checkpoint.as_stored`):
floats in the checkpoint's storage dtype, int8 matrices with their scales.
``bytes`` is the size of that file, written in memory
(:meth:`Engine.variant_npz` returns the same bytes).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import pathlib
import threading
from typing import Callable

import numpy as np

from lowrank_core import checkpoint, fairness, measure, model, onnx_export, paths, priority, runtimes as runtimes_module
from lowrank_core.data import Cifar10
from lowrank_core.errors import ConfigError
from lowrank_core.fileio import atomic_write_bytes
from lowrank_core.finetune import FinetuneConfig, finetune_dense
from lowrank_core.intermediates import Intermediates, KeyedLocks
from lowrank_core.methods import REGISTRY, BuildContext, Variant, config_dict, get, result_key
from lowrank_core.store import ResultStore

ProgressFn = Callable[[int, int], None]


def as_variant(method, config=None, finetune: FinetuneConfig | None = None) -> Variant:
    """A :class:`Variant` from a variant, or from a method name and its config."""
    if isinstance(method, Variant):
        return method
    return Variant.of(method, config, finetune)


class Engine:
    """One checkpoint, one dataset: variants on demand, results cached on disk."""

    def __init__(self, checkpoint_dir: str | os.PathLike, data: Cifar10, cache_root: pathlib.Path | None = None):
        self.checkpoint_dir = pathlib.Path(checkpoint_dir)
        params, self.metadata, params_sha = checkpoint.load_with_digest(self.checkpoint_dir)
        self.storage_dtype = self.metadata.get("storage_dtype", "float32")
        self.params = checkpoint.as_stored(params, self.storage_dtype)
        self.spec = model.spec_of(self.params)
        self.data = data
        # The bytes actually loaded, and the data: nothing else can change a result.
        self.checkpoint_hash = hashlib.sha256((params_sha + data.sha256).encode()).hexdigest()[:16]
        self.cache_dir = (cache_root or paths.artifacts_dir() / "cache") / self.checkpoint_hash
        self.store = ResultStore(self.cache_dir / "results")
        self.sensitivity_store = ResultStore(self.cache_dir / "sensitivity")
        self.intermediates = Intermediates(self.params, self.metadata, data, self.cache_dir, self._note_write_failure)
        self._variant_locks = KeyedLocks()
        self._intermediate_problem: str | None = None
        self.environment = measure.environment()
        self.warmed: set[str] = set()  # what warm_up() has finished
        self._warm_lock = threading.Lock()
        self._warm_thread: threading.Thread | None = None
        # Measurements in progress: the warm-up's optional work waits while any runs (2 cores are
        # not enough for both), unless someone needs the warm-up finished (``_hurry``).
        self._active = 0
        self._active_lock = threading.Condition()
        self._hurry = threading.Event()

    # ---- shared intermediates ----

    def warm_up(self) -> threading.Thread:
        """Starts (once) a background thread computing what every page needs first:
        the convolutions' test-set output, the baseline's accuracy, then its
        hidden-layer outputs (≈ 1 s; pruning and one-layer variants run from
        them, see :meth:`_predict`), the dense layers' SVDs (≈ 3 s on 2 cores
        for the baseline: dead units are left out) and their spectra at
        initialization (≈ 9 s, mostly Haiku's init), each under its own lock,
        so a page asking meanwhile waits for that piece only. The hidden
        outputs, SVDs and init spectra start only while no measurement runs
        (layer by layer), so they never slow a slider move they are not needed
        for. Latency is never measured here: timing beside other work would
        misreport it."""
        with self._warm_lock:
            if self._warm_thread is None:
                svd_steps = [
                    (f"svd:{n}", lambda n=n: self.intermediates.svd_of(self.params[n]["w"]))
                    for n in model.dense_layer_names(self.params)
                ]

                def work() -> None:
                    for step, task in (
                        ("features", lambda: self.test_features),
                        ("baseline", lambda: self.evaluate("baseline", with_latency=False)),
                        ("hidden", lambda: self.intermediates.hidden_activations().outputs),
                        *svd_steps,
                        ("init_spectra", self.init_singular_values),
                    ):
                        if step not in ("features", "baseline"):
                            self._wait_for_quiet()
                        try:
                            task()
                        except Exception:  # the page that needs it reports the error itself
                            pass
                        self.warmed.add(step)
                    if all(step in self.warmed for step, _ in svd_steps):
                        self.warmed.add("svds")

                self._warm_thread = threading.Thread(target=work, name="lowrank-warm-up", daemon=True)
                self._warm_thread.start()
            return self._warm_thread

    def still_warming(self) -> list[str]:
        """What the background warm-up has not finished yet (empty once done or never started)."""
        thread = self._warm_thread
        if thread is None or not thread.is_alive():
            return []
        steps = {
            "features": "test-set features",
            "baseline": "baseline accuracy",
            "hidden": "hidden-layer outputs",
            "svds": "SVDs",
            "init_spectra": "spectra at initialization",
        }
        return [label for step, label in steps.items() if step not in self.warmed]

    def _wait_for_quiet(self) -> None:
        with self._active_lock:
            self._active_lock.wait_for(lambda: self._active == 0 or self._hurry.is_set())

    @contextlib.contextmanager
    def _busy(self):
        """Marks a measurement in progress (see :meth:`warm_up`)."""
        with self._active_lock:
            self._active += 1
        try:
            yield
        finally:
            with self._active_lock:
                self._active -= 1
                self._active_lock.notify_all()

    @property
    def write_problem(self) -> str | None:
        """Why the cache cannot be written (results then live in memory), or None."""
        problem = self.store.write_problem or self._intermediate_problem
        return f"{problem}; working from memory" if problem else None

    def _note_write_failure(self, exc: OSError) -> None:
        self._intermediate_problem = f"cannot write the cache under {self.cache_dir} ({exc.strerror or exc})"

    @property
    def svds(self):
        return self.intermediates.layer_svds()

    @property
    def test_features(self) -> np.ndarray:
        return self.intermediates.features("test")

    @property
    def train_features(self) -> np.ndarray:
        return self.intermediates.features("train")

    def init_singular_values(self) -> dict[str, np.ndarray]:
        return self.intermediates.init_singular_values()

    def data_spectra(self) -> dict[str, dict]:
        """Per dense layer: curves and stats of σ(LᵀW), the layer as 5,000 training
        images' inputs see it (see :meth:`Intermediates.data_singular_values`)."""
        from lowrank_core import compress

        return {
            n: {"curves": compress.spectrum_curves(s), "stats": compress.spectrum_stats(s)}
            for n, s in self.intermediates.data_singular_values().items()
        }

    def spectra(self) -> dict[str, dict]:
        """Per dense layer: curves and summary stats, trained and at initialization."""
        from lowrank_core import compress

        init = self.init_singular_values()
        out = {}
        for name, svd in self.svds.items():
            out[name] = {
                "trained": compress.spectrum_curves(svd.s),
                "init": compress.spectrum_curves(init[name]),
                "stats": compress.spectrum_stats(svd.s),
                "init_stats": compress.spectrum_stats(init[name]),
                "shape": tuple(self.params[name]["w"].shape),
            }
        return out

    def checkpoint_spectra(self, directory: str | os.PathLike) -> dict[str, dict]:
        """Spectrum curves of another checkpoint's dense layers (to overlay on this
        one's), cached on disk by the content of its params file."""
        from lowrank_core import compress

        params, _, digest = checkpoint.load_with_digest(directory)
        if model.spec_of(params) != self.spec:
            raise ConfigError(
                f"{directory} has other layer shapes than the loaded checkpoint: pick one of the same network"
            )
        values = self.intermediates.singular_values_of(params, digest)
        return {
            n: {
                "curves": compress.spectrum_curves(s),
                "stats": compress.spectrum_stats(s),
                "shape": tuple(params[n]["w"].shape),
            }
            for n, s in values.items()
        }

    # ---- variants ----

    def build(
        self, method, config=None, finetune: FinetuneConfig | None = None, on_progress: ProgressFn | None = None
    ) -> tuple[dict, dict]:
        """(params of the variant as stored, facts such as ranks or changed layers)."""
        variant = as_variant(method, config, finetune)
        context = BuildContext(
            svd=self.intermediates.svd_of,
            train_features=lambda: self.train_features,
            train_labels=self.data.y_train,
            on_progress=on_progress,
            input_factor=self.intermediates.input_factor,
            calibration_path=self.intermediates.calibration_path,
        )
        structure = [(n, c) for n, c in variant.steps if get(n).kind != "storage"]
        storage = [(n, c) for n, c in variant.steps if get(n).kind == "storage"]
        params, facts = self.params, {}
        for name, step_config in structure:
            params, step_facts = get(name).build(params, step_config, context)
            facts.update(step_facts)
        if variant.finetune:
            params = self._finetune(params, variant, on_progress)
        for name, step_config in structure:
            params = get(name).finalize(params, step_config)
        for name, step_config in storage:
            params, step_facts = get(name).build(params, step_config, context)
            facts.update(step_facts)
        # Only float matrices can need float32 storage; int8 ones carry their own scales.
        facts["float32_layers"] = [n for n in facts.get("float32_layers", ()) if "w" in params.get(n, {})]
        return checkpoint.as_stored(params, self.storage_dtype, tuple(facts["float32_layers"])), facts

    def _finetune(self, params: dict, variant: Variant, on_progress: ProgressFn | None) -> dict:
        """Fine-tunes the dense stack over frozen convolutions, keeping each step's
        structure: SVD factors train as factors (rank ≤ k), pruned zeros stay zero."""
        dense = {n: params[n] for n in model.dense_layer_names(params)}
        masks = None
        if any(name == "prune" for name, _ in variant.steps):
            masks = {n: np.asarray(layer["w"]) != 0 for n, layer in dense.items() if "w" in layer}
        out = dict(params)
        out.update(
            finetune_dense(
                dense, self.train_features, self.data.y_train, variant.finetune, masks=masks, on_progress=on_progress
            )
        )
        return out

    def evaluate(
        self,
        method,
        config=None,
        *,
        finetune: FinetuneConfig | None = None,
        with_latency: bool = True,
        use_cache: bool = True,
        on_progress: ProgressFn | None = None,
        with_layer_latency: bool = False,
        runtimes: tuple[str, ...] = (),
    ) -> dict:
        """Measures a variant (cached): accuracy on every test image, size, latency on the
        product path; with ``runtimes`` (names in :data:`lowrank_core.runtimes.REGISTRY`)
        also each one's own accuracy and latency, under ``record["runtimes"][name]``."""
        variant = as_variant(method, config, finetune)
        variant.check(self.spec)
        extra = tuple(name for name in runtimes if name != runtimes_module.PRODUCT)
        for name in extra:
            runtimes_module.require(name)
        key = result_key(self.checkpoint_hash, variant)
        if use_cache and (hit := self._lookup(key, with_latency, with_layer_latency, extra)) is not None:
            return hit
        # A training variant takes minutes: it yields to other sessions' interactive requests, and
        # a session waiting for the same one (below) is no interactive request to yield to.
        with priority.background() if variant.trains else contextlib.nullcontext():
            # Sessions asking for the same variant at once (browser tabs) compute it
            # once: the second waits for the first, then reads its result.
            with self._variant_locks(key):
                if use_cache and (hit := self._lookup(key, with_latency, with_layer_latency, extra)) is not None:
                    return hit
                # Interactive measurements take turns in arrival order; training yields instead.
                queued = not (variant.trains or priority.in_background())
                turn = fairness.MEASUREMENTS.turn() if queued else contextlib.nullcontext()
                with self._busy(), turn:
                    result = self._measure(variant, with_latency, with_layer_latency, on_progress)
                    if extra:
                        result = self._with_runtimes(result, extra, with_latency)
                self.store.put(key, result)
                return result

    def _measure(
        self, variant: Variant, with_latency: bool, with_layer_latency: bool, on_progress: ProgressFn | None
    ) -> dict:
        params, facts = self.build(variant, on_progress=on_progress)
        predictions = self._predict(params)
        # Kept beside the result: What changes and the report read them instead of predicting again.
        self._save_predictions(result_key(self.checkpoint_hash, variant), predictions)
        baseline_bytes = self.baseline_bytes
        stored = len(self._npz(params, facts))
        single = len(variant.steps) == 1
        result = {
            "method": variant.name,
            "config": config_dict(variant.steps[0][1]) if single else {},
            "steps": variant.to_dict()["steps"],
            "finetune": config_dict(variant.finetune) if variant.finetune else None,
            "label": variant.describe(),
            "checkpoint": self.checkpoint_hash,
            "accuracy": float(np.mean(predictions == self.data.y_test)),
            "n_test": int(self.data.y_test.shape[0]),
            "params": measure.count_params(params),
            "nonzero_params": int(
                sum(np.count_nonzero(v) for ps in params.values() for k, v in ps.items() if not k.endswith("_scale"))
            ),
            "macs": measure.macs_per_image(params),
            "bytes": stored,
            "storage_dtype": self.storage_dtype,
            "compression_ratio": baseline_bytes / stored,
            "facts": facts,
        }
        if with_latency:
            result.update(self._latency(params, with_layer_latency))
        return result

    @contextlib.contextmanager
    def _timing(self):
        """Quiet for a latency: timed beside the background warm-up, it would measure that contention."""
        warming = self._warm_thread
        if warming is not None and warming is not threading.current_thread():
            self._hurry.set()  # it would otherwise wait for this measurement to end
            with self._active_lock:
                self._active_lock.notify_all()
            warming.join()
        with priority.exclusive():  # likewise any other session's retraining pauses meanwhile
            yield

    def _with_runtimes(self, record: dict, names: tuple[str, ...], with_latency: bool) -> dict:
        """``record`` with each runtime's own measurement of its variant (accuracy, and latency if asked)."""
        stored = self.stored_variant(record)
        measured = dict(record.get("runtimes") or {})
        for name in names:
            batches = measure.timed_batch_sizes(self.data.x_test.shape[0]) if with_latency else None
            with self._timing() if with_latency else contextlib.nullcontext():
                measured[name], _ = runtimes_module.runtime_record(
                    runtimes_module.get(name), stored, self.data.x_test, self.data.y_test, batches
                )
        return {**record, "runtimes": measured}

    def _runtimes_missing(self, record: dict, names: tuple[str, ...], with_latency: bool) -> tuple[str, ...]:
        have = record.get("runtimes") or {}
        return tuple(n for n in names if n not in have or (with_latency and not self._measured_here(have[n], n)))

    def _measured_here(self, entry: dict, name: str) -> bool:
        here = runtimes_module.get(name).environment()["fingerprint"]
        return bool(entry.get("latency")) and (entry.get("measured_on") or {}).get("fingerprint") == here

    def _latency(self, params: dict, with_layer_latency: bool) -> dict:
        with self._timing():
            lat = measure.latency(params, self.data.x_test)
            layer_lat = measure.layer_latency(params, self.data.x_test) if with_layer_latency else None
        batch = max(int(b) for b in lat)
        out = {
            "latency": lat,
            "batch_size": batch,
            "latency_ms": lat[str(batch)]["median_ms"],
            "latency_batch1_ms": lat["1"]["median_ms"],
            "measured_on": self.environment,
        }
        if with_layer_latency:  # a few seconds more: the CLI asks for it, the app on demand
            out["layer_latency_ms"] = layer_lat
        return out

    def _here(self, record: dict) -> bool:
        return (record.get("measured_on") or {}).get("fingerprint") == self.environment["fingerprint"]

    def _lookup(
        self, key: str, with_latency: bool, with_layer_latency: bool = False, extra: tuple[str, ...] = ()
    ) -> dict | None:
        """The stored record under ``key`` with what is asked for; latency measured
        on another machine (or missing) is measured here, the accuracy kept; runtimes
        not measured yet are measured."""
        record = self.store.get(key)
        if record is None:
            return None
        stale = with_latency and not (record.get("latency") and self._here(record))
        stale |= with_layer_latency and not (record.get("layer_latency_ms") and self._here(record))
        if stale:
            with fairness.MEASUREMENTS.turn():
                params, _ = self.build(Variant.from_dict(record))
                record = {**record, **self._latency(params, with_layer_latency)}
            self.store.put(key, record)
        if missing := self._runtimes_missing(record, extra, with_latency):
            with fairness.MEASUREMENTS.turn():
                record = self._with_runtimes(record, missing, with_latency)
            self.store.put(key, record)
        return record

    def predictions(self, record: dict) -> np.ndarray:
        """The test-set predictions of a measured variant (rebuilt from its record;
        cached on disk beside the results). Their accuracy is the record's."""
        variant = Variant.from_dict(record)
        key = result_key(self.checkpoint_hash, variant)
        path = self.cache_dir / "predictions" / f"{key}.npy"
        with self._variant_locks(("predictions", key)):
            try:
                predictions = np.load(path, allow_pickle=False)
                if predictions.shape == self.data.y_test.shape:
                    return predictions
            except Exception:
                pass
            params, _ = self.build(variant)  # measured before this cache existed, or the file was lost
            predictions = self._predict(params)
            self._save_predictions(key, predictions)
            return predictions

    def _predict(self, params: dict) -> np.ndarray:
        """Test-set predictions on the product path (from the cached convolutions' output when
        unchanged, and from the checkpoint's hidden outputs before the first changed dense layer)."""
        if measure.same_convolutions(params, self.params):
            predictions = measure.predict_from_features(
                params, self.test_features, reference=self.intermediates.hidden_activations()
            )
        else:
            predictions = measure.predict_full(params, self.data.x_test)
        return predictions.astype(np.int32)

    def _save_predictions(self, key: str, predictions: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, predictions)
        try:
            atomic_write_bytes(self.cache_dir / "predictions" / f"{key}.npy", buffer.getvalue())
        except OSError as exc:
            self._note_write_failure(exc)

    def impact(self, record: dict, reference: dict | None = None) -> dict:
        """What ``record``'s variant changes against ``reference`` (default: the
        baseline) on every test image (:func:`impact.compare`)."""
        from lowrank_core import impact

        reference = reference or self.evaluate("baseline", with_latency=False)
        return impact.compare(
            self.data.y_test, self.predictions(reference), self.predictions(record), self.data.class_names
        )

    def cached_result(
        self, method, config=None, finetune: FinetuneConfig | None = None, with_latency: bool = False
    ) -> dict | None:
        """The cached result of a variant, or None if never measured (computes nothing)."""
        record = self.store.get(result_key(self.checkpoint_hash, as_variant(method, config, finetune)))
        if record is None or (with_latency and not (record.get("latency") and self._here(record))):
            return None
        return record

    def cached_results(self) -> list[dict]:
        """Every valid cached result of this checkpoint (for Pareto charts). Latency
        measured on another machine is moved under ``latency_elsewhere``, never shown as this machine's."""
        out = []
        for record in self.store.all().values():
            if record.get("latency") and not self._here(record):
                moved = {
                    k: record[k]
                    for k in (
                        "latency",
                        "latency_ms",
                        "latency_batch1_ms",
                        "layer_latency_ms",
                        "batch_size",
                        "measured_on",
                    )
                    if k in record
                }
                record = {k: v for k, v in record.items() if k not in moved} | {"latency_elsewhere": moved}
            if record.get("runtimes"):
                record = {**record, "runtimes": self._runtimes_here(record["runtimes"])}
            out.append(record)
        return out

    def _runtimes_here(self, entries: dict) -> dict:
        """Runtime entries with latency measured elsewhere moved under ``latency_elsewhere``."""
        out = {}
        for name, entry in entries.items():
            if name in runtimes_module.REGISTRY and entry.get("latency") and not self._measured_here(entry, name):
                timing = ("latency", "latency_ms", "latency_batch1_ms", "batch_size", "measured_on")
                moved = {k: entry[k] for k in timing if k in entry}
                entry = {k: v for k, v in entry.items() if k not in moved} | {"latency_elsewhere": moved}
            out[name] = entry
        return out

    def clear_results(self) -> int:
        """Deletes this checkpoint's cached results; returns how many went."""
        return self.store.clear()

    def variant_npz(self, result: dict) -> bytes:
        """The measured variant's parameters in the product's stored format
        (rebuilt from its record; the same bytes its ``bytes`` counts)."""
        return self._npz(*self.build(Variant.from_dict(result)))

    def stored_variant(self, result: dict) -> runtimes_module.StoredVariant:
        """The measured variant exactly as its file stores it (rebuilt from its record)."""
        params, facts = self.build(Variant.from_dict(result))
        return runtimes_module.StoredVariant(params, self.storage_dtype, tuple(facts["float32_layers"]))

    def variant_onnx(self, result: dict) -> bytes:
        """The measured variant as an ONNX model (:mod:`lowrank_core.onnx_export`)."""
        return onnx_export.to_onnx_bytes(*self.stored_variant(result))

    @functools.cached_property
    def baseline_bytes(self) -> int:
        """The checkpoint's size in the stored format (measured once)."""
        return measure.stored_bytes(self.params, self.storage_dtype)

    def _npz(self, params: dict, facts: dict) -> bytes:
        return checkpoint.params_to_npz_bytes(params, self.storage_dtype, tuple(facts["float32_layers"]))

    def svd_sensitivity(
        self,
        fractions=None,
        layers: tuple[str, ...] | None = None,
        on_progress: ProgressFn | None = None,
        compute: bool = True,
        basis: str = "weights",
    ) -> list[dict] | None:
        """Each dense layer truncated alone at each rank fraction, all test images
        (:func:`sensitivity.svd_sensitivity`); cached on disk by checkpoint and grid.
        With ``compute=False`` only the cached table (or None)."""
        import json

        from lowrank_core import sensitivity

        basis = REGISTRY["svd"].config_type(basis=basis).table_basis  # validates it; the table that predicts it
        fractions = tuple(float(f) for f in (fractions or sensitivity.DEFAULT_FRACTIONS))
        layers = tuple(layers or model.dense_layer_names(self.params))
        for f in fractions:
            REGISTRY["svd"].config_type(rank_fraction=f, basis=basis)  # validates the grid and basis
        blob = {
            "checkpoint": self.checkpoint_hash,
            "fractions": fractions,
            "layers": layers,
            "basis": basis,
            "version": REGISTRY["svd"].version,
            "kind": "svd_sensitivity",
        }
        key = hashlib.sha256(json.dumps(blob).encode()).hexdigest()[:32]
        if not compute:
            hit = self.sensitivity_store.get(key)
            return None if hit is None else hit["rows"]
        with self._variant_locks(key):
            if (hit := self.sensitivity_store.get(key)) is not None:
                return hit["rows"]
            rows = sensitivity.svd_sensitivity(
                self.params,
                self.intermediates.svd_of,
                self.test_features,
                self.data.y_test,
                fractions,
                layers,
                self.storage_dtype,
                on_progress,
                self.intermediates.input_factor if basis != "weights" else None,
            )
            self.sensitivity_store.put(key, {"rows": rows, "n_test": int(self.data.y_test.shape[0])})
            return rows

    def sensitivity(
        self,
        method: str,
        grid: list[float],
        layers: tuple[str, ...] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> list[dict]:
        """Compresses one layer at a time over ``grid`` (rank fractions for
        "svd", sparsities for "prune"), everything else intact: rows of
        (layer, value, accuracy) on every test image. SVD takes the fast path
        (:meth:`svd_sensitivity`); pruning measures each point (cached)."""
        from lowrank_core import compress

        if method == "svd":
            rows = self.svd_sensitivity(grid, layers, on_progress)
            return [
                {"layer": r["layer"], "value": r["fraction"], "rank": r["rank"], "accuracy": r["accuracy"]}
                for r in rows
            ]
        if method == "prune":
            layers = layers or compress.prunable_layers(self.params)
            configs = [(n, v, REGISTRY["prune"].config_type(sparsity=v, only=(n,))) for n in layers for v in grid]
        else:
            raise ConfigError("the sensitivity sweep covers 'svd' and 'prune'")
        rows = []
        for i, (name, value, config) in enumerate(configs):
            result = self.evaluate(method, config, with_latency=False)
            rows.append({"layer": name, "value": value, "accuracy": result["accuracy"]})
            if on_progress:
                on_progress(i + 1, len(configs))
        return rows
