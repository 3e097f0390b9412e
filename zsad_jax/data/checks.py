"""Index-time checks: every image and mask decodes, masks match their image's size, ids are unique.

Run by `load_index` before training starts, so a bad file fails in seconds with its name instead of
hours into a run. Decoding runs in a thread pool (PIL releases the GIL while decoding).
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings

from zsad_jax.data import images
from zsad_jax.data.records import DatasetError, Record, check_unique

CHECKS = ("decode", "header")
_MAX_LISTED = 10


def _probe(path: str, check: str) -> tuple[tuple[int, int] | None, str]:
    """((H, W), "") or (None, reason)."""
    if not os.path.isfile(path):
        return None, "file does not exist"
    try:
        if check == "decode":
            return images.verify_image(path), ""
        return images.image_size(path), ""
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return None, f"cannot be decoded ({type(e).__name__}: {e})"


def _listing(problems: list[str]) -> str:
    shown = problems[:_MAX_LISTED]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return "\n  " + "\n  ".join(shown) + more


def validate(records: list[Record], dataset: str, *, skip_unreadable: bool = False,
             check: str = "decode", num_threads: int | None = None) -> list[Record]:
    """Returns `records` (minus unreadable images if `skip_unreadable`) or raises DatasetError.

    check: "decode" decodes every file fully (catches truncated files); "header" reads only the
    headers (fast; sizes and formats are still checked).
    """
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: use one of {CHECKS}")
    check_unique(records, dataset)
    paths = [r.image_path for r in records] + [r.mask_path for r in records if r.mask_path]
    workers = num_threads or min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = dict(zip(paths, pool.map(lambda p: _probe(p, check), paths), strict=True))

    bad_images = [r for r in records if results[r.image_path][0] is None]
    bad_masks = [f"{r.mask_path}: {results[r.mask_path][1]} (mask of {r.image_path})"
                 for r in records if r.mask_path and results[r.mask_path][0] is None]
    if bad_masks:
        raise DatasetError(f"[{dataset}] {len(bad_masks)} unreadable mask(s):{_listing(bad_masks)}")
    size_errors = []
    for r in records:
        if r.mask_path and results[r.image_path][0] is not None:
            image_hw, mask_hw = results[r.image_path][0], results[r.mask_path][0]
            if image_hw != mask_hw:
                size_errors.append(f"{r.mask_path}: mask is {mask_hw[0]}x{mask_hw[1]} (HxW) but "
                                   f"its image {r.image_path} is {image_hw[0]}x{image_hw[1]}")
    if size_errors:
        raise DatasetError(f"[{dataset}] {len(size_errors)} mask(s) whose size differs from their "
                           f"image:{_listing(size_errors)}")
    if bad_images:
        listed = [f"{r.image_path}: {results[r.image_path][1]}" for r in bad_images]
        if not skip_unreadable:
            raise DatasetError(
                f"[{dataset}] {len(bad_images)} unreadable image(s):{_listing(listed)}\n"
                f"Fix or remove them, or set skip_unreadable=True "
                f"(config.data.skip_unreadable) to skip them with a warning.")
        warnings.warn(f"[{dataset}] skipped {len(bad_images)} unreadable image(s) of "
                      f"{len(records)}:{_listing(listed)}", stacklevel=3)
        dropped = {r.image_path for r in bad_images}
        records = [r for r in records if r.image_path not in dropped]
    return records
