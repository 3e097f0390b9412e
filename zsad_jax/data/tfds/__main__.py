"""Prepare ArrayRecord files for a dataset (needs the `tfds` extra).

    python -m zsad_jax.data.tfds mvtec --manual_dir /data/mvtec --data_dir gs://bucket/tfds
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from zsad_jax.data import DATASETS
    from zsad_jax.data.tfds import builder_module

    parser = argparse.ArgumentParser(prog="python -m zsad_jax.data.tfds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("--manual_dir", required=True, help="the dataset's root as downloaded")
    parser.add_argument("--data_dir", required=True, help="where the TFDS files are written")
    parser.add_argument("--classes", nargs="*", help="a subset of classes (default: all)")
    args = parser.parse_args(argv)
    try:
        builder = builder_module()
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prepared = builder.prepare(args.name, args.manual_dir, args.data_dir, args.classes)
    print(f"prepared {prepared.info.full_name} in {args.data_dir}: "
          + ", ".join(f"{s} {v.num_examples}" for s, v in prepared.info.splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
