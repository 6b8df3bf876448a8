"""Builds, measures and caches variants of one checkpoint: a thin facade.

* :class:`~lowrank_core.store.ResultStore` keeps measured records (hashed
  JSON, memory fallback), keyed by :func:`methods.result_key`;
* :class:`~lowrank_core.intermediates.Intermediates` keeps SVDs, the
  convolutions' outputs and initialization spectra, each under its own lock;
* :mod:`lowrank_core.methods` builds variants (pipelines of registered steps);
* :mod:`lowrank_core.measurement` measures them once and keeps records fresh,
  :mod:`lowrank_core.runtimes` in each runtime, :mod:`lowrank_core.background`
  schedules the warm-up, :mod:`lowrank_core.predictions` keeps predictions,
  :mod:`lowrank_core.tables` and :mod:`lowrank_core.spectra` the per-layer views.

The engine holds no lock across work: concurrent requests for one variant
wait on that variant's lock only, so one session's retraining never stalls
another session's slider.

Every variant is measured as it is stored (:func:`checkpoint.as_stored`):
floats in the checkpoint's storage dtype, int8 matrices with their scales.
``bytes`` is the size of that file, written in memory
(:meth:`Engine.variant_npz` returns the same bytes).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import threading
from typing import Callable

import numpy as np

from lowrank_core import (
    background,
    checkpoint,
    impact as impact_module,
    measure,
    measurement,
    methods,
    model,
    onnx_export,
    paths,
    predictions as predictions_module,
    results,
    runtimes as runtimes_module,
    spectra,
    tables,
)
from lowrank_core.data import Cifar10
from lowrank_core.finetune import FinetuneConfig, finetune_dense
from lowrank_core.intermediates import Intermediates, KeyedLocks
from lowrank_core.methods import Variant, build_variant, result_key
from lowrank_core.store import ResultStore

ProgressFn = Callable[[int, int], None]


def as_variant(method, config=None, finetune: FinetuneConfig | None = None) -> Variant:
    """A :class:`Variant` from a variant, or from a method name and its config."""
    if isinstance(method, Variant):
        return method
    return Variant.of(method, config, finetune)


class Engine:
    """One checkpoint, one dataset: variants on demand, results cached on disk."""

    def __init__(
        self, checkpoint_dir: str | os.PathLike, data: Cifar10, cache_root=None, loaded: checkpoint.Loaded | None = None
    ):
        """``cache_root``: where results go (default the artifacts' cache); ``loaded``: the folder's
        :func:`checkpoint.load_stored`, if read already (else read here)."""
        self.checkpoint_dir = pathlib.Path(checkpoint_dir)
        self.params, self.metadata, params_sha = loaded or checkpoint.load_stored(self.checkpoint_dir)
        self.storage_dtype = self.metadata.get("storage_dtype", "float32")
        self.spec = model.spec_of(self.params)
        self.data = data
        # The bytes actually loaded, and the data: nothing else can change a result.
        self.checkpoint_hash = hashlib.sha256((params_sha + data.sha256).encode()).hexdigest()[:16]
        self.cache_dir = (cache_root or paths.artifacts_dir() / "cache") / self.checkpoint_hash
        self.store = ResultStore(self.cache_dir / "results")
        self.sensitivity_store = ResultStore(self.cache_dir / "sensitivity")
        self.intermediates = Intermediates(self.params, self.metadata, data, self.cache_dir, self._note_write_failure)
        self.locks = KeyedLocks()  # one lock per variant (or table) being computed
        self._intermediate_problem: str | None = None
        self.environment = measure.environment()
        self.schedule = background.WarmUp()
        self.prediction_cache = predictions_module.PredictionCache(
            self.cache_dir / "predictions", int(data.y_test.shape[0]), self._note_write_failure
        )

    # ---- shared intermediates ----

    def warm_up(self) -> threading.Thread:
        """Starts (once) the background warm-up (:mod:`lowrank_core.background`): the test-set
        features and the baseline's accuracy, then, while no measurement runs, the hidden-layer
        outputs, every dense layer's SVD and the spectra at initialization."""
        steps, groups = background.warm_up_steps(self)
        return self.schedule.start(steps, groups)

    def still_warming(self) -> list[str]:
        """What the background warm-up has not finished yet (empty once done or never started)."""
        return self.schedule.still_warming()

    @property
    def warmed(self) -> set[str]:
        return self.schedule.warmed

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
        """σ(LᵀW) of each dense layer, drawn as curves and stats (:mod:`lowrank_core.spectra`)."""
        return spectra.as_data_sees_it(self)

    def spectra(self) -> dict[str, dict]:
        """Each dense layer's spectrum, trained and at initialization (:mod:`lowrank_core.spectra`)."""
        return spectra.trained_and_init(self)

    def checkpoint_spectra(self, directory: str | os.PathLike) -> dict[str, dict]:
        """Another checkpoint's spectra, to overlay (:mod:`lowrank_core.spectra`)."""
        return spectra.of_checkpoint(self, directory)

    # ---- variants ----

    def build(
        self, method, config=None, finetune: FinetuneConfig | None = None, on_progress: ProgressFn | None = None
    ) -> tuple[dict, dict]:
        """(params of the variant as stored, facts such as ranks or changed layers):
        :func:`methods.build_variant` on this checkpoint, fine-tuning over its training features."""
        variant = as_variant(method, config, finetune)
        context = self.intermediates.build_context(on_progress)
        params, facts = build_variant(self.params, variant, context, finetune_dense)
        stored = checkpoint.as_stored(params, self.storage_dtype, tuple(facts["float32_layers"]), self.params)
        return stored, facts

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
        return measurement.once(self, variant, with_latency, with_layer_latency, extra, use_cache, on_progress)

    def retime(self, method, config=None, *, finetune: FinetuneConfig | None = None, runtimes=()) -> dict:
        """A measured variant's latency timed again (:func:`measurement.retimed`), its accuracy kept."""
        extra = tuple(name for name in runtimes if name != runtimes_module.PRODUCT)
        return measurement.retimed(self, as_variant(method, config, finetune), extra)

    def predictions(self, record: dict) -> np.ndarray:
        """The test-set predictions of a measured variant (cached beside the results; rebuilt from
        its record if the file is gone). Their accuracy is the record's."""
        return predictions_module.of_record(self, record)

    def predict(self, params: dict) -> np.ndarray:
        """The class of every test image under ``params`` (:func:`predictions.predict`)."""
        return predictions_module.predict(params, self.params, self.intermediates, self.data.x_test)

    def impact(self, record: dict, reference: dict | None = None) -> dict:
        """What ``record``'s variant changes against ``reference`` (default: the
        baseline) on every test image (:func:`impact.compare`)."""
        reference = reference or self.evaluate(methods.REFERENCE, with_latency=False)
        return impact_module.compare(
            self.data.y_test, self.predictions(reference), self.predictions(record), self.data.class_names
        )

    def cached_result(
        self, method, config=None, finetune: FinetuneConfig | None = None, with_latency: bool = False
    ) -> dict | None:
        """The cached result of a variant, or None if never measured (computes nothing)."""
        record = self.store.get(result_key(self.checkpoint_hash, as_variant(method, config, finetune)))
        return None if record is None or measurement.stale(record, self.environment, with_latency) else record

    def cached_results(self) -> list[dict]:
        """Every valid cached result of this checkpoint (for Pareto charts), latency measured on
        another machine listed apart (:func:`lowrank_core.results.as_listed`)."""
        return [results.as_listed(r, self.environment) for r in self.store.all().values()]

    def clear_results(self) -> int:
        """Deletes this checkpoint's cached results; returns how many went."""
        return self.store.clear()

    def variant_npz(self, result: dict) -> bytes:
        """The measured variant's parameters in the product's stored format
        (rebuilt from its record; the same bytes its ``bytes`` counts)."""
        return self.npz(*self.build(Variant.from_dict(result)))

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

    def npz(self, params: dict, facts: dict) -> bytes:
        """``params`` in the stored format (the bytes a record's ``bytes`` counts)."""
        return checkpoint.params_to_npz_bytes(params, self.storage_dtype, tuple(facts["float32_layers"]))

    def svd_sensitivity(
        self, fractions=None, layers=None, on_progress=None, compute=True, basis="weights", on_row=None
    ):
        """The per-layer SVD sensitivity table, cached (:func:`lowrank_core.tables.svd_table`)."""
        return tables.svd_table(self, fractions, layers, on_progress, compute, basis, on_row)

    def sensitivity(self, method: str, grid, layers=None, on_progress=None) -> list[dict]:
        """One layer compressed at a time over ``grid`` (:func:`lowrank_core.tables.one_layer_at_a_time`)."""
        return tables.one_layer_at_a_time(self, method, grid, layers, on_progress)
