"""Index-time checks: every image and mask decodes, masks match their image's size, ids are unique.

Run by `load_index` before training starts, so a bad file fails in seconds with its name instead of
hours into a run. Decoding runs in a thread pool (PIL releases the GIL while decoding).

With check="decode" masks are binarized as training binarizes them (`images.load_mask`), and an
anomalous image whose mask has no positive pixel is logged as a warning naming the mask (such a
pair teaches "normal" at every pixel). With check="header" masks are not decoded, so that warning
is not given.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import warnings
from collections.abc import Sequence

from zsad_jax.data import images
from zsad_jax.data.records import DatasetError, Record, check_unique

log = logging.getLogger(__name__)

CHECKS = ("decode", "header")
_MAX_LISTED = 10


@dataclasses.dataclass(frozen=True)
class Probe:
    """What reading one file found.

    size: (H, W), or None when the file is missing or unreadable (`problem` says why).
    empty: for a mask decoded with check="decode", whether it has no positive pixel; else None.
    """

    size: tuple[int, int] | None
    problem: str = ""
    empty: bool | None = None


def _probe(path: str, check: str, mask_of: str | None) -> Probe:
    """Reads `path` (a mask of dataset `mask_of`, or an image when None) as `check` asks."""
    if not os.path.isfile(path):
        return Probe(None, "file does not exist")
    try:
        if check == "header":
            return Probe(images.image_size(path))
        if mask_of is not None:
            mask = images.load_mask(path, mask_of)
            return Probe(mask.shape, empty=not mask.any())
        return Probe(images.verify_image(path))
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return Probe(None, f"cannot be decoded ({type(e).__name__}: {e})")


def probe_files(image_paths: Sequence[str], mask_paths: Sequence[str], check: str, dataset: str,
                num_threads: int | None = None) -> dict[str, Probe]:
    """{path: Probe} for every image and mask path, read in a thread pool.

    check: "decode" (whole files; masks binarized by `dataset`'s convention) or "header".
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: use one of {CHECKS}")
    jobs = {p: None for p in image_paths} | {p: dataset for p in mask_paths}
    workers = num_threads or min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        found = pool.map(lambda item: _probe(item[0], check, item[1]), jobs.items())
        return dict(zip(jobs, found, strict=True))


def listing(problems: Sequence[str], limit: int | None = _MAX_LISTED) -> str:
    """Problems as indented lines, the first `limit` of them (None: all) and a count of the rest."""
    shown = list(problems if limit is None else problems[:limit])
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return "\n  " + "\n  ".join(shown) + more


def size_mismatch(mask_path: str, mask_hw: tuple[int, int], image_path: str,
                  image_hw: tuple[int, int]) -> str:
    return (f"{mask_path}: mask is {mask_hw[0]}x{mask_hw[1]} (HxW) but its image {image_path} is "
            f"{image_hw[0]}x{image_hw[1]}")


def validate(records: list[Record], dataset: str, *, skip_unreadable: bool = False,
             check: str = "decode", num_threads: int | None = None) -> list[Record]:
    """Returns `records` (minus unreadable images if `skip_unreadable`) or raises DatasetError.

    check: "decode" decodes every file fully (catches truncated files; warns about all-zero masks
    of anomalous images); "header" reads only the headers (fast; sizes and formats are still
    checked, mask contents are not).
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: use one of {CHECKS}")
    check_unique(records, dataset)
    results = probe_files([r.image_path for r in records],
                          [r.mask_path for r in records if r.mask_path], check, dataset,
                          num_threads)

    bad_images = [r for r in records if results[r.image_path].size is None]
    bad_masks = [f"{r.mask_path}: {results[r.mask_path].problem} (mask of {r.image_path})"
                 for r in records if r.mask_path and results[r.mask_path].size is None]
    if bad_masks:
        raise DatasetError(f"[{dataset}] {len(bad_masks)} unreadable mask(s):{listing(bad_masks)}")
    size_errors = [size_mismatch(r.mask_path, results[r.mask_path].size, r.image_path,
                                 results[r.image_path].size)
                   for r in records if r.mask_path and results[r.image_path].size is not None
                   and results[r.image_path].size != results[r.mask_path].size]
    if size_errors:
        raise DatasetError(f"[{dataset}] {len(size_errors)} mask(s) whose size differs from their "
                           f"image:{listing(size_errors)}")
    if bad_images:
        listed = [f"{r.image_path}: {results[r.image_path].problem}" for r in bad_images]
        if not skip_unreadable:
            raise DatasetError(
                f"[{dataset}] {len(bad_images)} unreadable image(s):{listing(listed)}\n"
                f"Fix or remove them, or set skip_unreadable=True "
                f"(config.data.skip_unreadable) to skip them with a warning.")
        warnings.warn(f"[{dataset}] skipped {len(bad_images)} unreadable image(s) of "
                      f"{len(records)}:{listing(listed)}", stacklevel=3)
        dropped = {r.image_path for r in bad_images}
        records = [r for r in records if r.image_path not in dropped]
    empty = [f"{r.mask_path} (mask of {r.image_path})" for r in records
             if r.label == 1 and r.mask_path and results[r.mask_path].empty]
    if empty:
        log.warning("[%s] %d anomalous image(s) have an all-zero mask (no defect pixel after "
                    "binarization; check the mask files):%s", dataset, len(empty),
                    listing(empty, None))
    return records
