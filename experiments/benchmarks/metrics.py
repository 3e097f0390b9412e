"""Speed + exactness of zsad_jax.metrics on an MVTec-AD-sized synthetic test set.

    python experiments/benchmarks/metrics.py                  # 15 classes, 1,725 maps at 518x518
    python experiments/benchmarks/metrics.py --size 128       # quick look
    python experiments/benchmarks/metrics.py --reference_classes 3   # reference on 3 classes

Per class (the MVTec AD test-set counts: 1,725 images, 1,258 anomalous), anomaly maps are
upsampled 37x37 noise (like a ViT patch grid) plus a signal on 1-3 random elliptic defects.
Three timings, all in this run on the same data:

1. zsad_jax.metrics.evaluate: all seven metrics per class;
2. a scikit-learn + scipy reference: roc_auc_score, average_precision_score,
   precision_recall_curve (F1-max) on images and pixels, and AUPRO as the official MVTec code
   computes it (argsort of all pixels, scipy 8-connected labels, cumulative sums);
3. a 200-threshold PRO loop as the reference repos run it (threshold grid, re-label every mask
   at every threshold), on the first class (or `--loop_images` of its images), compared with
   zsad_jax's AUPRO on the same maps (its value differs: it is an approximation).

Prints a markdown report (append it to docs/benchmarks.md) and the largest |difference| between
zsad_jax and the reference over all classes and metrics.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage

from zsad_jax import metrics

# MVTec AD test set: class -> (images, anomalous images).
MVTEC_TEST = {
    "bottle": (83, 63), "cable": (150, 92), "capsule": (132, 109), "carpet": (117, 89),
    "grid": (78, 57), "hazelnut": (110, 70), "leather": (124, 92), "metal_nut": (115, 93),
    "pill": (167, 141), "screw": (160, 119), "tile": (117, 84), "toothbrush": (42, 30),
    "transistor": (100, 40), "wood": (79, 60), "zipper": (151, 119),
}


def synthetic_class(num_images: int, num_anomalous: int, size: int, seed: int):
    """(maps (N, S, S) f32, masks (N, S, S) bool, image scores (N,), labels (N,))."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((num_images, size, size), bool)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(num_anomalous):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
            ry, rx = rng.uniform(0.01, 0.12, 2) * size
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    grid = rng.random((num_images, 37, 37)).astype(np.float32)
    maps = ndimage.zoom(grid, (1, size / 37, size / 37), order=1).astype(np.float32)
    maps *= 0.6
    maps += 0.4 * ndimage.uniform_filter(masks.astype(np.float32), (1, 9, 9))
    labels = np.zeros(num_images, np.int64)
    labels[:num_anomalous] = 1
    scores = maps.reshape(num_images, -1).max(1) + rng.normal(0, 0.05, num_images)
    return maps, masks, scores, labels


