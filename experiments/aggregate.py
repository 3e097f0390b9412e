"""Results aggregator: runs' metrics.json files -> markdown tables beside the papers' numbers.

    python -m experiments.aggregate ROOT [--table sgnet.ablation ...] [--out results.md]

ROOT holds run directories (the metrics.json files of each run's last checkpoint,
`ROOT/<run>/eval/step_<N>/<dataset>/metrics.json`, as written by the train and evaluation CLIs;
`ROOT/<run>/experiment.json` names the paper-table row of the run), or grid folders of them (the
runner's `--root`): both are searched. Our metrics
are fractions in [0, 1]; tables show percent with one decimal, the paper's number and the
difference (ours - paper, in points). A metric that could not be computed (null) shows as "n/a";
a number the paper does not report as "-".

Which run fills a cell:
- "datasets" tables (rows are target datasets): the first run (by name) that evaluated the dataset;
- "runs" tables (rows are grid rows, columns are (dataset, metric)): a run whose `row` is the
  table row and that evaluated the column's dataset;
- "classes" tables: the per-class metrics of the first run that evaluated the table's dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from zsad_jax.evaluation import paper_tables

SCALE = 100.0  # fractions in metrics.json -> percent in tables, like the papers


class MetricsFileError(ValueError):
    """A metrics.json that cannot be used."""


@dataclasses.dataclass
class RunMetrics:
    """One run directory's final evaluations."""

    name: str
    row: str
    path: pathlib.Path
    datasets: dict[str, dict[str, Any]]  # dataset -> metrics.json content
    files: dict[str, pathlib.Path] = dataclasses.field(default_factory=dict)  # dataset -> its file


def read_metrics(path: pathlib.Path) -> dict[str, Any]:
    """A metrics.json, checked for the fields the tables read."""
    try:
        content = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise MetricsFileError(f"{path}: cannot read metrics ({e}).") from e
    if not isinstance(content, dict):
        raise MetricsFileError(f"{path}: expected a JSON object, got {type(content).__name__}.")
    for field in ("mean", "classes"):
        if not isinstance(content.get(field), dict):
            raise MetricsFileError(f"{path}: field {field!r} is missing or not an object.")
    for where, metrics in [("mean", content["mean"]),
                           *((f"classes.{c}", m) for c, m in content["classes"].items())]:
        if not isinstance(metrics, dict):
            raise MetricsFileError(f"{path}: {where} is not an object.")
        for metric, value in metrics.items():
            if value is not None and not isinstance(value, int | float):
                raise MetricsFileError(f"{path}: {where}.{metric}={value!r} is not a number or null.")
            if value is not None and not 0.0 <= value <= 1.0:
                raise MetricsFileError(f"{path}: {where}.{metric}={value!r} is outside [0, 1].")
    return content


def _run_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """`root` if it is a run, else the runs among its children and grandchildren (a grid's runs
    under the runner's --root)."""
    def is_run(p: pathlib.Path) -> bool:
        return (p / "eval").is_dir()

    if is_run(root):
        return [root]
    children = sorted(p for p in root.iterdir() if p.is_dir())
    return [p for p in children if is_run(p)] + [
        g for p in children if not is_run(p) for g in sorted(p.iterdir()) if g.is_dir() and is_run(g)]


def collect(root: str | pathlib.Path) -> list[RunMetrics]:
    """Every run under `root` (or `root` itself, if it is a run) with its metrics.json files."""
    from experiments.runner import metrics_files, read_run_info

    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Results directory {root} does not exist.")
    runs = []
    for run_dir in _run_dirs(root):
        files = metrics_files(run_dir)
        if not files:
            continue
        info = read_run_info(run_dir) or {}
        datasets, paths = {}, {}
        for directory, path in files.items():
            content = read_metrics(path)
            datasets[content.get("dataset") or directory] = content
            paths[content.get("dataset") or directory] = pathlib.Path(path)
        runs.append(RunMetrics(info.get("name", run_dir.name), info.get("row") or run_dir.name,
                               run_dir, datasets, paths))
    return runs


