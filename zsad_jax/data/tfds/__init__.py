"""TFDS builders for every dataset (optional extra `tfds`; imports tensorflow_datasets).

    from zsad_jax.data import tfds as zsad_tfds
    zsad_tfds.prepare("mvtec", manual_dir="/data/mvtec", data_dir="gs://bucket/tfds")
    records = zsad_tfds.records("mvtec", "test", data_dir="gs://bucket/tfds")
    loader = data.TrainLoader(records, views, mask_size, 8, seed=0)   # the same grain pipeline

The builders wrap the same readers (`load_index`) and store the original encoded image and mask
files, so decoding and binarization are exactly those of the folder pipeline.
"""

from zsad_jax.data.tfds.builder import (
    EncodedRecord,
    TfdsRecords,
    ZsadAnomaly,
    ZsadAnomalyConfig,
    prepare,
    records,
)

__all__ = ["EncodedRecord", "TfdsRecords", "ZsadAnomaly", "ZsadAnomalyConfig", "prepare",
           "records"]
