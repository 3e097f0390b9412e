"""Nothing lost, nothing silent: interrupted runs resume what was lost, a run directory has one
training at a time, results say which checkpoint made them, bad flags exit 2 before loading."""

import json
import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from zsad_jax import config_lib, data
from zsad_jax.evaluation import Evaluator
from zsad_jax.train import run_training
from zsad_jax.training import checkpoint, loop
from zsad_jax.training.progress import Progress

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return str(data.make_synthetic(tmp_path_factory.mktemp("synthetic") / "synthetic", seed=0))


def probe(synthetic_root, **overrides):
    base = {"data.roots.synthetic": synthetic_root, "train.num_steps": 4, "train.ckpt_every": 2,
            "train.eval_every": 2, "train.log_every": 1, "eval.num_heatmaps": 0,
            "eval.max_images": 3}
    return config_lib.load_config("linear_probe.py:demo", {**base, **overrides})


class Killed(Exception):
    """Stands for the process dying (kill -9) at that point."""


def _records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_killed_before_an_evaluation_resumes_it_and_logs_each_step_once(tmp_path, synthetic_root):
    config = probe(synthetic_root)
    workdir = tmp_path / "run"

    class DiesAtStep2(Evaluator):
        def __call__(self, method, params, record_sets, out_root, checkpoint):
            raise Killed                        # after checkpoint 2, before its evaluation

    with pytest.raises(Killed):
        loop.train(config, workdir, evaluator=DiesAtStep2(config, progress=False), progress=False)
    assert checkpoint.RunCheckpoints(workdir).latest_step() == 2
    assert not (workdir / "eval" / "step_2").exists()
    run_training(config, workdir, progress=False)
    evals = [r["step"] for r in _records(workdir) if r["kind"] == "eval"]
    assert evals == [2, 4]                                   # the lost evaluation was run
    assert (workdir / "eval" / "step_2" / "synthetic" / "metrics.json").is_file()
    train = [r["step"] for r in _records(workdir) if r["kind"] == "train"]
    assert train == [1, 2, 3, 4]


def test_killed_between_a_log_line_and_its_checkpoint_trims_the_logs(tmp_path, synthetic_root,
                                                                      monkeypatch):
    config = probe(synthetic_root, **{"train.eval_every": -1})
    workdir = tmp_path / "run"
    save = checkpoint.RunCheckpoints.save

    def dies_at_step_4(self, step, *args, **kwargs):
        if step == 4:
            raise Killed                        # steps 3 and 4 were logged, not checkpointed
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", dies_at_step_4)
    with pytest.raises(Killed):
        loop.train(config, workdir, progress=False)
    assert [r["step"] for r in _records(workdir)] == [1, 2, 3, 4]
    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", save)
    loop.train(config, workdir, progress=False)              # resumes from checkpoint 2
    assert [r["step"] for r in _records(workdir)] == [1, 2, 3, 4]   # no duplicated step