# ----------------------------------------------------------------------------------------------
# Cells and tables.
# ----------------------------------------------------------------------------------------------

def _fmt(value: float | None, missing: str) -> str:
    return missing if value is None else f"{value:.1f}"


def _diff(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return "-"
    return f"{round(ours, 1) - paper:+.1f}"


def _ours(metrics: dict[str, Any] | None, metric: str) -> float | None:
    if metrics is None:
        return None
    value = metrics.get(metric)
    return None if value is None else SCALE * float(value)


def _find_dataset(runs: Sequence[RunMetrics], dataset: str) -> RunMetrics | None:
    for run in sorted(runs, key=lambda r: r.name):
        if dataset in run.datasets:
            return run
    return None


def table_cells(table: dict[str, Any], runs: Sequence[RunMetrics],
                dataset_map: Mapping[str, str] | None = None):
    """[(row label, [run names], [(ours, paper, std) per column])] of a paper table.

    dataset_map: paper dataset -> the dataset our runs evaluated in its place (demo runs).
    """
    def ours_name(dataset: str) -> str:
        return (dataset_map or {}).get(dataset, dataset)

    layout = table["rows_are"]
    class_run = _find_dataset(runs, ours_name(table["dataset"])) if layout == "classes" else None
    out = []
    for row in table["rows"]:
        stds = row.get("std") or [None] * len(table["columns"])
        used: list[str] = []
        cells = []
        for column, paper, std in zip(table["columns"], row["values"], stds, strict=True):
            metrics = None
            if layout == "datasets":
                dataset = ours_name(row["key"])
                run = _find_dataset(runs, dataset)
                metrics = run.datasets[dataset]["mean"] if run else None
            elif layout == "runs":
                dataset = ours_name(column["dataset"])
                run = _find_dataset([r for r in runs if r.row == row["key"]], dataset)
                metrics = run.datasets[dataset]["mean"] if run else None
            else:
                run = class_run
                if run is not None:
                    content = run.datasets[ours_name(table["dataset"])]
                    metrics = content["mean"] if row["key"] == "mean" else content["classes"].get(
                        row["key"])
            if run is not None and run.name not in used:
                used.append(run.name)
            cells.append((_ours(metrics, column["metric"]), paper, std))
        out.append((row["label"], used, cells))
    return out


def _settings(runs: Sequence[RunMetrics]) -> str:
    seen = sorted({(str(c.get("resolution", "?")), str(c.get("smoothing_sigma", "?")))
                   for r in runs for c in r.datasets.values()})
    return "; ".join(f"resolution {res}, smoothing sigma {sigma}" for res, sigma in seen) or "none"


def paper_table_markdown(table_id: str, runs: Sequence[RunMetrics],
                         table: dict[str, Any] | None = None,
                         dataset_map: Mapping[str, str] | None = None) -> str:
    """One paper table with our numbers, the paper's and the difference, as markdown."""
    table = table or paper_tables.get(table_id)
    first = {"datasets": "Dataset", "runs": "Setting", "classes": "Class"}[table["rows_are"]]
    header = [first, "Run"]
    for column in table["columns"]:
        header += [f"{column['label']} ours", "paper", "diff"]
    lines = [f"### {table['title']}", "",
             f"Paper: {table.get('paper', '?')}. Source: {table['source']} (table `{table_id}`).", ""]
    if dataset_map:
        stand_ins = ", ".join(f"{ours} for {paper}" for paper, ours in sorted(dataset_map.items()))
        lines += [f"**Demo: our columns are {stand_ins}; do not compare them with the paper.**", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, used, cells in table_cells(table, runs, dataset_map):
        row = [label, ", ".join(used) or "-"]
        for ours, paper, std in cells:
            paper_text = _fmt(paper, "-") + (f" ± {std:.1f}" if std is not None else "")
            row += [_fmt(ours, "n/a"), paper_text, _diff(ours, paper)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Our evaluation: {_settings(runs)}."]
    for note in table.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def all_results_markdown(runs: Sequence[RunMetrics]) -> str:
    """Every run x dataset with the class-mean of every metric (no paper numbers)."""
    header = ["Run", "Dataset", "Images", *paper_tables.METRICS]
    lines = ["### All results (mean over classes, percent)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in sorted(runs, key=lambda r: r.name):
        for dataset, content in sorted(run.datasets.items()):
            values = [_fmt(_ours(content["mean"], m), "n/a") for m in paper_tables.METRICS]
            lines.append("| " + " | ".join([run.name, dataset, str(content.get("num_images", "?")),
                                            *values]) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(root: str | pathlib.Path, table_ids: Sequence[str] = (), title: str = "",
                    dataset_map: Mapping[str, str] | None = None) -> str:
    """The paper tables `table_ids` and the all-results table of the runs under `root`."""
    runs = collect(root)
    parts = [f"# {title or 'Results: ' + str(root)}", ""]
    if not runs:
        parts.append(f"No finished runs under {root} (no run or grid folder whose training "
                     f"finished with eval/step_<N>/*/metrics.json).\n")
    for table_id in table_ids:
        parts.append(paper_table_markdown(table_id, runs, dataset_map=dataset_map))
    if runs:
        parts.append(all_results_markdown(runs))
    return "\n".join(parts)


def write_html_report(out_path: str | pathlib.Path, runs: Sequence[RunMetrics],
                      table_ids: Sequence[str] = (), dataset_map: Mapping[str, str] | None = None,
                      title: str = "Experiment results") -> pathlib.Path:
    """The experiment's report.html: one row per (run, dataset) with its mean metrics, a link to
    the evaluation's own report.html, and the paper's numbers of the first table among
    `table_ids` whose rows are datasets (none for demo runs, whose `dataset_map` stands one
    dataset in for another)."""
    from zsad_jax.evaluation import report

    paper = {}
    if not dataset_map:
        for table_id in table_ids:
            if paper_tables.get(table_id)["rows_are"] == "datasets":
                paper = paper_tables.dataset_numbers(table_id)
                break
    entries = []
    for run in runs:
        for dataset, content in run.datasets.items():
            numbers, label = paper.get(dataset, (None, ""))
            page = run.files[dataset].parent / "report.html" if dataset in run.files else None
            entries.append(report.ExperimentEntry(
                run=run.name, dataset=dataset, mean=content["mean"],
                report=page if page is not None and page.is_file() else None,
                paper=numbers, paper_label=label))
    return report.write_experiment_report(out_path, entries, title=title)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.aggregate",
        description="Markdown tables of runs' metrics.json files beside the papers' numbers.")
    parser.add_argument("root", help="a run, a folder of runs (ROOT/<run>/eval/...), or a folder of "
                        "grid folders (the runner's --root)")
    parser.add_argument("--table", action="append", default=[],
                        help="paper table id to lay the results out as (repeatable); "
                             f"known: {', '.join(paper_tables.load())}")
    parser.add_argument("--dataset_map", action="append", default=[], metavar="PAPER=OURS",
                        help="compare our dataset OURS with the paper's PAPER (e.g. mvtec=synthetic "
                             "for demo runs; repeatable)")
    parser.add_argument("--out", default="", help="write the markdown here (default: stdout)")
    parser.add_argument("--html", default="", help="also write the HTML index of the runs' "
                        "reports here (e.g. ROOT/report.html)")
    args = parser.parse_args(argv)
    dataset_map = {}
    for item in args.dataset_map:
        paper, sep, ours = item.partition("=")
        if not sep or not paper or not ours:
            parser.error(f"--dataset_map {item!r}: expected PAPER=OURS, e.g. mvtec=synthetic")
        dataset_map[paper] = ours
    try:
        text = report_markdown(args.root, args.table, dataset_map=dataset_map)
        if args.html:
            html = write_html_report(args.html, collect(args.root), args.table, dataset_map)
            print(f"wrote {html}", file=sys.stderr)
    except (FileNotFoundError, MetricsFileError, paper_tables.PaperTableError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
