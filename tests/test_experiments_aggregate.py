"""The aggregator on fixture metrics.json files gives known tables; the paper numbers file is sound."""

import json

import pytest

from experiments import aggregate
from zsad_jax.evaluation import paper_tables


def results_dir(run_dir, step=7):
    """A finished training's results folder (what the train CLI leaves)."""
    (run_dir / "final.json").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "final.json").write_text(json.dumps({"step": step}))
    return run_dir / "eval" / f"step_{step}"


def write_run(root, run, dataset, mean, classes=None, row=None):
    run_dir = root / run
    folder = results_dir(run_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    if row is not None:
        (run_dir / "experiment.json").write_text(json.dumps({"name": run, "row": row}))
    (folder / "metrics.json").write_text(json.dumps({
        "dataset": dataset, "resolution": "input", "smoothing_sigma": 4.0, "num_images": 10,
        "classes": classes or {}, "mean": mean}))


@pytest.fixture
def ablation_runs(tmp_path):
    write_run(tmp_path, "gin-visa_to_mvtec", "mvtec",
              {"image_auroc": 0.9234, "pixel_auroc": 0.9, "pixel_aupro": None}, row="gin")
    write_run(tmp_path, "gin-mvtec_to_visa", "visa", {"image_auroc": 0.851, "pixel_auroc": 0.95349},
              row="gin")
    write_run(tmp_path, "full-visa_to_mvtec", "mvtec", {"image_auroc": 0.935, "pixel_auroc": None},
              row="full")
    (tmp_path / "unfinished" / "eval").mkdir(parents=True)     # no metrics yet: ignored
    return tmp_path


def test_sgnet_ablation_table_is_known(ablation_runs):
    text = aggregate.paper_table_markdown("sgnet.ablation", aggregate.collect(ablation_runs))
    lines = text.splitlines()
    assert lines[0] == "### SGNet: ablation of GIN and the GPR forces (AUROC)"
    assert lines[4] == ("| Setting | Run | MVTec I-AUROC ours | paper | diff | MVTec P-AUROC ours | paper "
                        "| diff | VisA I-AUROC ours | paper | diff | VisA P-AUROC ours | paper | diff |")
    assert lines[6:11] == [
        "| Baseline only (w/o GIN/GPR) | - | n/a | 91.1 | - | n/a | 91.8 | - | n/a | 84.2 | - "
        "| n/a | 95.1 | - |",
        # 0.9234 -> 92.3 (paper 91.8: +0.5); 0.9 -> 90.0 (92.1: -2.1); 0.851 -> 85.1 (85.1: +0.0);
        # 0.95349 -> 95.3 (95.4: -0.1): MVTec from the VisA-trained run, VisA from the other.
        "| + GIN interaction | gin-visa_to_mvtec, gin-mvtec_to_visa | 92.3 | 91.8 | +0.5 | 90.0 "
        "| 92.1 | -2.1 | 85.1 | 85.1 | +0.0 | 95.3 | 95.4 | -0.1 |",
        "| + GIN + Attraction | - | n/a | 92.2 | - | n/a | 92.6 | - | n/a | 85.2 | - | n/a | 95.8 | - |",
        "| + GIN + Equilibrium | - | n/a | 92.7 | - | n/a | 92.5 | - | n/a | 85.7 | - | n/a | 95.6 | - |",
        # null pixel AUROC (not computable) is n/a with no difference.
        "| Full (GIN + GPR) | full-visa_to_mvtec | 93.5 | 93.5 | +0.0 | n/a | 92.8 | - | n/a | 85.9 "
        "| - | n/a | 95.9 | - |"]
    assert "Our evaluation: resolution input, smoothing sigma 4.0." in lines


SMALL_TABLE = {
    "title": "Small", "paper": "P", "source": "S", "rows_are": "classes", "dataset": "mvtec",
    "columns": [{"metric": "image_auroc", "label": "I"}, {"metric": "pixel_aupro", "label": "PRO"}],
    "rows": [{"key": "bottle", "label": "Bottle", "values": [90.0, None], "std": [0.5, None]},
             {"key": "zipper", "label": "Zipper", "values": [50.0, 60.0]},
             {"key": "mean", "label": "Average", "values": [70.0, 60.0]}],
}


def test_classes_table_reads_per_class_metrics_and_the_mean(tmp_path):
    write_run(tmp_path, "visa_to_mvtec", "mvtec", {"image_auroc": 0.75, "pixel_aupro": 0.3},
              classes={"bottle": {"image_auroc": 1.0, "pixel_aupro": 0.3},
                       "zipper": {"image_auroc": 0.5, "pixel_aupro": None}})
    text = aggregate.paper_table_markdown("small", aggregate.collect(tmp_path), table=SMALL_TABLE)
    assert text.splitlines()[4:9] == [
        "| Class | Run | I ours | paper | diff | PRO ours | paper | diff |",
        "|---|---|---|---|---|---|---|---|",
        "| Bottle | visa_to_mvtec | 100.0 | 90.0 ± 0.5 | +10.0 | 30.0 | - | - |",
        "| Zipper | visa_to_mvtec | 50.0 | 50.0 | +0.0 | n/a | 60.0 | - |",
        "| Average | visa_to_mvtec | 75.0 | 70.0 | +5.0 | 30.0 | 60.0 | -30.0 |"]


def test_datasets_table_and_demo_stand_in(tmp_path):
    write_run(tmp_path, "demo", "synthetic", {"image_auroc": 0.812, "pixel_auroc": 0.9})
    runs = aggregate.collect(tmp_path)
    text = aggregate.paper_table_markdown("sgnet.cross_dataset", runs,
                                          dataset_map={"mvtec": "synthetic"})
    lines = text.splitlines()
    assert lines[4:7] == [
        "**Demo: our columns are synthetic for mvtec; do not compare them with the paper.**", "",
        "| Dataset | Run | I-AUROC ours | paper | diff | P-AUROC ours | paper | diff |"]
    assert "| MVTec-AD | demo | 81.2 | 93.5 | -12.3 | 90.0 | - | - |" in text
    assert "| VisA | - | n/a | 85.9 | - | n/a | - | - |" in text
    # Without the stand-in nothing matches the paper's datasets.
    plain = aggregate.paper_table_markdown("sgnet.cross_dataset", runs)
    assert "| MVTec-AD | - | n/a | 93.5 | - | n/a | - | - |" in plain


def test_all_results_table_and_cli(ablation_runs, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("out") / "results.md"
    assert aggregate.main([str(ablation_runs), "--table", "sgnet.ablation", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(f"# Results: {ablation_runs}\n")
    assert "| gin-mvtec_to_visa | visa | 10 | 85.1 | n/a | n/a | 95.3 | n/a | n/a | n/a |" in text
    assert "unfinished" not in text
    assert aggregate.main([str(ablation_runs), "--table", "nope"]) == 2
    assert "No paper table 'nope'" in capsys.readouterr().err


def test_a_run_directory_itself_can_be_aggregated(ablation_runs):
    runs = aggregate.collect(ablation_runs / "full-visa_to_mvtec")
    assert [(r.name, r.row, list(r.datasets)) for r in runs] == [
        ("full-visa_to_mvtec", "full", ["mvtec"])]


@pytest.mark.parametrize("content,message", [
    ("{", "cannot read metrics"),
    ('{"classes": {}}', "'mean' is missing"),
    ('{"classes": {}, "mean": {"image_auroc": "high"}}', "mean.image_auroc='high'"),
    ('{"classes": {"a": {"pixel_ap": 93.1}}, "mean": {}}', "classes.a.pixel_ap=93.1 is outside"),
])
def test_bad_metrics_files_are_named(tmp_path, content, message):
    path = results_dir(tmp_path / "run") / "mvtec" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(aggregate.MetricsFileError, match="metrics.json") as info:
        aggregate.collect(tmp_path)
    assert message in str(info.value)


def test_paper_numbers_file_is_consistent():
    tables = paper_tables.load()
    assert set(tables) >= {"sgnet.cross_dataset", "sgnet.ablation", "ssvp.table1", "ssvp.table2",
                           "ssvp.table3", "ssvp.table5", "visualad.cross_dataset",
                           "visualad.dinov2", "visualad.ablation"}
    full = next(r for r in tables["sgnet.ablation"]["rows"] if r["key"] == "full")
    assert full["values"] == [93.5, 92.8, 85.9, 95.9]
    # The same model in two tables of a paper reports the same number.
    sgnet_main = {r["key"]: r["values"] for r in tables["sgnet.cross_dataset"]["rows"]}
    assert sgnet_main["mvtec"][0] == full["values"][0] and sgnet_main["visa"][0] == full["values"][2]
    table1 = {r["key"]: r["values"] for r in tables["ssvp.table1"]["rows"]}
    table2 = {r["key"]: r["values"] for r in tables["ssvp.table2"]["rows"]}
    assert table2["mean"] == [table1["mvtec"][0], table1["mvtec"][3]]
    # Table 2's average is the mean of its classes (as printed, to 0.1).
    classes = [v for k, v in table2.items() if k != "mean"]
    for i in range(2):
        assert abs(sum(v[i] for v in classes) / len(classes) - table2["mean"][i]) < 0.1
    visualad = {r["key"]: r["values"] for r in tables["visualad.cross_dataset"]["rows"]}
    assert tables["visualad.ablation"]["rows"][-1]["values"][0] == visualad["visa"][0]


@pytest.mark.parametrize("change,message", [
    (lambda t: t.update(rows_are="grid"), "rows_are='grid'"),
    (lambda t: t["columns"][0].update(metric="auc"), "metric='auc'"),
    (lambda t: t["rows"][0].update(values=[1.0]), "1 values for 2 columns"),
    (lambda t: t["rows"][1].update(key="bottle"), "repeated"),
    (lambda t: t["rows"][0].update(values=[0.93, 120.0]), "120.0 is not a percentage"),
])
def test_malformed_paper_tables_are_named(change, message):
    table = json.loads(json.dumps(SMALL_TABLE))
    change(table)
    with pytest.raises(paper_tables.PaperTableError, match="table 'small'") as info:
        paper_tables.check_table("small", table)
    assert message in str(info.value)


def test_paper_rows_name_zsad_jax_datasets_and_classes():
    from zsad_jax import data

    no_reader = {"oct17", "brain_ad", "his"}     # VisualAD medical sets (noted in the table)
    for table_id, table in paper_tables.load().items():
        datasets = [c["dataset"] for c in table["columns"] if c.get("dataset")]
        if table["rows_are"] == "datasets":
            datasets += [r["key"] for r in table["rows"]]
        assert set(datasets) - set(data.DATASETS) <= no_reader, table_id
        if table["rows_are"] == "classes":
            classes = {r["key"] for r in table["rows"]} - {"mean"}
            assert classes == set(data.DATASETS[table["dataset"]].classes), table_id


def test_html_index_links_reports_and_shows_the_papers_numbers(ablation_runs):
    """The experiment's report.html: a row per (run, dataset), the paper's number of a 'datasets'
    table under ours (sgnet.cross_dataset: MVTec-AD image AUROC 93.5), links to existing reports."""
    runs = aggregate.collect(ablation_runs)
    page_of_gin = runs[[r.name for r in runs].index("gin-visa_to_mvtec")].files["mvtec"].parent
    (page_of_gin / "report.html").write_text("<html></html>")
    out = aggregate.write_html_report(ablation_runs / "report.html", runs,
                                      ("sgnet.ablation", "sgnet.cross_dataset"))
    page = out.read_text()
    assert page.count("<tr><td>") == 3                       # three (run, dataset) rows
    assert "92.3<br><small>paper 93.5" in page               # gin on MVTec-AD: 0.9234 vs 93.5
    assert 'href="gin-visa_to_mvtec/eval/step_7/mvtec/report.html"' in page
    assert page.count("report</a>") == 1                     # only existing reports are linked
    # Demo runs (one dataset standing in for another) get no paper numbers.
    demo = aggregate.write_html_report(ablation_runs / "demo.html", runs, ("sgnet.cross_dataset",),
                                       dataset_map={"mvtec": "synthetic"}).read_text()
    assert "paper" not in demo.split("<table", 1)[1]
