"""Throughput of the data pipeline: index checks and training batches (SSVP-style two views).

    python experiments/benchmarks/data_pipeline.py                        # 1024 px images
    python experiments/benchmarks/data_pipeline.py --image_size 256 --steps 5   # quick look

Writes a synthetic dataset with MVTec-sized images (PNG, `--image_size` px, 70 images), then times
`load_index` (check="decode" and "header") and `TrainLoader` batches of 8 with a CLIP view at 518
and a DINOv3 view at 592 plus 518 masks, for each `--workers` setting. Prints a markdown section
for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from zsad_jax import data
from zsad_jax.backbones import ImageView

VIEWS = {"clip": ImageView(518, (0.48145466, 0.4578275, 0.40821073),
                           (0.26862954, 0.26130258, 0.27577711)),
         "dinov3": ImageView(592, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    lines = [f"## Data pipeline ({platform.machine()}, {os.cpu_count()} CPUs visible)", "",
             f"`python experiments/benchmarks/data_pipeline.py --image_size {args.image_size} "
             f"--steps {args.steps}`: synthetic PNGs of {args.image_size}x{args.image_size}, "
             f"views CLIP 518 + DINOv3 592, masks 518, batch {args.batch}.", "",
             "| what | time | rate |", "| --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data.make_synthetic(tmp, seed=0, image_size=args.image_size)
        lines.append(f"| make_synthetic | {time.perf_counter() - start:.1f} s | |")
        for check in ("decode", "header"):
            start = time.perf_counter()
            records = data.load_index("synthetic", tmp, check=check)
            seconds = time.perf_counter() - start
            lines.append(f"| load_index check={check} ({len(records)} images) | {seconds:.2f} s | "
                         f"{len(records) / seconds:.0f} images/s |")
        for workers in args.workers:
            with data.TrainLoader(records, VIEWS, 518, args.batch, seed=0,
                                  num_workers=workers, prefetch=2) as loader:
                next(loader)  # start-up (worker processes) not counted
                start = time.perf_counter()
                for _ in range(args.steps):
                    next(loader)
                seconds = time.perf_counter() - start
            lines.append(f"| TrainLoader num_workers={workers} ({args.steps} batches) | "
                         f"{seconds:.2f} s | {args.steps * args.batch / seconds:.1f} images/s |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
