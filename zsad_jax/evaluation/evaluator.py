"""The evaluator: built from a config, injected into the train loop, used by the evaluate CLI.

    evaluator = Evaluator(config, mesh, progress=True)
    results = evaluator(method, params, {"mvtec": records}, out_root, checkpoint)
    # -> {dataset: metrics.json content}; files under out_root / f"step_{step}" / dataset

Every result says which parameters produced it (the checkpoint's run directory, kind and step,
the config's sha256, the frozen weights' fingerprints, the dataset root, the date), and the
results of one checkpoint live in their own folder `step_<step>/` (`init/` for untrained
parameters; `step_<step>_<tag>/` for a config other than the run's own, e.g. other eval settings;
or exactly where the caller says, `flat=True`). Results of another checkpoint, or of the same
checkpoint under another config, are never replaced: that is refused unless `overwrite`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence

import jax

from zsad_jax import config_lib
from zsad_jax.backbones import io
from zsad_jax.evaluation import paper_tables
from zsad_jax.evaluation.runner import evaluate_records

log = logging.getLogger(__name__)


class ResultsExistError(FileExistsError):
    """A results folder holds another config's evaluation of the same checkpoint."""


def results_folder(out_root: str | pathlib.Path, checkpoint, tag: str = "") -> pathlib.Path:
    """out_root / "step_<step>[_<tag>]" (or "init[_<tag>]" for untrained parameters)."""
    step = getattr(checkpoint, "step", None)
    name = "init" if step is None else f"step_{int(step)}"
    return pathlib.Path(out_root) / (f"{name}_{tag}" if tag else name)


def dataset_root(records: Sequence) -> str:
    """The folder all of a dataset's images lie under."""
    paths = [r.image_path for r in records]
    return os.path.commonpath(paths) if paths else ""


class Evaluator:
    """Evaluates a method's parameters on named record sets; see the module docstring.

    config: the run's config (its `eval` section and `data.eval_batch_size` are read); mesh: the
    device mesh (default: all devices); paper: {dataset: ({metric: percent}, label)} of the
    paper's tables for the report (default: the rows of `config.eval.paper_table`); tag: the
    suffix of the results folders (a config other than the run's own).
    """

    def __init__(self, config, mesh=None, *, progress: bool = True, overwrite: bool = False,
                 paper: Mapping[str, tuple[dict, str]] | None = None, tag: str = ""):
        self.config = config
        self.tag = tag
        self.mesh = mesh
        self.progress = progress
        self.overwrite = overwrite
        if paper is None and config.eval.get("paper_table"):
            paper = paper_tables.dataset_numbers(config.eval.paper_table)
        self.paper = dict(paper or {})
        self.config_sha256 = config_lib.config_sha256(config)

    def provenance(self, checkpoint, records: Sequence) -> dict:
        return {
            "checkpoint": checkpoint.to_dict() if hasattr(checkpoint, "to_dict") else checkpoint,
            "config_sha256": self.config_sha256,
            "weights": {name: {"folder": bb.weights or "<random init>",
                               "fingerprint": io.folder_fingerprint(bb.weights)}
                        for name, bb in self.config.backbones.items()},
            "dataset_root": dataset_root(records),
            "evaluated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def check_free(self, out_dir: pathlib.Path, checkpoint) -> None:
        """Refuses to replace the results of another checkpoint or another config."""
        existing = out_dir / "metrics.json"
        if self.overwrite or not existing.is_file() or jax.process_index() != 0:
            return
        saved = json.loads(existing.read_text())
        now = checkpoint.to_dict() if hasattr(checkpoint, "to_dict") else checkpoint
        for key, value in (("checkpoint", now), ("config_sha256", self.config_sha256)):
            if saved.get(key) != value:
                raise ResultsExistError(
                    f"{out_dir} holds the results of {key} {saved.get(key)!r}, not {value!r}: "
                    f"give another --out, or --overwrite to replace them")

    def has_results(self, record_sets: Mapping[str, Sequence], out_root, checkpoint) -> bool:
        """Whether every record set of `checkpoint` has its metrics.json under `out_root`."""
        folder = results_folder(out_root, checkpoint, self.tag)
        return all((folder / name / "metrics.json").is_file() for name in record_sets)

    def __call__(self, method, params, record_sets: Mapping[str, Sequence], out_root,
                 checkpoint, flat: bool = False) -> dict[str, dict]:
        """Evaluates every record set into out_root/step_<step>/<name> (flat: out_root/<name>)."""
        folder = pathlib.Path(out_root) if flat else results_folder(out_root, checkpoint, self.tag)
        for name in record_sets:
            self.check_free(folder / name, checkpoint)
        results = {}
        for name, records in record_sets.items():
            paper, label = self.paper.get(name, (None, ""))
            results[name] = evaluate_records(
                method, params, records, self.config, folder / name, name, self.mesh,
                progress=self.progress, provenance=self.provenance(checkpoint, records),
                paper=paper, paper_label=label)
        return results
