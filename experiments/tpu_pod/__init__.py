"""Multi-host runs: TPU VM pods, multi-node GPU (jax.distributed), localhost processes."""