def reference_metrics(scores, labels, maps, masks, fpr_limit=0.3):
    """scikit-learn + the official MVTec AUPRO algorithm written plainly with numpy/scipy."""
    from sklearn import metrics as skm

    def f1_max(y, s):
        precision, recall, _ = skm.precision_recall_curve(y, s)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
        return float(np.max(f1))

    flat_maps, flat_masks = maps.ravel(), masks.ravel()
    out = {"image_auroc": skm.roc_auc_score(labels, scores),
           "image_ap": skm.average_precision_score(labels, scores),
           "image_f1_max": f1_max(labels, scores),
           "pixel_auroc": skm.roc_auc_score(flat_masks, flat_maps),
           "pixel_ap": skm.average_precision_score(flat_masks, flat_maps),
           "pixel_f1_max": f1_max(flat_masks, flat_maps)}
    # AUPRO (official algorithm): per-pixel FPR / PRO increments, one argsort, cumsums.
    fp_step = np.zeros(maps.shape, np.float64)
    pro_step = np.zeros(maps.shape, np.float64)
    num_regions = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        num_regions += count
        fp_step[i] = labelled == 0
        sizes = np.bincount(labelled.ravel())
        pro_step[i] = np.where(labelled > 0, 1.0 / sizes[labelled], 0.0)
    order = np.argsort(flat_maps)[::-1]
    sorted_scores = flat_maps[order]
    fpr = np.cumsum(fp_step.ravel()[order]) / fp_step.sum()
    pro = np.cumsum(pro_step.ravel()[order]) / num_regions
    keep = np.append(np.diff(sorted_scores) != 0, True)
    fpr = np.concatenate([[0.0], fpr[keep]])
    pro = np.concatenate([[0.0], pro[keep]])
    k = np.searchsorted(fpr, fpr_limit, side="right")
    x, y = list(fpr[:k]), list(pro[:k])
    if x[-1] < fpr_limit:
        x.append(fpr_limit)
        y.append(np.interp(fpr_limit, fpr, pro))
    out["pixel_aupro"] = float(np.trapezoid(y, x) / fpr_limit)
    return {k: float(v) for k, v in out.items()}


