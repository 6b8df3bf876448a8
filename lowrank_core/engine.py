"""Builds, measures and caches compressed variants of one checkpoint.

A result is cached as JSON under ``artifacts/cache/<checkpoint>/results/``,
keyed by a hash of (checkpoint content, method, full config, method code
version). Each file carries a hash of its own payload; a file that fails that
check (a crash mid-write, a disk error) is recomputed, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import threading
from typing import Any, Callable, Mapping

import numpy as np

from lowrank_core import checkpoint, compress, measure, model, paths
from lowrank_core.data import Cifar10
from lowrank_core.errors import ConfigError
from lowrank_core.fileio import atomic_write_bytes, atomic_write_json
from lowrank_core.finetune import FinetuneConfig, finetune_dense
from lowrank_core.finetune import gradual_prune_dense as finetune_dense_gradual

METHODS = ("baseline", "svd", "prune", "remove", "quantize", "dead_units")
# Bump a method's version when its code changes what it computes (v3: latency on the chunked-convolution path).
METHOD_VERSIONS = {"baseline": 3, "svd": 3, "prune": 3, "remove": 3, "quantize": 3, "dead_units": 2}


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    pass


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    pass


@dataclasses.dataclass(frozen=True)
class DeadUnitsConfig:
    pass


@dataclasses.dataclass(frozen=True)
class RemoveConfig:
    layers: tuple[str, ...] = ("linear_1",)
    retrain_steps: int = 300

    def __post_init__(self):
        if not self.layers:
            raise ConfigError("name at least one hidden layer to remove")
        for name in self.layers:
            if name not in model.HIDDEN_LAYERS:
                raise ConfigError(f"cannot remove {name!r}; removable layers are {', '.join(model.HIDDEN_LAYERS)}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError("each layer may be removed once")
        if self.retrain_steps < 0:
            raise ConfigError("retrain_steps must be ≥ 0")


CONFIG_TYPES = {"baseline": BaselineConfig, "svd": compress.SvdConfig, "prune": compress.PruneConfig,
                "remove": RemoveConfig, "quantize": QuantizeConfig, "dead_units": DeadUnitsConfig}


def config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(method: str, values: Mapping) -> Any:
    """The frozen config of ``method`` from its JSON form (lists back to tuples)."""
    def as_tuple(v):
        return tuple(as_tuple(x) for x in v) if isinstance(v, list) else v

    return CONFIG_TYPES[method](**{k: as_tuple(v) for k, v in values.items()})


def result_key(checkpoint_hash: str, method: str, config, finetune: FinetuneConfig | None) -> str:
    blob = json.dumps({"checkpoint": checkpoint_hash, "method": method, "config": config_dict(config),
                       "finetune": config_dict(finetune) if finetune else None,
                       "version": METHOD_VERSIONS[method]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _payload_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Engine:
    """One checkpoint, one dataset: variants on demand, results cached on disk.

    Expensive intermediates (thin SVDs of the dense layers, the convolutions'
    output on the test and training sets) are computed once per engine.
    """

    def __init__(self, checkpoint_dir: str | os.PathLike, data: Cifar10, cache_root: pathlib.Path | None = None):
        self.checkpoint_dir = pathlib.Path(checkpoint_dir)
        self.params, self.metadata = checkpoint.load(self.checkpoint_dir)
        self.data = data
        digest = hashlib.sha256((self.checkpoint_dir / checkpoint.PARAMS_FILE).read_bytes())
        digest.update(data.sha256.encode())
        self.checkpoint_hash = digest.hexdigest()[:16]
        self.cache_dir = (cache_root or paths.artifacts_dir() / "cache") / self.checkpoint_hash
        self._lock = threading.Lock()
        self._svds: dict[str, compress.LayerSvd] | None = None
        self._conv_features: dict[str, np.ndarray] = {}
        self._init_s: dict[str, np.ndarray] | None = None
        # Set when the cache cannot be written (read-only folder, full disk):
        # results are still returned, kept in memory, and the UI says so.
        self.write_problem: str | None = None
        self._memory: dict[str, dict] = {}
        self._key_locks: dict[str, threading.Lock] = {}

    # ---- shared intermediates ----

    @property
    def svds(self) -> dict[str, compress.LayerSvd]:
        with self._lock:
            if self._svds is None:
                self._svds = self._load_or_compute_svds()
            return self._svds

    def _load_or_compute_svds(self) -> dict[str, compress.LayerSvd]:
        path = self.cache_dir / "svd.npz"
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {n: compress.LayerSvd(npz[f"{n}/u"], npz[f"{n}/s"], npz[f"{n}/vt"]) for n in model.DENSE_LAYERS}
        except Exception:
            pass
        svds = {n: compress.layer_svd(self.params[n]["w"]) for n in model.DENSE_LAYERS}
        buffer = io.BytesIO()
        np.savez(buffer, **{f"{n}/{k}": getattr(svd, k) for n, svd in svds.items() for k in ("u", "s", "vt")})
        try:
            atomic_write_bytes(path, buffer.getvalue())
        except OSError as exc:
            self._note_write_failure(exc)
        return svds

    def init_singular_values(self) -> dict[str, np.ndarray]:
        """Singular values of each dense layer at its random initialization
        (the checkpoint's seed), to show what training put into the spectrum."""
        with self._lock:
            if self._init_s is None:
                import jax

                path = self.cache_dir / "init_singular_values.npz"
                try:
                    with np.load(path, allow_pickle=False) as npz:
                        self._init_s = {n: npz[n] for n in model.DENSE_LAYERS}
                        return self._init_s
                except Exception:
                    pass
                seed = int(self.metadata.get("config", {}).get("seed", 42))
                init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
                init = model.init_params(init_key)
                self._init_s = {n: np.linalg.svd(np.asarray(init[n]["w"], np.float64), compute_uv=False)
                                for n in model.DENSE_LAYERS}
                buffer = io.BytesIO()
                np.savez(buffer, **self._init_s)
                try:
                    atomic_write_bytes(path, buffer.getvalue())
                except OSError as exc:
                    self._note_write_failure(exc)
            return self._init_s

    def spectra(self) -> dict[str, dict]:
        """Per dense layer: curves and summary stats, trained and at initialization."""
        init = self.init_singular_values()
        out = {}
        for name, svd in self.svds.items():
            out[name] = {"trained": compress.spectrum_curves(svd.s), "init": compress.spectrum_curves(init[name]),
                         "stats": compress.spectrum_stats(svd.s), "init_stats": compress.spectrum_stats(init[name]),
                         "shape": tuple(self.params[name]["w"].shape)}
        return out

    def _features(self, split: str) -> np.ndarray:
        # The convolutions never change in a dense-only variant: run them once per split.
        with self._lock:
            if split not in self._conv_features:
                self._conv_features[split] = measure.conv_features(self.params, getattr(self.data, f"x_{split}"))
            return self._conv_features[split]

    @property
    def test_features(self) -> np.ndarray:
        return self._features("test")

    @property
    def train_features(self) -> np.ndarray:
        return self._features("train")

    # ---- variants ----

    def build(self, method: str, config, finetune: FinetuneConfig | None = None,
              on_progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict]:
        """(params of the variant, facts about it such as ranks or changed layers)."""
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        facts: dict[str, Any] = {}
        masks = None
        if method == "baseline":
            params = compress._copy(self.params)
        elif method == "svd":
            params = compress.svd_compress(self.params, config, self.svds)
            facts["ranks"] = compress.choose_ranks(config, self.svds)
            facts["break_even_ranks"] = {n: compress.break_even_rank(*self.params[n]["w"].shape) for n in config.layers}
        elif method == "dead_units":
            params = compress.drop_dead_units(self.params)
            facts["widths"] = {n: int(params[n]["w"].shape[1]) for n in model.dense_layer_names(params)}
        elif method == "prune" and config.schedule == "gradual":
            # Frozen convolutions are pruned at once; the dense stack on the cubic schedule.
            conv_only = dataclasses.replace(config, only=tuple(n for n in config.layers if n in model.CONV_LAYERS))
            params = compress.prune_unstructured(self.params, conv_only) if conv_only.only else compress._copy(self.params)
            dense_config = dataclasses.replace(config, only=tuple(n for n in config.layers if n in model.DENSE_LAYERS))
            if dense_config.only:
                dense, masks = finetune_dense_gradual(measure.dense_params(params), self.train_features,
                                                      self.data.y_train, FinetuneConfig(steps=config.gradual_steps),
                                                      dense_config, on_progress=on_progress)
                params.update(dense)
            facts["sparsity"] = compress.sparsity_of(params)
        elif method == "prune":
            if config.structured:
                params = compress.prune_structured(self.params, config)
            else:
                masks = compress.magnitude_masks(self.params, config)
                params = compress.prune_unstructured(self.params, config)
            facts["sparsity"] = compress.sparsity_of(params)
        elif method == "quantize":
            params = compress.quantize_dense(self.params)
        else:  # remove
            params, changed = compress.remove_layers(self.params, config.layers)
            facts["reinitialized_layers"] = list(changed)
            # Every layer after a cut sees new inputs, so the whole dense head is
            # retrained over the frozen convolutions (the seed's option A).
            if config.retrain_steps:
                dense = finetune_dense(measure.dense_params(params), self.train_features, self.data.y_train,
                                       FinetuneConfig(steps=config.retrain_steps), on_progress=on_progress)
                params.update(dense)
        if finetune is not None and finetune.steps:
            if method == "prune" and not config.structured:
                masks = {k: v for k, v in (masks or {}).items() if k in model.DENSE_LAYERS}
            dense = finetune_dense(measure.dense_params(params), self.train_features, self.data.y_train,
                                   finetune, masks=masks, on_progress=on_progress)
            params.update(dense)
        return params, facts

    def evaluate(self, method: str, config=None, *, finetune: FinetuneConfig | None = None,
                 with_latency: bool = True, use_cache: bool = True,
                 on_progress: Callable[[int, int], None] | None = None, with_layer_latency: bool = False) -> dict:
        """Measures a variant (cached): accuracy on every test image, size, latency."""
        config = config if config is not None else CONFIG_TYPES[method]()
        key = result_key(self.checkpoint_hash, method, config, finetune)
        if use_cache and (hit := self._lookup(key, with_latency, with_layer_latency)) is not None:
            return hit
        # Sessions asking for the same variant at once (browser tabs) compute it once:
        # the second waits for the first and then reads its result.
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if use_cache and (hit := self._lookup(key, with_latency, with_layer_latency)) is not None:
                return hit
            return self._measure(method, config, finetune, key, with_latency, with_layer_latency, on_progress)

    def _measure(self, method, config, finetune, key, with_latency, with_layer_latency, on_progress) -> dict:
        params, facts = self.build(method, config, finetune, on_progress)
        if measure.same_convolutions(params, self.params):
            predictions = measure.predict_from_features(params, self.test_features)
        else:
            predictions = measure.predict_full(params, self.data.x_test)
        baseline_bytes = measure.stored_bytes(self.params)
        stored = measure.stored_bytes(params, int8_dense=(method == "quantize"))
        result = {
            "method": method,
            "config": config_dict(config),
            "finetune": config_dict(finetune) if finetune else None,
            "checkpoint": self.checkpoint_hash,
            "accuracy": float(np.mean(predictions == self.data.y_test)),
            "n_test": int(self.data.y_test.shape[0]),
            "params": measure.count_params(params),
            "nonzero_params": int(sum(np.count_nonzero(v) for ps in params.values() for v in ps.values())),
            "macs": measure.macs_per_image(params),
            "bytes": stored,
            "compression_ratio": baseline_bytes / stored,
            "facts": facts,
        }
        if with_latency:
            lat = measure.latency(params, self.data.x_test)
            result["latency"] = lat
            result["latency_ms"] = lat[str(measure.EVAL_BATCH)]["median_ms"]
            result["batch_size"] = measure.EVAL_BATCH
            result["latency_batch1_ms"] = lat["1"]["median_ms"]
            if with_layer_latency:  # a few seconds more: the CLI asks for it, the app on demand
                result["layer_latency_ms"] = measure.layer_latency(params, self.data.x_test)
        if not self._write_result(self._result_path(key), result):
            self._memory[key] = result  # unwritable cache: keep it for this session
        return result

    def cached_result(self, method: str, config=None, finetune: FinetuneConfig | None = None,
                      with_latency: bool = False) -> dict | None:
        """The cached result of a variant, or None if it was never measured (nothing is computed)."""
        config = config if config is not None else CONFIG_TYPES[method]()
        return self._lookup(result_key(self.checkpoint_hash, method, config, finetune), with_latency)

    def _lookup(self, key: str, with_latency: bool, with_layer_latency: bool = False) -> dict | None:
        """The stored result under ``key`` (memory, then disk) if it holds what is asked for."""
        cached = self._memory.get(key) or self._read_result(self._result_path(key))
        if (cached is not None and (cached.get("latency") or not with_latency)
                and (cached.get("layer_latency_ms") or not with_layer_latency)):
            return cached
        return None

    def clear_results(self) -> int:
        """Deletes this checkpoint's cached results; returns how many files went."""
        removed = len(self._memory)
        self._memory.clear()
        for path in (self.cache_dir / "results").glob("*.json"):
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def variant_npz(self, result: dict) -> bytes:
        """The parameters of a measured variant as ``.npz`` bytes (rebuilt from its config)."""
        method = result["method"]
        config = config_from_dict(method, result["config"])
        finetune = FinetuneConfig(**result["finetune"]) if result.get("finetune") else None
        params, _ = self.build(method, config, finetune)
        return checkpoint.params_to_npz_bytes(params)

    def _result_path(self, key: str) -> pathlib.Path:
        return self.cache_dir / "results" / f"{key}.json"

    def _note_write_failure(self, exc: OSError) -> None:
        self.write_problem = f"cannot write the cache under {self.cache_dir} ({exc.strerror or exc}); working from memory"

    def _read_result(self, path: pathlib.Path) -> dict | None:
        try:
            stored = json.loads(path.read_text())
            payload = stored["payload"]
            if _payload_hash(payload) != stored["sha256"]:
                return None
            return payload
        except Exception:
            return None  # missing, truncated or corrupt: recompute

    def _write_result(self, path: pathlib.Path, payload: dict) -> bool:
        try:
            atomic_write_json(path, {"sha256": _payload_hash(payload), "payload": payload})
            return True
        except OSError as exc:
            self._note_write_failure(exc)
            return False

    def sensitivity(self, method: str, grid: list[float], layers: tuple[str, ...] | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Compresses one layer at a time over ``grid`` (rank fractions for
        "svd", sparsities for "prune"), everything else intact: rows of
        (layer, value, accuracy). Accuracy only; each point is cached."""
        if method == "svd":
            layers = layers or model.DENSE_LAYERS
            configs = [(n, v, compress.SvdConfig(rank_fraction=v, only=(n,))) for n in layers for v in grid]
        elif method == "prune":
            layers = layers or compress.PRUNABLE
            configs = [(n, v, compress.PruneConfig(sparsity=v, only=(n,))) for n in layers for v in grid]
        else:
            raise ConfigError("the sensitivity sweep covers 'svd' and 'prune'")
        rows = []
        for i, (name, value, config) in enumerate(configs):
            result = self.evaluate(method, config, with_latency=False)
            rows.append({"layer": name, "value": value, "accuracy": result["accuracy"]})
            if on_progress:
                on_progress(i + 1, len(configs))
        return rows

    def cached_results(self) -> list[dict]:
        """Every valid cached result of this checkpoint (for Pareto charts)."""
        found = {}
        for path in sorted((self.cache_dir / "results").glob("*.json")):
            result = self._read_result(path)
            if result is not None:
                found[path.stem] = result
        found.update(self._memory)  # results that could not be written still count
        return list(found.values())
