"""The grain input pipeline: decoding + per-view resizing, training and evaluation iterators
(host batches in the layout of `zsad_jax.data.batch`; `zsad_jax.devices` puts them on devices).

Training order: for epoch e, a permutation of all N records from (seed, e) is cut into
`steps_per_epoch = N // global_batch_size` global batches (the remainder is dropped); process p
takes rows [p*b, (p+1)*b) of every global batch (b = global / process_count). So processes read
disjoint shares, every process sees every class, and together they cover each epoch exactly once.
(grain's IndexSampler shards records contiguously before shuffling, so a host would only ever see
the classes of its contiguous chunk of an index sorted by class; hence the sampling here.)
The chain is a grain `MapDataset` (source -> map -> batch) turned into an `IterDataset` with
threaded prefetch, or worker processes (`num_workers > 0`, `mp_prefetch`); its iterator state
(a small JSON-able dict) is what checkpoints save.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from zsad_jax.data import images
from zsad_jax.data.records import Record

_MAX_EPOCHS = 10**9


@functools.lru_cache(maxsize=4)
def epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
    """The record order of `epoch`: a permutation of range(num_records) from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_records)


def _file(path: str, blob: bytes):
    return io.BytesIO(blob) if blob else path


class Preprocess:
    """Record -> example: images {view: (S, S, 3) f32 normalized}, masks (M, M) f32, labels, ...

    Decodes each image once; resizes once per distinct view size (bicubic); normalizes per view.
    """

    def __init__(self, views: Mapping, mask_size: int, mask_interpolation: str = "bilinear",
                 host_keys: bool = False):
        self.views = {name: (int(v.size), np.asarray(v.mean, np.float32),
                             np.asarray(v.std, np.float32)) for name, v in views.items()}
        self.mask_size = int(mask_size)
        self.mask_interpolation = mask_interpolation
        self.host_keys = host_keys
        images.resize_mask(np.zeros((2, 2), bool), 1, mask_interpolation)  # validates the name

    def __call__(self, record: Record) -> dict:
        try:  # EncodedRecords (TFDS) carry the file bytes; plain Records a path
            image = images.open_rgb(_file(record.image_path, getattr(record, "image_bytes", b"")))
            mask = (images.load_mask(_file(record.mask_path, getattr(record, "mask_bytes", b"")),
                                     record.dataset) if record.mask_path else None)
        except Exception as e:
            raise OSError(f"[{record.dataset}] cannot read {record.image_path} "
                          f"(mask {record.mask_path}): {type(e).__name__}: {e}") from e
        if isinstance(image, np.ndarray):
            native = image.shape[:2]
        else:
            native = (image.size[1], image.size[0])
        resized = {size: images.resize_rgb(image, size) for size, _, _ in self.views.values()}
        example = {
            "images": {name: (resized[size] - mean) / std
                       for name, (size, mean, std) in self.views.items()},
            "masks": (images.resize_mask(mask, self.mask_size, self.mask_interpolation)
                      if mask is not None else np.zeros((self.mask_size,) * 2, np.float32)),
            "labels": np.int32(record.label),
            "class_name": np.str_(record.class_name),
        }
        if self.host_keys:
            example.update(valid=np.bool_(True), image_path=np.str_(record.image_path),
                           mask_path=np.str_(record.mask_path or ""),
                           native_size=np.asarray(native, np.int32))
        return example

    def padding(self, train: bool = False) -> dict:
        """A batch-filling example (valid=False) with the structure of an example of this
        preprocess (host keys, `train`: the training layout + valid)."""
        out = {
            "images": {name: np.zeros((size, size, 3), np.float32)
                       for name, (size, _, _) in self.views.items()},
            "masks": np.zeros((self.mask_size,) * 2, np.float32),
            "labels": np.int32(0), "class_name": np.str_(""), "valid": np.bool_(False),
        }
        if self.host_keys and not train:
            out.update(image_path=np.str_(""), mask_path=np.str_(""),
                       native_size=np.zeros((2,), np.int32))
        return out


class _TrainExample:
    """Stream position i -> the example of (epoch, step, row) for this process.

    Every step has `host_batch` slots; the last step of an epoch, when the remainder is kept
    (`drop_last=False`), fills only its share of the remainder and pads the rest (valid=False).
    """

    def __init__(self, records, preprocess, seed, steps_per_epoch, global_batch, host_batch,
                 process_index, process_count):
        self.records = records if isinstance(records, Sequence) else list(records)  # TFDS: lazy
        self.preprocess = preprocess
        self.seed = seed
        self.per_epoch = steps_per_epoch * host_batch
        self.global_batch, self.host_batch = global_batch, host_batch
        self.process_index, self.process_count = process_index, process_count

    def record_index(self, i: int) -> int:
        """The record of stream position i, or -1 for a padding slot."""
        epoch, j = divmod(int(i), self.per_epoch)
        step, row = divmod(j, self.host_batch)
        size = min(self.global_batch, len(self.records) - step * self.global_batch)
        share = size // self.process_count
        if row >= share:
            return -1
        position = step * self.global_batch + self.process_index * share + row
        return int(epoch_permutation(len(self.records), self.seed, epoch)[position])

    def __call__(self, i: int) -> dict:
        index = self.record_index(i)
        if index < 0:
            return {**self.preprocess.padding(train=True)}
        return {**self.preprocess(self.records[index]), "valid": np.bool_(True)}


def _tree_rows(tree, rows: np.ndarray):
    if isinstance(tree, Mapping):
        return {k: _tree_rows(v, rows) for k, v in tree.items()}
    return np.asarray(tree)[rows]


