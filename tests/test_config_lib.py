"""Config resolution: bare names, paths, `:variant`, overrides, typos (issue 2)."""

import pathlib
import subprocess
import sys

import pytest

from zsad_jax import config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
METHOD_CONFIGS = ("sgnet.py", "ssvp.py", "visualad.py")


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_bare_name_resolves_to_repo_configs(name):
    assert config_lib.resolve_config_path(name) == (REPO / "configs" / name).resolve()
    # Without the extension too.
    assert config_lib.resolve_config_path(name[:-3]) == (REPO / "configs" / name).resolve()


def test_existing_path_wins_over_bare_name(tmp_path):
    own = tmp_path / "sgnet.py"
    own.write_text("from zsad_jax import config_lib\n"
                   "def get_config(arg=None):\n"
                   "    c = config_lib.base_config(); c.method = 'mine:' + str(arg); return c\n")
    assert config_lib.resolve_config_path(str(own)) == own.resolve()
    assert config_lib.load_config(f"{own}:x").method == "mine:x"


def test_env_dir_is_searched(tmp_path, monkeypatch):
    (tmp_path / "custom.py").write_text(
        "from zsad_jax import config_lib\n"
        "def get_config(arg=None):\n    c = config_lib.base_config(); c.method='custom'; return c\n")
    monkeypatch.setenv("ZSAD_CONFIGS_DIR", str(tmp_path))
    assert config_lib.load_config("custom.py").method == "custom"


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
    assert config_lib.load_config("sgnet.py:mvtec_to_visa").data.protocol == "mvtec_to_visa"


def test_unknown_variant_is_an_error():
    with pytest.raises(config_lib.ConfigError, match="nope"):
        config_lib.load_config("sgnet.py:nope")


def test_overrides_are_typed():
    c = config_lib.load_config("sgnet.py", ["optim.lr=1e-3", "train.epochs=2",
                                            "train.remat=true", "data.protocol=mvtec_to_visa"])
    assert c.optim.lr == 1e-3 and isinstance(c.optim.lr, float)
    assert c.train.epochs == 2 and c.train.remat is True
    assert c.data.protocol == "mvtec_to_visa"


def test_typo_names_key_and_closest_keys():
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.load_config("sgnet.py", ["optim.lrr=1e-3"])
    msg = str(e.value)
    assert "'optim.lrr'" in msg and "optim.lr" in msg


def test_split_spec():
    assert config_lib.split_spec("a.py:demo") == ("a.py", "demo")
    assert config_lib.split_spec("a.py") == ("a.py", None)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_train_cli_typo_fails_before_running():
    r = _run_cli("zsad_jax.train", "--config", "sgnet.py:demo", "--config.optim.lrr=1",
                 "--workdir", "/nonexistent/never-created")
    assert r.returncode != 0
    assert "optim.lrr" in r.stderr and "optim.lr" in r.stderr
    assert not pathlib.Path("/nonexistent/never-created").exists()


def test_plain_install_ships_configs(tmp_path):
    """A non-editable wheel carries configs/ as zsad_jax._configs."""
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("zsad_jax-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in METHOD_CONFIGS:
        assert f"zsad_jax/_configs/{name}" in names