def threshold_loop_pro(maps, masks, num_thresholds=200, fpr_limit=0.3):
    """The slow approximation as the reference repos run it (AnomalyCLIP's `cal_pro_score`,
    after cflow-ad): a grid of thresholds over [min, max); at each, binarize every map in place,
    re-label every mask and take each region's overlap from its pixel coordinates, recompute the
    inverse masks and the FPR over them; keep FPR < limit, min-max rescale the kept FPRs, AUC."""
    from skimage import measure
    from sklearn.metrics import auc

    masks = masks.astype(np.float32)            # the reference receives float masks
    binary = np.zeros_like(maps, dtype=bool)
    lo, hi = float(maps.min()), float(maps.max())
    pros, fprs = [], []
    for threshold in np.arange(lo, hi, (hi - lo) / num_thresholds):
        binary[maps <= threshold] = False
        binary[maps > threshold] = True
        region_overlaps = []
        for binary_map, mask in zip(binary, masks, strict=True):
            for region in measure.regionprops(measure.label(mask)):
                rows, cols = region.coords[:, 0], region.coords[:, 1]
                region_overlaps.append(binary_map[rows, cols].sum() / region.area)
        inverse_masks = 1 - masks
        fprs.append(np.logical_and(inverse_masks, binary).sum() / inverse_masks.sum())
        pros.append(np.mean(region_overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    kept = fprs[keep]
    kept = (kept - kept.min()) / max(kept.max() - kept.min(), 1e-12)
    return float(auc(kept, pros[keep]))


class Timer:
    """Accumulates wall-clock and process CPU seconds (CPU time is robust to a shared machine)."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.last = ""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu
        self.wall += wall
        self.cpu += cpu
        self.last_wall, self.last_cpu = wall, cpu
        self.last = f"{wall:6.2f} s wall {cpu:6.2f} s CPU"
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=518, help="map side in pixels")
    parser.add_argument("--classes", type=int, default=15, help="how many MVTec classes")
    parser.add_argument("--no_reference", action="store_true", help="skip sklearn + scipy")
    parser.add_argument("--reference_classes", type=int, default=0,
                        help="run the (slow) sklearn + scipy reference on the first this many "
                             "classes only (0 = all); the speed-up is over those classes")
    parser.add_argument("--loop_images", type=int, default=0,
                        help="images of the first class for the 200-threshold PRO loop "
                             "(0 = the whole class)")
    args = parser.parse_args()

    names = list(MVTEC_TEST)[:args.classes]
    ours, ref, ours_on_ref = Timer(), Timer(), Timer()
    num_ref = len(names) if args.reference_classes <= 0 else min(args.reference_classes,
                                                                   len(names))
    ref_images = 0
    worst = 0.0
    total_images = 0
    per_class_ours = {}
    for seed, name in enumerate(names):
        n, n_anomalous = MVTEC_TEST[name]
        maps, masks, scores, labels = synthetic_class(n, n_anomalous, args.size, seed)
        total_images += n
        with ours:
            values = metrics.evaluate(scores, labels, maps, masks)
        per_class_ours[name] = values
        line = f"{name:12s} {n:4d} images  zsad_jax {ours.last}"
        if not args.no_reference and seed < num_ref:
            ref_images += n
            ours_on_ref.wall += ours.last_wall
            ours_on_ref.cpu += ours.last_cpu
            with ref:
                expected = reference_metrics(scores, labels, maps, masks)
            diff = max(abs(values[k] - expected[k]) for k in expected)
            worst = max(worst, diff)
            line += f"  reference {ref.last}  max |diff| {diff:.1e}"
        print(line, flush=True)
    mean = metrics.mean_over_classes(per_class_ours)

    maps, masks, _, _ = synthetic_class(*MVTEC_TEST[names[0]], args.size, 0)
    if args.loop_images > 0:
        maps, masks = maps[:args.loop_images], masks[:args.loop_images]
    # zsad_jax's AUPRO: 7 calls (the first included), median and slowest; the loop: one call.
    exact_walls, exact_cpus = [], []
    for _ in range(7):
        exact_timer = Timer()
        with exact_timer:
            exact = metrics.aupro(maps, masks)
        exact_walls.append(exact_timer.wall)
        exact_cpus.append(exact_timer.cpu)
    exact_wall, exact_cpu = float(np.median(exact_walls)), float(np.median(exact_cpus))
    loop_timer = Timer()
    with loop_timer:
        loop = threshold_loop_pro(maps, masks)

    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"| {len(names)} classes, {total_images} maps at {args.size}x{args.size} "
          "| wall s | CPU s |")
    print("|---|---:|---:|")
    print(f"| zsad_jax.metrics (all 7 metrics, all classes) | {ours.wall:.1f} | {ours.cpu:.1f} |")
    if not args.no_reference:
        subset = f"first {num_ref} classes, {ref_images} maps"
        print(f"| zsad_jax.metrics on the reference's classes ({subset}) "
              f"| {ours_on_ref.wall:.1f} | {ours_on_ref.cpu:.1f} |")
        print(f"| scikit-learn + scipy reference ({subset}) | {ref.wall:.1f} | {ref.cpu:.1f} |")
        print(f"| speed-up vs reference | {ref.wall / ours_on_ref.wall:.1f}x "
              f"| {ref.cpu / ours_on_ref.cpu:.1f}x |")
        print(f"| max abs difference to the reference, all metrics ({subset}) "
              f"| {worst:.1e} | |")
    print(f"| AUPRO of {len(maps)} maps: zsad_jax.metrics.aupro (median of 7) "
          f"| {exact_wall:.3f} | {exact_cpu:.3f} |")
    print(f"| AUPRO of {len(maps)} maps: zsad_jax.metrics.aupro (slowest of 7) "
          f"| {max(exact_walls):.3f} | {max(exact_cpus):.3f} |")
    print(f"| AUPRO of {len(maps)} maps: 200-threshold loop | {loop_timer.wall:.1f} "
          f"| {loop_timer.cpu:.1f} |")
    print(f"| speed-up vs threshold loop (median; slowest) "
          f"| {loop_timer.wall / exact_wall:.0f}x; {loop_timer.wall / max(exact_walls):.0f}x "
          f"| {loop_timer.cpu / exact_cpu:.0f}x; {loop_timer.cpu / max(exact_cpus):.0f}x |")
    print(f"\nAUPRO exact {exact:.4f} vs 200-threshold loop {loop:.4f} (an approximation)")
    print("mean over classes:", {k: round(v, 4) for k, v in mean.items() if v is not None})

if __name__ == "__main__":
    main()