def test_a_second_training_of_a_run_directory_is_refused(tmp_path, synthetic_root):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from zsad_jax.training.checkpoint import RunLock
            with RunLock(__import__("pathlib").Path({str(tmp_path / 'run')!r})):
                print("locked", flush=True)
                time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(checkpoint.RunLockedError, match=f"pid {holder.pid} on host"):
            loop.train(probe(synthetic_root), tmp_path / "run", progress=False)
        r = subprocess.run([sys.executable, "-m", "zsad_jax.train", "--config",
                            "linear_probe.py:demo", "--workdir", str(tmp_path / "run"),
                            f"--config.data.roots.synthetic={synthetic_root}"],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert loop.train(probe(synthetic_root, **{"train.num_steps": 1}), tmp_path / "run",
                      progress=False).step == 1               # released when the holder died


def test_a_run_without_a_checkpoint_accepts_a_new_config(tmp_path, synthetic_root):
    workdir = tmp_path / "run"
    failed = probe(synthetic_root, **{"optim.lr": 0.5})
    checkpoint.write_or_check_config(workdir, failed, has_checkpoint=False)   # died at step 0
    fixed = probe(synthetic_root, **{"train.num_steps": 1, "train.eval_every": -1})
    assert loop.train(fixed, workdir, progress=False).step == 1
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.01
    changed = probe(synthetic_root, **{"train.num_steps": 1, "optim.lr": 0.5})
    with pytest.raises(checkpoint.ConfigMismatchError, match="optim.lr"):     # now it has one
        loop.train(changed, workdir, progress=False)


def test_results_of_another_checkpoint_are_never_replaced(tmp_path, synthetic_root):
    from zsad_jax import evaluation, methods

    config = probe(synthetic_root)
    method = methods.build(config)
    params = method.init(__import__("jax").random.PRNGKey(0))
    records = {"synthetic": data.load_dataset(config, "synthetic", tmp_path, classes=("moon",))}
    ev = Evaluator(config, progress=False)
    first = loop.Checkpoint(str(tmp_path), "checkpoints", 2)
    ev(method, params, records, tmp_path / "out", first, flat=True)
    saved = json.loads((tmp_path / "out" / "synthetic" / "metrics.json").read_text())
    assert saved["checkpoint"]["step"] == 2 and saved["config_sha256"] == ev.config_sha256
    with pytest.raises(evaluation.ResultsExistError, match="checkpoint"):
        ev(method, params, records, tmp_path / "out", loop.Checkpoint(str(tmp_path),
                                                                       "checkpoints", 4), flat=True)
    other = Evaluator(probe(synthetic_root, **{"eval.smoothing_sigma": 0.0}), progress=False)
    with pytest.raises(evaluation.ResultsExistError, match="config_sha256"):
        other(method, params, records, tmp_path / "out", first, flat=True)
    ev(method, params, records, tmp_path / "out", first, flat=True)       # the same: allowed


def test_progress_separates_compilation_and_writes_plain_lines(caplog):
    with caplog.at_level(logging.INFO):
        bar = Progress(40, 0, desc="train")
        for step in range(1, 41):
            bar.update(step)
        bar.close()
    lines = caplog.messages
    assert lines[0].startswith("compiling the train step")
    assert lines[1].startswith("compiled and ran the first train step in")
    assert any(line.startswith("train step 40/40 (100%)") for line in lines)
    assert 5 <= len(lines) <= 25 and not any("\r" in line or "\x1b" in line for line in lines)


_BAD_FLAGS = [
    (["zsad_jax.evaluate", "--workdir", "{run}", "--dataset", "mvtecc"], "did you mean mvtec"),
    (["zsad_jax.evaluate", "--workdir", "{run}", "--dataset", "mvtec", "--data_dir", "{tmp}/none"],
     "--data_dir"),
    (["zsad_jax.evaluate", "--workdir", "{run}", "--out", "{tmp}/file.txt"], "is a file"),
    (["zsad_jax.evaluate", "--workdir", "{empty_run}"], "no checkpoint yet"),
    (["zsad_jax.predict", "--workdir", "{run}", "--images", "{tmp}/nothing*.png", "--out",
      "{tmp}/p"], "no file matches"),
    (["zsad_jax.predict", "--workdir", "{run}", "--images", "{tmp}/empty", "--out", "{tmp}/p"],
     "holds no image file"),
    (["zsad_jax.predict", "--workdir", "{run}", "--images", "{tmp}", "--out", "{tmp}/p",
      "--vmin", "1", "--vmax", "0"], "--vmax"),
    (["zsad_jax.predict", "--workdir", "{run}", "--images", "{tmp}", "--out", "{tmp}/file.txt"],
     "is a file"),
]


def test_bad_flags_exit_2_with_one_line_before_loading_anything(tmp_path):
    run = tmp_path / "run"
    checkpoint.write_or_check_config(run, probe(str(tmp_path / "data")), has_checkpoint=False)
    empty_run = tmp_path / "empty_run"
    checkpoint.write_or_check_config(empty_run, probe(str(tmp_path / "data")), has_checkpoint=False)
    (run / "checkpoints" / "2").mkdir(parents=True)           # it looks trained; never loaded
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for argv, expected in _BAD_FLAGS:
        argv = [a.format(run=run, empty_run=empty_run, tmp=tmp_path) for a in argv]
        r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                           cwd=REPO, timeout=300, env=env)
        assert r.returncode == 2, (argv, r.stderr[-2000:])
        assert expected in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
        assert "loaded" not in r.stderr                        # before any model was loaded
