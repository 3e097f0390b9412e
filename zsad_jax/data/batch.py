"""The batch: one layout from the data pipeline to the compiled functions.

A *host* batch (numpy, this process's rows; what `TrainLoader`, `eval_batches` and the feature
cache's loader yield) has

    images:     {view: (b, S, S, 3) float32}   normalized for that view (absent from the cache)
    features:   pytree of (b, ...) arrays        cached frozen features (feature cache only)
    masks:      (b, M, M) float32 in {0, 1}      M = method.mask_size
    labels:     (b,) int32                       0 normal / 1 anomalous
    class_name: (b,) str                         the record's class ("" when unknown)
    + evaluation only: valid (b,) bool, image_path, mask_path (b,) str, native_size (b, 2) int32

The *device* batch (`Batch`) is what `method.prepare_batch(host_batch)` returns: the array keys
the compiled step sees. The base contract keeps `DEVICE_KEYS`; a method adds its own keys there
(e.g. prompt token ids made from `class_name`) and nowhere else. `zsad_jax.devices.to_device` is
the one path from a host batch to a sharded device batch.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

# Keys of a host batch that the compiled functions may see (strings never reach a device).
DEVICE_KEYS = ("images", "features", "masks", "labels")


class Batch(TypedDict, total=False):
    """A device batch (leading axis = the global batch, sharded over the mesh)."""

    images: dict[str, Any]      # {view: (B, S, S, 3)}
    features: Any               # cached frozen features (training from the feature cache)
    masks: Any                  # (B, M, M) float32
    labels: Any                 # (B,) int32


def dummy_host_batch(views, mask_size: int, batch_size: int, with_images: bool = True) -> dict:
    """Zero arrays in the host batch layout, for shapes only (abstract evaluation, benchmarks)."""
    batch = {"masks": np.zeros((batch_size, mask_size, mask_size), np.float32),
             "labels": np.zeros((batch_size,), np.int32),
             "class_name": np.array([""] * batch_size)}
    if with_images:
        batch["images"] = {name: np.zeros((batch_size, v.size, v.size, 3), np.float32)
                           for name, v in views.items()}
    return batch
