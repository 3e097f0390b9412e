"""Frozen-feature cache: backbone features computed once, later epochs train from disk.

For methods whose trainable part sits entirely after the frozen backbones
(`method.supports_feature_cache`: SGNet, SSVP, the reference probe), `config.train.feature_cache`
runs `method.frozen_features` once over the training records and stores the result in bf16, with
the training masks and labels, under `<cache_dir>/<key digest>/`:

    meta.json        the full key, record count, per-leaf shape/dtype
    leaf_<i>.npy     (N, ...) features, bf16 stored as its uint16 bit pattern
    masks.npy        (N, M, M) uint8     labels.npy (N,) int32

The key is everything the features depend on: `method.feature_cache_key()` (backbone arch,
weights, resolution, layers), a fingerprint of each converted weights folder, the sha256 of the
frozen parameters actually loaded (so a random-init demo backbone with another seed is another
cache), the views, mask size, compute dtype and the exact record list. A stale cache is never
reused: a different key is a different directory. Writes are atomic (temporary dir, rename).

`CachedLoader` then iterates the cache like `data.TrainLoader` iterates images: a deterministic
shuffle per (seed, epoch), drop remainder, this process's rows of each global batch in the host
batch layout of `zsad_jax.data.batch` (features instead of images), and a `get_state()/set_state()`
position for exact resume. `training_loader` is what the train loop calls: it builds or opens the
cache and returns the loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import ml_dtypes
import numpy as np

from zsad_jax import data, devices
from zsad_jax.backbones import io
from zsad_jax.training import step as step_lib

log = logging.getLogger(__name__)

def records_fingerprint(records: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(f"{r.image_path}|{r.mask_path}|{r.label};".encode())
    return digest.hexdigest()


def cache_key(method, config, frozen_fingerprint: str, records: Sequence[Any]) -> dict:
    """Everything the cached features and targets depend on (see module docstring)."""
    return {
        "method": method.name,
        "features": method.feature_cache_key(),
        "weights": {name: io.folder_fingerprint(bb.weights)
                    for name, bb in config.backbones.items()},
        "frozen_params_sha256": frozen_fingerprint,
        "views": {name: [v.size, list(v.mean), list(v.std)] for name, v in method.views.items()},
        "mask_size": method.mask_size,
        "compute_dtype": config.train.compute_dtype,
        "records_sha256": records_fingerprint(records),
        "num_records": len(records),
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


class FeatureCache:
    """An opened cache directory (read side)."""

    def __init__(self, directory: pathlib.Path, treedef):
        self.directory = directory
        self.meta = json.loads((directory / "meta.json").read_text())
        self.treedef = treedef
        self.leaves = [np.load(directory / f"leaf_{i}.npy", mmap_mode="r")
                       for i in range(len(self.meta["leaves"]))]
        self.masks = np.load(directory / "masks.npy", mmap_mode="r")
        self.labels = np.load(directory / "labels.npy", mmap_mode="r")
        self.dtypes = tuple(np.dtype(leaf["dtype"]) for leaf in self.meta["leaves"])

    def __len__(self) -> int:
        return int(self.meta["num_records"])

    def rows(self, index: np.ndarray) -> dict:
        """Host batch of the given record rows: features (bf16), masks (f32), labels (int32).

        The rows are read from the memory maps in ascending order (each row is one contiguous
        block; ascending reads let the OS read ahead) and put back in the order of `index`.
        """
        index = np.asarray(index, np.int64)
        order = np.argsort(index, kind="stable")
        ascending, back = index[order], np.argsort(order, kind="stable")
        read = lambda array: np.asarray(array[ascending])[back]
        feats = [read(leaf).view(ml_dtypes.bfloat16) if meta["stored"] == "bfloat16"
                 else read(leaf)
                 for leaf, meta in zip(self.leaves, self.meta["leaves"], strict=True)]
        return {"features": jax.tree_util.tree_unflatten(self.treedef, feats),
                "masks": read(self.masks).astype(np.float32),
                "labels": read(self.labels).astype(np.int32)}


def build_or_open(cache_root: pathlib.Path, key: dict, records: Sequence[Any],
                  batches: Callable[[], Any], extract: Callable[[dict], Any],
                  gather: Callable[[Any], Any], feature_shapes) -> FeatureCache:
    """Opens the cache for `key`, computing it first if absent.

    batches(): iterator of padded host eval batches (`data.eval_batches` layout: images, masks,
    labels, valid, image_path) of this process; extract(host_batch) -> global features;
    gather(tree) -> numpy arrays of all processes' rows (identity on one process);
    feature_shapes: `jax.eval_shape` of the features of one example batch (for the tree layout).
    """
    leaves_abstract, treedef = jax.tree_util.tree_flatten(feature_shapes)
    directory = pathlib.Path(cache_root) / key_digest(key)
    if (directory / "meta.json").exists():
        saved = json.loads((directory / "meta.json").read_text())
        if saved["key"] != key:     # a digest collision: never reuse
            raise RuntimeError(f"feature cache {directory} has another key; delete it")
        log.info("Feature cache hit: %s", directory)
        return FeatureCache(directory, treedef)

    log.info("Building the feature cache in %s (%d records)", directory, len(records))
    index_of = {r.image_path: i for i, r in enumerate(records)}
    num = len(records)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{jax.process_index()}"
    tmp.mkdir(parents=True, exist_ok=True)
    leaf_meta, leaf_files = [], []
    for i, abstract in enumerate(leaves_abstract):
        floating = np.issubdtype(abstract.dtype, np.floating)
        stored = "bfloat16" if floating else str(abstract.dtype)
        leaf_meta.append({"shape": list(abstract.shape[1:]), "dtype": str(abstract.dtype),
                          "stored": stored})
        leaf_files.append(np.lib.format.open_memmap(
            tmp / f"leaf_{i}.npy", mode="w+", dtype=np.uint16 if floating else abstract.dtype,
            shape=(num, *abstract.shape[1:])))
    masks = None
    labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.int32, shape=(num,))
    seen = np.zeros(num, bool)
    for host_batch in batches():
        rows = np.asarray([index_of.get(p, -1) if v else -1
                           for p, v in zip(host_batch["image_path"], host_batch["valid"],
                                           strict=True)], np.int64)
        features = extract(host_batch)
        all_rows, all_masks, all_labels, all_feats = gather(
            (rows, np.asarray(host_batch["masks"]), np.asarray(host_batch["labels"]), features))
        all_rows = np.asarray(all_rows).reshape(-1)
        keep = all_rows >= 0
        target = all_rows[keep]
        if masks is None:
            masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8,
                                              shape=(num, *np.asarray(all_masks).shape[1:]))
        masks[target] = (np.asarray(all_masks)[keep] > 0.5).astype(np.uint8)
        labels[target] = np.asarray(all_labels)[keep]
        for out, value, meta in zip(leaf_files, jax.tree_util.tree_leaves(all_feats), leaf_meta,
                                    strict=True):
            value = np.asarray(value)[keep]
            if meta["stored"] == "bfloat16":
                value = value.astype(ml_dtypes.bfloat16).view(np.uint16)
            out[target] = value
        seen[target] = True
    if not seen.all():
        missing = [records[i].image_path for i in np.flatnonzero(~seen)[:5]]
        raise RuntimeError(f"feature cache: {int((~seen).sum())} training records were not "
                           f"delivered by the data pipeline, e.g. {missing}")
    for array in [*leaf_files, masks, labels]:
        array.flush()
    del leaf_files, masks, labels
    (tmp / "meta.json").write_text(json.dumps(
        {"key": key, "num_records": num, "leaves": leaf_meta}, indent=2))
    try:
        tmp.rename(directory)
    except OSError:                 # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
    return FeatureCache(directory, treedef)


class CachedLoader:
    """Infinite iterator of this process's host batches from a `FeatureCache`.

    Same contract as `data.TrainLoader`: shuffle from (seed, epoch), the remainder dropped or kept
    as a smaller last batch (`drop_last`),
    `steps_per_epoch`, `get_state()` / `set_state()`. With `prefetch` (default) the next batch is
    read on a background thread while the current step runs; the batches and the state are the
    same either way.
    """

    def __init__(self, cache: FeatureCache, global_batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1,
                 class_names: Sequence[str] | None = None, prefetch: bool = True,
                 drop_last: bool = True):
        if global_batch_size % process_count:
            raise ValueError(f"batch size {global_batch_size} not divisible by {process_count} "
                             f"processes")
        self.cache = cache
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.process_index, self.process_count = process_index, process_count
        self.remainder = 0 if drop_last else len(cache) % global_batch_size
        if self.remainder % process_count:
            raise ValueError(f"the last batch of {self.remainder} records (config.data.drop_last="
                             f"False) is not a multiple of process_count={process_count}")
        self.steps_per_epoch = len(cache) // global_batch_size + bool(self.remainder)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(cache)} cached records are fewer than one batch of "
                             f"{global_batch_size}")
        self.class_names = None if class_names is None else np.asarray(class_names, dtype=str)
        if self.class_names is not None and len(self.class_names) != len(cache):
            raise ValueError(f"{len(self.class_names)} class names for {len(cache)} cached records")
        self.position = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="feature-cache") if prefetch else None
        self._ahead: tuple[int, Future] | None = None     # (position, its batch being read)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])
        self._ahead = None

    def __iter__(self):
        return self

    def batch_at(self, position: int) -> dict:
        """This process's host batch number `position` (0-based, counting across epochs)."""
        epoch, step = divmod(position, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.cache))
        rows = order[step * self.global_batch_size:(step + 1) * self.global_batch_size]
        share = len(rows) // self.process_count
        mine = rows[self.process_index * share:(self.process_index + 1) * share]
        batch = self.cache.rows(mine)
        if self.class_names is not None:
            batch["class_name"] = self.class_names[mine]
        return batch

    def __next__(self) -> dict:
        position = self.position
        if self._ahead is not None and self._ahead[0] == position:
            batch = self._ahead[1].result()
        else:
            batch = self.batch_at(position)
        self.position += 1
        self._ahead = (None if self._pool is None else
                       (self.position, self._pool.submit(self.batch_at, self.position)))
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead = None


