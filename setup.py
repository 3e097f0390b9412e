"""Package list for setuptools (metadata lives in pyproject.toml).

`configs/` is installed as the package `zsad_jax._configs` so that bare config names
(`--config sgnet.py`) resolve after a non-editable install (see zsad_jax/config_lib.py); the
papers' numbers (zsad_jax/evaluation/paper_results.json) ship as package data.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["zsad_jax", "zsad_jax.*", "weights_conversion",
                                    "weights_conversion.*"]) + ["zsad_jax._configs"],
    package_dir={"zsad_jax._configs": "configs"},
    package_data={"zsad_jax.evaluation": ["paper_results.json"]},   # the papers' numbers
)
