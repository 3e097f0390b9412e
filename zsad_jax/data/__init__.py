"""Datasets: readers (records), protocols, synthetic data and the grain input pipeline.

    records = data.load_index("mvtec", root, split="test")        # list[data.Record]
    train, evals = data.resolve_protocol(config, workdir)
    for batch in data.TrainLoader(train, method.views, method.mask_size, 8, seed=0): ...

See docs/datasets.md for every dataset's expected layout. Importing this package never imports
tensorflow (the TFDS builders live in `zsad_jax.data.tfds`) or torch.
"""

from zsad_jax.data.batch import DEVICE_KEYS, Batch, dummy_host_batch
from zsad_jax.data.images import MASK_THRESHOLDS, load_image, load_mask
from zsad_jax.data.pipeline import TrainLoader, eval_batches
from zsad_jax.data.protocols import (
    PROTOCOLS,
    Protocol,
    Source,
    check_no_leak,
    dataset_root,
    load_dataset,
    resolve_protocol,
)
from zsad_jax.data.records import DatasetError, Record
from zsad_jax.data.registry import (
    DATASETS,
    DatasetInfo,
    has_both_labels,
    has_pixel_labels,
    load_index,
)
from zsad_jax.data.synthetic import make_synthetic

__all__ = [
    "Batch", "DATASETS", "DEVICE_KEYS", "MASK_THRESHOLDS", "PROTOCOLS", "DatasetError",
    "DatasetInfo", "Protocol", "Record", "Source", "TrainLoader", "check_no_leak", "dataset_root",
    "dummy_host_batch", "eval_batches", "has_both_labels", "has_pixel_labels", "load_dataset",
    "load_image", "load_index", "load_mask", "make_synthetic", "resolve_protocol",
]
