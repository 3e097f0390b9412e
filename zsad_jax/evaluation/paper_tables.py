"""The papers' reported numbers (`paper_results.json`), loaded and checked.

Each table: {"title", "paper", "source", "rows_are": "datasets" | "runs" | "classes",
"dataset" (classes tables), "columns": [{"metric", "dataset"?, "label"}],
"rows": [{"key", "label", "values": [percent | null per column], "std"?: [...]}], "notes"?}.

The tables are used twice: experiments/aggregate.py lays runs' results out beside them, and an
evaluation whose config names a "datasets" table (`config.eval.paper_table`) shows its dataset's
row beside the mean in report.html (`dataset_numbers`).
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

PAPER_RESULTS = pathlib.Path(__file__).resolve().parent / "paper_results.json"

METRICS = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max",
           "pixel_aupro")
LAYOUTS = ("datasets", "runs", "classes")


class PaperTableError(ValueError):
    """A paper table that is missing or malformed."""


def check_table(table_id: str, table: dict[str, Any], where: str = "") -> None:
    """Raises PaperTableError naming the table and the field at fault."""
    at = f"{where}: table {table_id!r}" if where else f"table {table_id!r}"
    for field in ("title", "source", "rows_are", "columns", "rows"):
        if field not in table:
            raise PaperTableError(f"{at} has no {field!r} field.")
    if table["rows_are"] not in LAYOUTS:
        raise PaperTableError(f"{at}: rows_are={table['rows_are']!r}; expected one of {LAYOUTS}.")
    if table["rows_are"] == "classes" and not table.get("dataset"):
        raise PaperTableError(f"{at}: a 'classes' table needs a 'dataset'.")
    for i, column in enumerate(table["columns"]):
        if column.get("metric") not in METRICS:
            raise PaperTableError(f"{at}, column {i}: metric={column.get('metric')!r}; "
                                  f"expected one of {METRICS}.")
        if table["rows_are"] == "runs" and not column.get("dataset"):
            raise PaperTableError(f"{at}, column {i}: a 'runs' table needs a dataset per column.")
    keys = set()
    for row in table["rows"]:
        key = row.get("key")
        if not key or key in keys:
            raise PaperTableError(f"{at}: row key {key!r} is missing or repeated.")
        keys.add(key)
        for field in ("values", "std"):
            if field in row and len(row[field]) != len(table["columns"]):
                raise PaperTableError(f"{at}, row {key!r}: {len(row[field])} {field} for "
                                      f"{len(table['columns'])} columns.")
        for value in row["values"] + row.get("std", []):
            if value is not None and not (isinstance(value, int | float) and 0 <= value <= 100):
                raise PaperTableError(f"{at}, row {key!r}: {value!r} is not a percentage or null.")


@functools.cache
def _load(path: str) -> dict[str, dict[str, Any]]:
    try:
        tables = json.loads(pathlib.Path(path).read_text())["tables"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise PaperTableError(f"{path}: cannot read the paper tables ({e}).") from e
    for table_id, table in tables.items():
        check_table(table_id, table, path)
    return tables


def load(path: str | pathlib.Path = PAPER_RESULTS) -> dict[str, dict[str, Any]]:
    """{table id: table} from the data file (checked)."""
    return _load(str(path))


def get(table_id: str, path: str | pathlib.Path = PAPER_RESULTS) -> dict[str, Any]:
    tables = load(path)
    if table_id not in tables:
        raise PaperTableError(f"No paper table {table_id!r} in {path}; known: {', '.join(tables)}.")
    return tables[table_id]


def dataset_numbers(table_id: str, path: str | pathlib.Path = PAPER_RESULTS
                    ) -> dict[str, tuple[dict[str, float | None], str]]:
    """{dataset: ({metric: percent or None}, label)} of a table whose rows are datasets: what
    `evaluation.Evaluator(paper=...)` shows beside each dataset's mean."""
    table = get(table_id, path)
    if table["rows_are"] != "datasets":
        raise PaperTableError(f"table {table_id!r} has rows_are={table['rows_are']!r}; the "
                              f"evaluation report needs a table whose rows are datasets.")
    label = f"{table['title']} (table {table_id})"
    return {row["key"]: ({c["metric"]: v for c, v in zip(table["columns"], row["values"],
                                                          strict=True)}, label)
            for row in table["rows"]}


def dataset_tables(path: str | pathlib.Path = PAPER_RESULTS) -> tuple[str, ...]:
    """Ids of the tables whose rows are datasets (the values `config.eval.paper_table` takes)."""
    return tuple(k for k, t in load(path).items() if t["rows_are"] == "datasets")
