"""`ZsadAnomaly`: one TFDS builder, one BuilderConfig per dataset of `zsad_jax.data.DATASETS`.

`manual_dir` is the dataset's root as downloaded (see MANUAL_DOWNLOAD_INSTRUCTIONS); each split is
indexed with `load_index` (all checks included) and written as ArrayRecord files holding the
original encoded image/mask bytes plus the record fields. `records()` opens a prepared split as a
random-access sequence of records that `TrainLoader` / `eval_batches` read like a folder index.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from zsad_jax.data.records import Record
from zsad_jax.data.registry import DATASETS, load_index


@dataclasses.dataclass(frozen=True)
class EncodedRecord(Record):
    """A Record whose image (and mask) bytes are in memory; paths are relative to the root."""

    image_bytes: bytes = b""
    mask_bytes: bytes = b""


def _instructions() -> str:
    lines = ["Set manual_dir to the dataset's root folder, as downloaded and extracted:"]
    lines += [f"- {info.name} ({info.title}): {info.layout}. {info.prepare}."
              for info in DATASETS.values()]
    return "\n".join(lines)


@dataclasses.dataclass
class ZsadAnomalyConfig(tfds.core.BuilderConfig):
    dataset: str = ""
    classes: tuple[str, ...] | None = None


class ZsadAnomaly(tfds.core.GeneratorBasedBuilder):
    """Anomaly-detection datasets from their manually downloaded folders."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds's own lookup of this path touches `importlib_resources`, which tfds only declares as a
    # dependency for Python < 3.9 (ModuleNotFoundError on 3.11 without it); the file is known.
    code_path = epath.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions()
    BUILDER_CONFIGS = [ZsadAnomalyConfig(name=name, dataset=name, description=info.description)
                       for name, info in DATASETS.items()]

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Tensor(shape=(), dtype=np.object_)
        return self.dataset_info_from_configs(
            description=DATASETS[self.builder_config.dataset].description,
            features=tfds.features.FeaturesDict({
                "image": text, "mask": text, "image_path": text, "mask_path": text,
                "label": tfds.features.Tensor(shape=(), dtype=np.int32),
                "class_name": text, "defect": text,
            }),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):
        root = pathlib.Path(dl_manager.manual_dir)
        info = DATASETS[self.builder_config.dataset]
        splits = [s for s in info.splits  # a folder has a train split only in MVTec layout
                  if not (info.name == "folder" and s == "train" and not _has_train(root))]
        return {split: self._generate_examples(root, split) for split in splits}

    def _generate_examples(self, root: pathlib.Path, split: str):
        records = load_index(self.builder_config.dataset, root, split=split,
                             classes=self.builder_config.classes)
        base = root.resolve()
        for r in records:
            image_rel = str(pathlib.Path(r.image_path).relative_to(base))
            mask_rel = str(pathlib.Path(r.mask_path).relative_to(base)) if r.mask_path else ""
            yield image_rel, {
                "image": pathlib.Path(r.image_path).read_bytes(),
                "mask": pathlib.Path(r.mask_path).read_bytes() if r.mask_path else b"",
                "image_path": image_rel, "mask_path": mask_rel, "label": r.label,
                "class_name": r.class_name, "defect": r.defect,
            }


def _has_train(root: pathlib.Path) -> bool:
    return any((d / "train").is_dir() for d in root.iterdir() if d.is_dir())


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TfdsRecords(Sequence):
    """A prepared split as a random-access sequence of EncodedRecords (grain reads it lazily)."""

    def __init__(self, source, dataset: str):
        self.source, self.dataset = source, dataset

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range ({len(self)} records)")
        ex = self.source[index % len(self)]
        mask_path = _text(ex["mask_path"])
        return EncodedRecord(
            image_path=_text(ex["image_path"]), mask_path=mask_path or None,
            label=int(ex["label"]), class_name=_text(ex["class_name"]),
            defect=_text(ex["defect"]), dataset=self.dataset,
            image_bytes=bytes(ex["image"]), mask_bytes=bytes(ex["mask"]))


def _builder(dataset: str, data_dir, classes=None) -> ZsadAnomaly:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    config = dataset  # a class subset is its own config (and its own prepared files)
    if classes:
        config = ZsadAnomalyConfig(name=f"{dataset}-{'-'.join(classes)}", dataset=dataset,
                                   classes=tuple(classes), version=ZsadAnomaly.VERSION)
    return ZsadAnomaly(config=config, data_dir=str(data_dir), file_format="array_record")


def prepare(dataset: str, manual_dir, data_dir, classes=None) -> ZsadAnomaly:
    """Indexes `manual_dir` (the downloaded root) and writes ArrayRecord files under data_dir."""
    builder = _builder(dataset, data_dir, classes)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def records(dataset: str, split: str, data_dir, classes=None) -> TfdsRecords:
    """A prepared split (`prepare`) as records for `TrainLoader` / `eval_batches`."""
    builder = _builder(dataset, data_dir, classes)
    return TfdsRecords(builder.as_data_source(split=split), dataset)
