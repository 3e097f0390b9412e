"""Command line: check a dataset folder, or write the synthetic dataset.

    python -m zsad_jax.data check mvtec /data/mvtec [--split test] [--classes bottle cable]
    python -m zsad_jax.data check clinicdb /data/clinicdb --layout meta_json   # read its meta.json
    python -m zsad_jax.data synthetic /tmp/synthetic [--seed 0]
    python -m zsad_jax.data list

`check` indexes the folder with every check `load_index` runs before training and prints, per
class, the number of normal and anomalous images and of masks, after the layout it read (native
or meta.json); a problem is printed as one error naming the file, with exit status 1.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from zsad_jax.data.records import DatasetError


def summary(records) -> str:
    """A markdown table: class, normal, anomalous, with mask."""
    counts = collections.defaultdict(lambda: [0, 0, 0])
    for r in records:
        row = counts[r.class_name]
        row[r.label] += 1
        row[2] += bool(r.mask_path)
    lines = ["| class | normal | anomalous | with mask |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {n} | {a} | {m} |" for name, (n, a, m) in counts.items()]
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    lines.append(f"| **all** | {totals[0]} | {totals[1]} | {totals[2]} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from zsad_jax import data

    parser = argparse.ArgumentParser(prog="python -m zsad_jax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="index and check a dataset folder")
    check.add_argument("name", choices=sorted(data.DATASETS))
    check.add_argument("root")
    check.add_argument("--split", default="test")
    check.add_argument("--classes", nargs="*")
    check.add_argument("--skip_unreadable", action="store_true")
    check.add_argument("--header_only", action="store_true", help="read headers, do not decode")
    check.add_argument("--layout", default="auto", choices=data.registry.LAYOUTS,
                       help="native: as distributed; meta_json: <root>/meta.json; auto: native "
                            "when found, else meta.json")
    synth = sub.add_parser("synthetic", help="write the synthetic dataset")
    synth.add_argument("root")
    synth.add_argument("--seed", type=int, default=0)
    sub.add_parser("list", help="list the known datasets")
    args = parser.parse_args(argv)

    if args.command == "list":
        for info in data.DATASETS.values():
            print(f"{info.name:10s} {info.title}: {info.description}")
        return 0
    if args.command == "synthetic":
        print(data.make_synthetic(args.root, seed=args.seed))
        return 0
    try:
        records = data.load_index(args.name, args.root, split=args.split, classes=args.classes,
                                  skip_unreadable=args.skip_unreadable,
                                  check="header" if args.header_only else "decode",
                                  layout=args.layout)
        layout = data.registry.choose_layout(data.DATASETS[args.name], Path(args.root).expanduser(),
                                             args.layout)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"layout: {layout}\n")
    print(summary(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