def training_loader(method, config, workdir: pathlib.Path, records: Sequence[Any], trainable: dict,
                    frozen: dict, layout, mesh, frozen_fingerprint: str):
    """(CachedLoader over the training records, abstract features of one batch, feature dtypes):
    the frozen features are computed once (sharded over `mesh`, in batches of
    config.data.eval_batch_size) or read from the cache under `config.train.cache_dir`."""
    feature_fn = step_lib.make_feature_fn(method, layout, mesh)
    batch_size = int(config.data.batch_size)
    dummy = devices.to_device(method, data.dummy_host_batch(method.views, method.mask_size,
                                                            batch_size), mesh)
    feature_shapes = jax.eval_shape(feature_fn, trainable, frozen, dummy)
    cache_root = pathlib.Path(config.train.cache_dir or workdir / "feature_cache")
    key = cache_key(method, config, frozen_fingerprint, records)
    process_index, process_count = jax.process_index(), jax.process_count()

    def extract(host_batch):
        return feature_fn(trainable, frozen, devices.to_device(method, host_batch, mesh))

    def gather(tree):
        if process_count == 1:
            return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)

    # Extraction batches: eval_batch_size rounded up to a multiple of the device count.
    extract_batch = devices.global_batch_size(config.data.eval_batch_size, mesh)

    def batches():
        return data.eval_batches(records, method.views, method.mask_size, extract_batch,
                                 process_index=process_index, process_count=process_count)

    cache = build_or_open(cache_root, key, records, batches, extract, gather, feature_shapes)
    loader = CachedLoader(cache, batch_size, config.seed, process_index, process_count,
                          class_names=[r.class_name for r in records],
                          drop_last=config.data.drop_last)
    return loader, feature_shapes, cache.dtypes
