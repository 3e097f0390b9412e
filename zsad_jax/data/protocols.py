"""Cross-dataset zero-shot protocols, as data: which splits train, which evaluate.

The auxiliary training data of zero-shot anomaly detection is the *test* split of another dataset
(it has masks). Which trained model evaluates which target differs by paper, so each method's
config picks its paper's protocols:

* AnomalyCLIP, SGNet: MVTec-trained -> VisA and every other dataset (`mvtec_to_all`);
  VisA-trained -> MVTec-AD only (`visa_to_mvtec`);
* SSVP: MVTec-trained -> VisA only (`mvtec_to_visa`); VisA-trained -> MVTec-AD, BTAD, KSDD2, RSDD,
  DAGM, DTD-Synthetic (`visa_to_industrial`);
* VisualAD: MVTec -> VisA (`mvtec_to_visa`), VisA -> MVTec-AD and the others (`visa_to_all`).

SSVP's text says "training sets" of the auxiliary dataset; the protocols here follow the
published code (test split), see docs/datasets.md.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

from zsad_jax.data import registry, synthetic
from zsad_jax.data.records import DatasetError, Record


@dataclasses.dataclass(frozen=True)
class Source:
    """One dataset split; `classes=None` means all of its classes."""

    dataset: str
    split: str = "test"
    classes: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Protocol:
    """`train` sources are concatenated; each `eval` source is evaluated separately (required);
    `eval_optional` sources are evaluated when their root exists (a log line names the others)."""

    name: str
    description: str
    train: tuple[Source, ...]
    eval: tuple[Source, ...]
    eval_optional: tuple[Source, ...] = ()


SYNTHETIC_TRAIN_CLASSES = ("brick", "gravel", "tissue")
SYNTHETIC_EVAL_CLASSES = ("grass", "moon")
_OTHERS = ("mpdd", "btad", "ksdd2", "dagm", "dtd", "rsdd", "sdd", "brainmri", "br35h", "headct",
           "clinicdb", "colondb", "kvasir", "isic")

# The SSVP paper's VisA-trained targets (Sec. 4.1, Table 1).
_SSVP_VISA_TARGETS = ("btad", "ksdd2", "rsdd", "dagm", "dtd")

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in [
    Protocol("visa_to_mvtec", "train on VisA test (all 12 classes); evaluate on MVTec-AD test",
             train=(Source("visa"),), eval=(Source("mvtec"),)),
    Protocol("mvtec_to_visa", "train on MVTec-AD test (all 15 classes); evaluate on VisA test",
             train=(Source("mvtec"),), eval=(Source("visa"),)),
    Protocol("mvtec_to_all", "train on MVTec-AD test; evaluate on VisA test, plus every other "
             "dataset whose root exists (AnomalyCLIP, SGNet)",
             train=(Source("mvtec"),), eval=(Source("visa"),),
             eval_optional=tuple(Source(n) for n in _OTHERS)),
    Protocol("visa_to_all", "train on VisA test; evaluate on MVTec-AD test, plus every other "
             "dataset whose root exists (VisualAD)",
             train=(Source("visa"),), eval=(Source("mvtec"),),
             eval_optional=tuple(Source(n) for n in _OTHERS)),
    Protocol("visa_to_industrial", "train on VisA test; evaluate on MVTec-AD test, plus BTAD, "
             "KSDD2, RSDD, DAGM and DTD-Synthetic where their roots exist (SSVP)",
             train=(Source("visa"),), eval=(Source("mvtec"),),
             eval_optional=tuple(Source(n) for n in _SSVP_VISA_TARGETS)),
    Protocol("synthetic", "train on synthetic classes " + ", ".join(SYNTHETIC_TRAIN_CLASSES)
             + "; evaluate on the held-out " + ", ".join(SYNTHETIC_EVAL_CLASSES),
             train=(Source("synthetic", classes=SYNTHETIC_TRAIN_CLASSES),),
             eval=(Source("synthetic", classes=SYNTHETIC_EVAL_CLASSES),)),
]}


def dataset_root(config, name: str, workdir) -> pathlib.Path:
    """`config.data.roots.<name>` if set, else `<data_dir>/<name>` (synthetic: `<workdir>/synthetic`)."""
    roots = config.data.get("roots", {}) or {}
    explicit = roots.get(name, "") if hasattr(roots, "get") else ""
    if explicit:
        return pathlib.Path(explicit).expanduser()
    if name == "synthetic":
        return pathlib.Path(workdir) / "synthetic"
    return pathlib.Path(config.data.data_dir).expanduser() / name


def _missing_root_error(name: str, root: pathlib.Path, config) -> DatasetError:
    info = registry.dataset_info(name)
    return DatasetError(
        f"dataset {name!r} ({info.title}) not found: looked in {root} "
        f"(config.data.roots.{name}, else config.data.data_dir={config.data.data_dir!r} + "
        f"'/{name}'). Expected layout: {info.layout}. To prepare it: {info.prepare}; then set "
        f"--config.data.data_dir=<folder holding {name}/> or --config.data.roots.{name}=<path>.")


def _ensure_synthetic(root: pathlib.Path, seed: int) -> None:
    spec = synthetic.synthetic_spec(seed)  # make_synthetic's defaults
    if not synthetic.is_complete(root, spec):
        logging.info("generating the synthetic dataset (seed %d) in %s", seed, root)
        synthetic.make_synthetic(root, seed=seed)


def _load(source: Source, config, workdir) -> list[Record]:
    root = dataset_root(config, source.dataset, workdir)
    if source.dataset == "synthetic":
        _ensure_synthetic(root, int(config.data.get("synthetic_seed", 0)))
    if not root.is_dir():
        raise _missing_root_error(source.dataset, root, config)
    return registry.load_index(source.dataset, root, split=source.split, classes=source.classes,
                               skip_unreadable=bool(config.data.get("skip_unreadable", False)),
                               check=config.data.get("index_check", "decode"),
                               layout=config.data.get("layouts", {}).get(source.dataset, "auto"))


def load_dataset(config, name: str, workdir, split: str = "test",
                 classes: tuple[str, ...] | None = None, root=None) -> list[Record]:
    """Records of one dataset split as `config` finds it (`dataset_root`, or `root` when given),
    read with the config's layout / index-check / skip settings; DatasetError when missing."""
    if root is not None:
        config = config.copy_and_resolve_references()
        config.data.roots[name] = str(root)
    return _load(Source(name, split, tuple(classes) if classes else None), config, workdir)


