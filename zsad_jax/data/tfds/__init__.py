"""TFDS builders for every dataset (optional extra `tfds`; imports tensorflow_datasets).

    from zsad_jax.data import tfds as zsad_tfds
    zsad_tfds.prepare("mvtec", manual_dir="/data/mvtec", data_dir="gs://bucket/tfds")
    records = zsad_tfds.records("mvtec", "test", data_dir="gs://bucket/tfds")
    loader = data.TrainLoader(records, views, mask_size, 8, seed=0)   # the same grain pipeline

The builders wrap the same readers (`load_index`) and store the original encoded image and mask
files, so decoding and binarization are exactly those of the folder pipeline. The builder module
(and tensorflow_datasets) is imported on first use of a name below, so that
`python -m zsad_jax.data.tfds --help` works without the extra.
"""

from __future__ import annotations

import importlib

__all__ = ["EncodedRecord", "TfdsRecords", "ZsadAnomaly", "ZsadAnomalyConfig", "prepare",
           "records"]

INSTALL_HINT = "the TFDS builders need the `tfds` extra: pip install -e '.[tfds]'"


def builder_module():
    """zsad_jax.data.tfds.builder; ImportError with the install command without the extra."""
    try:
        return importlib.import_module("zsad_jax.data.tfds.builder")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("tensorflow_datasets", "tensorflow", "etils"):
            raise ImportError(f"{INSTALL_HINT} ({e.name} is not installed)") from None
        raise


def __getattr__(name: str):
    if name in __all__:
        return getattr(builder_module(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
