"""Config resolution: bare names, paths, `:variant`, overrides, typos; every value checked."""

import pathlib
import subprocess
import sys

import pytest

from zsad_jax import config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
METHOD_CONFIGS = ("anomalyclip.py", "sgnet.py", "ssvp.py", "visualad.py")


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_bare_name_resolves_to_repo_configs(name):
    assert config_lib.resolve_config_path(name) == (REPO / "configs" / name).resolve()
    # Without the extension too.
    assert config_lib.resolve_config_path(name[:-3]) == (REPO / "configs" / name).resolve()


def test_existing_path_wins_over_bare_name(tmp_path):
    own = tmp_path / "sgnet.py"
    own.write_text("from zsad_jax import config_lib\n"
                   "def get_config(arg=None):\n"
                   "    c = config_lib.load_config('linear_probe.py')\n"
                   "    c.data.data_dir = 'mine:' + str(arg); return c\n")
    assert config_lib.resolve_config_path(str(own)) == own.resolve()
    assert config_lib.load_config(f"{own}:x").data.data_dir == "mine:x"


def test_env_dir_is_searched(tmp_path, monkeypatch):
    (tmp_path / "custom.py").write_text(
        "from zsad_jax import config_lib\n"
        "def get_config(arg=None):\n    c = config_lib.load_config('linear_probe.py')\n"
        "    c.data.data_dir = 'custom'; return c\n")
    monkeypatch.setenv("ZSAD_CONFIGS_DIR", str(tmp_path))
    assert config_lib.load_config("custom.py").data.data_dir == "custom"


def test_missing_config_names_where_it_looked():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.resolve_config_path("sgnett.py")
    msg = str(e.value)
    assert "sgnett.py" in msg and "configs" in msg and "sgnet.py" in msg


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_every_config_has_default_and_demo(name):
    default = config_lib.load_config(name)
    demo = config_lib.load_config(f"{name}:demo")
    assert default.method == demo.method == name[:-3]
    assert demo.data.protocol == "synthetic"
    assert default.data.protocol != "synthetic"
    # The paper setups need converted weights; the demos run on random tiny backbones.
    assert all(bb.weights for bb in default.backbones.values())
    assert not any(bb.weights for bb in demo.backbones.values())


def test_variant_is_passed_to_get_config():
    # (SGNet's MVTec-trained run evaluates VisA and every other dataset.)
    assert config_lib.load_config("sgnet.py:mvtec_to_visa").data.protocol == "mvtec_to_all"


def test_unknown_variant_is_an_error():
    with pytest.raises(config_lib.ConfigError, match="nope"):
        config_lib.load_config("sgnet.py:nope")


def test_overrides_are_typed():
    c = config_lib.load_config("sgnet.py", ["optim.lr=1e-3", "train.epochs=2",
                                            "train.feature_cache=true", "data.protocol=mvtec_to_visa",
                                            "train.remat=dots"])
    assert c.optim.lr == 1e-3 and isinstance(c.optim.lr, float)
    assert c.train.epochs == 2 and c.train.feature_cache is True and c.train.remat == "dots"
    assert c.data.protocol == "mvtec_to_visa"


def test_typo_names_key_and_closest_keys():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config("sgnet.py", ["optim.lrr=1e-3"])
    msg = str(e.value)
    assert "'optim.lrr'" in msg and "optim.lr" in msg


@pytest.mark.parametrize("override,key,expected", [
    ("optim.schedule=cosinus", "config.optim.schedule='cosinus'", "one of 'cosine'"),
    ("data.batch_size=0", "config.data.batch_size=0", "positive"),
    ("backbones.clip.layers=7", "config.backbones.clip.layers=(7,)", "[1, 2]"),
    ("optim.lr=fast", "optim.lr=fast", "float"),
    ("model.topk_fraction=2.0", "model.topk_fraction=2.0", "(0, 1]"),
    ("gpr.lambda_att=1.5", "config.gpr.lambda_att=1.5", "[0, 1]"),
])
def test_bad_values_name_the_key(override, key, expected):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config("sgnet.py:demo", [override])
    assert key in str(e.value) and expected in str(e.value), str(e.value)


def test_every_registered_method_checks_its_sections():
    import ml_collections

    from zsad_jax import methods

    for name in methods.REGISTRY:
        config = config_lib.load_config(f"{name}.py:demo", validate_config=False)
        key = next(iter(config.model))
        config.model = ml_collections.ConfigDict({**config.model.to_dict(), key: {"not": "a value"}})
        with pytest.raises(config_lib.ConfigError, match=f"config.model.{key}="):
            config_lib.validate(config)


def test_split_spec():
    assert config_lib.split_spec("a.py:demo") == ("a.py", "demo")
    assert config_lib.split_spec("a.py") == ("a.py", None)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_train_cli_typo_fails_before_running():
    r = _run_cli("zsad_jax.train", "--config", "sgnet.py:demo", "--config.optim.lrr=1",
                 "--workdir", "/nonexistent/never-created")
    assert r.returncode == 2
    assert "optim.lrr" in r.stderr and "optim.lr" in r.stderr
    assert not pathlib.Path("/nonexistent/never-created").exists()


@pytest.mark.parametrize("flag", ["--config.optim.schedule=cosinus", "--config.optim.lr=fast",
                                  "--config.backbones.clip.layers=7"])
def test_train_cli_bad_value_is_one_line_and_exit_2(tmp_path, flag):
    r = _run_cli("zsad_jax.train", "--config", "sgnet.py:demo", flag, "--workdir",
                 str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: config") or "override" in r.stderr
    assert flag.split("=")[0].removeprefix("--config.") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()                  # nothing was started


def test_plain_install_ships_configs(tmp_path):
    """A non-editable wheel carries configs/ as zsad_jax._configs, and the papers' numbers."""
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("zsad_jax-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in METHOD_CONFIGS:
        assert f"zsad_jax/_configs/{name}" in names
    assert "zsad_jax/evaluation/paper_results.json" in names
