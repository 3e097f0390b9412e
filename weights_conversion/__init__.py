"""Checkpoint conversion into the folders `zsad_jax.backbones.load` reads (see __main__)."""
