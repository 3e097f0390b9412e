"""Reference method (a linear probe on frozen random patch features): tests and engine demos.

Variants: default / "demo" (both tiny, synthetic data, seconds on a CPU).
"""

from zsad_jax import config_lib
from zsad_jax.methods.linear_probe.config import Loss, Model


def get_config(arg=None):
    if arg not in (None, "", "demo"):
        raise ValueError(f"unknown variant {arg!r}; known: demo")
    c = config_lib.base_config()
    c.method = "linear_probe"
    c.model = Model.defaults()
    c.loss = Loss.defaults()
    c.data.protocol = "synthetic"
    c.data.batch_size = 8
    c.data.eval_batch_size = 16
    c.data.num_workers = 0
    c.optim.lr = 1e-2
    c.optim.schedule = "cosine"
    c.train.epochs = 3
    c.train.log_every = 5
    c.eval.smoothing_sigma = 1.0
    c.eval.num_heatmaps = 2
    return c
