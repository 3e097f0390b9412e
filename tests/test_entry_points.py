"""Every entry point answers --help with its flags; `import zsad_jax` stays free of torch/TF."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

ENTRY_POINTS = {
    "zsad_jax.train": ["--config", "--workdir"],
    "zsad_jax.evaluate": ["--workdir", "--dataset", "--data_dir"],
    "zsad_jax.predict": ["--workdir", "--images", "--out", "--threshold"],
    "weights_conversion": ["--src", "--dst", "--arch", "--verify"],
    "weights_conversion.visualad": ["--src", "--dst"],
    "zsad_jax.data": ["check", "list", "synthetic"],
    "zsad_jax.data.tfds": ["--manual_dir", "--data_dir"],
    "experiments.cross_dataset": ["--method", "--demo", "--root"],
    "experiments.aggregate": ["--table", "--out"],
}


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_lists_flags(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    for flag in ENTRY_POINTS[module]:
        assert flag in r.stdout, f"{module} --help does not mention {flag}"


def test_import_does_not_pull_torch_or_tensorflow():
    code = ("import sys, zsad_jax, zsad_jax.backbones, zsad_jax.methods, zsad_jax.data, "
            "zsad_jax.metrics, zsad_jax.training, zsad_jax.config_lib\n"
            "bad = [m for m in ('torch', 'tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
            "print(','.join(bad))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"imported optional heavy deps: {r.stdout.strip()}"


_WITHOUT_TFDS = """
import runpy, sys
class Block:      # as if the `tfds` extra were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow_datasets", "tensorflow"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["zsad_jax.data.tfds", *sys.argv[1:]]
runpy.run_module("zsad_jax.data.tfds", run_name="__main__")
"""


def test_tfds_command_without_the_extra_answers_help_and_names_the_extra(tmp_path):
    r = subprocess.run([sys.executable, "-c", _WITHOUT_TFDS, "--help"], capture_output=True,
                       text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and "--manual_dir" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", _WITHOUT_TFDS, "mvtec", "--manual_dir", str(tmp_path),
                        "--data_dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 2 and "pip install -e '.[tfds]'" in r.stderr
    assert "Traceback" not in r.stderr