def _tree_copy(tree):
    if isinstance(tree, Mapping):
        return {k: _tree_copy(v) for k, v in tree.items()}
    return np.array(tree)


def _read_options(prefetch: int):
    import grain

    return grain.ReadOptions(num_threads=max(1, prefetch), prefetch_buffer_size=max(1, prefetch))


class TrainLoader:
    """Infinite iterator of this process's training batches (see module docstring for the order).

    Each batch: images {view: (b, S, S, 3) f32 normalized}, masks (b, M, M) f32 in {0, 1},
    labels (b,) int32, class_name (b,) str; b = global_batch_size // process_count, except, with
    `drop_last=False`, the last step of each epoch, which holds this process's share of the
    remaining N mod global_batch_size records (PyTorch's DataLoader(drop_last=False)); the
    remainder must then be a multiple of `process_count` (and, to be sharded, of the devices).
    `get_state()` / `set_state()` save and restore the position exactly.
    """

    def __init__(self, records: Sequence[Record], views: Mapping, mask_size: int,
                 global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, num_workers: int = 0, prefetch: int = 2,
                 mask_interpolation: str = "bilinear", drop_last: bool = True):
        import grain

        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple "
                             f"of process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} not in [0, {process_count})")
        if len(records) < global_batch_size:
            raise ValueError(f"{len(records)} training records are fewer than one global batch "
                             f"({global_batch_size}); lower config.data.batch_size")
        self.num_records = len(records)
        self.global_batch_size = global_batch_size
        self.host_batch_size = global_batch_size // process_count
        self.remainder = 0 if drop_last else len(records) % global_batch_size
        if self.remainder % process_count:
            raise ValueError(f"the last batch of {self.remainder} records (config.data.drop_last="
                             f"False) is not a multiple of process_count={process_count}")
        self.steps_per_epoch = len(records) // global_batch_size + bool(self.remainder)
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.drop_last = drop_last
        self._example = _TrainExample(records, Preprocess(views, mask_size, mask_interpolation),
                                      seed, self.steps_per_epoch, global_batch_size,
                                      self.host_batch_size, process_index, process_count)
        dataset = (grain.MapDataset.range(self._example.per_epoch * _MAX_EPOCHS)
                   .map(self._example)
                   .batch(self.host_batch_size, drop_remainder=True))
        stream = dataset.to_iter_dataset(_read_options(prefetch))
        if num_workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (library use)
                flags.FLAGS.mark_as_parsed()
            stream = stream.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=num_workers, per_worker_buffer_size=max(1, prefetch)))
        self._stream = stream
        self._num_workers = num_workers
        self._iterator = None

    def _it(self):
        if self._iterator is None:
            self._iterator = iter(self._stream)
        return self._iterator

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch = next(self._it())
        if self._num_workers > 0:  # own copies: grain's shared-memory arrays unlink on deletion
            batch = _tree_copy(batch)
        valid = batch.pop("valid")
        if not valid.all():        # the kept remainder of an epoch: its padding slots go
            batch = _tree_rows(batch, valid)
        return batch

    def close(self) -> None:
        """Stops prefetch threads / worker processes (also done by `with TrainLoader(...)`)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _identity(self) -> dict:
        return dict(num_records=self.num_records, global_batch_size=self.global_batch_size,
                    seed=self.seed, process_index=self.process_index,
                    process_count=self.process_count, drop_last=self.drop_last)

    def get_state(self) -> dict:
        """JSON-able position of this iterator (grain iterator state + what it depends on)."""
        return dict(self._identity(), grain=self._it().get_state())

    def set_state(self, state: Mapping) -> None:
        """Resumes at a position saved by `get_state` of a loader with the same arguments."""
        state = dict(state)
        grain_state = state.pop("grain")
        if state != self._identity():
            raise ValueError(f"loader state was saved by a different loader: {state} vs "
                             f"{self._identity()}")
        self._it().set_state(grain_state)


def eval_batches(records: Sequence[Record], views: Mapping, mask_size: int, batch_size: int,
                 process_index: int = 0, process_count: int = 1,
                 mask_interpolation: str = "bilinear", prefetch: int = 2) -> Iterator[dict]:
    """Ordered evaluation batches of this process, each record exactly once over all processes.

    `batch_size` is global; each process gets batch_size // process_count rows per batch and all
    processes get the same number of batches. Global batch k holds records [k*B, (k+1)*B), process p
    rows [p*b, (p+1)*b) of it; the last batch is padded. Besides the device keys each batch has
    valid (b,) bool, image_path, class_name, mask_path ("" if none) (b,) str and native_size (b, 2)
    int32 (H, W of the original image); native-resolution masks: `load_mask(mask_path)`.
    """
    import grain

    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                         f"process_count={process_count}")
    host_batch = batch_size // process_count
    num_batches = math.ceil(len(records) / batch_size)
    preprocess = Preprocess(views, mask_size, mask_interpolation, host_keys=True)
    records = records if isinstance(records, Sequence) else list(records)
    element = _EvalExample(records, preprocess, batch_size, host_batch, process_index)
    dataset = (grain.MapDataset.range(num_batches * host_batch).map(element)
               .batch(host_batch, drop_remainder=True))
    yield from dataset.to_iter_dataset(_read_options(prefetch))


class _EvalExample:
    def __init__(self, records, preprocess, global_batch, host_batch, process_index):
        self.records, self.preprocess = records, preprocess
        self.global_batch, self.host_batch = global_batch, host_batch
        self.process_index = process_index

    def __call__(self, i: int) -> dict:
        step, row = divmod(int(i), self.host_batch)
        position = step * self.global_batch + self.process_index * self.host_batch + row
        if position >= len(self.records):
            return self.preprocess.padding()
        return self.preprocess(self.records[position])