def check_no_leak(train: list[Record], evals: dict[str, list[Record]]) -> None:
    """No evaluation image, and no evaluation class of the same dataset, is in the training set."""
    train_paths = {pathlib.Path(r.image_path).resolve() for r in train}
    train_classes = {(r.dataset, r.class_name) for r in train}
    for name, records in evals.items():
        leaked = [r.image_path for r in records if pathlib.Path(r.image_path).resolve()
                  in train_paths]
        if leaked:
            raise DatasetError(f"leak: {len(leaked)} image(s) of evaluation set {name!r} are also "
                               f"training images, e.g. {leaked[0]}")
        classes = sorted({r.class_name for r in records if (r.dataset, r.class_name)
                          in train_classes})
        if classes:
            raise DatasetError(f"leak: class(es) {classes} of evaluation set {name!r} are also "
                               f"training classes of the same dataset")


def resolve_protocol(config, workdir) -> tuple[list[Record], dict[str, list[Record]]]:
    """(train records, {eval dataset name: records}) for `config.data.protocol`.

    Reads config.data.protocol / data_dir / roots.<name> / synthetic_seed / skip_unreadable /
    index_check.
    "synthetic" is generated under <workdir>/synthetic if absent. Raises DatasetError for a
    missing root (naming the dataset, where it looked, the layout and how to prepare it) and for
    any leak of evaluation images or classes into training.
    """
    name = config.data.protocol
    if name not in PROTOCOLS:
        raise DatasetError(f"config.data.protocol={name!r} is not a protocol; known: "
                           f"{', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    train = [r for source in protocol.train for r in _load(source, config, workdir)]
    evals: dict[str, list[Record]] = {}
    for source in protocol.eval:
        evals.setdefault(source.dataset, []).extend(_load(source, config, workdir))
    skipped = []
    for source in protocol.eval_optional:
        if dataset_root(config, source.dataset, workdir).is_dir():
            evals.setdefault(source.dataset, []).extend(_load(source, config, workdir))
        else:
            skipped.append(source.dataset)
    if skipped:
        logging.warning("protocol %s: optional evaluation datasets not found and not evaluated: "
                        "%s (see docs/datasets.md to add them)", name, ", ".join(skipped))
    check_no_leak(train, evals)
    return train, evals
