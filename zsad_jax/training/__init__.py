"""The training engine (docs/training.md).

    from zsad_jax.training import loop, checkpoint
    result = loop.train(config, workdir)                       # train / resume
    config, method, params = checkpoint.load_run(workdir)      # a trained run, for eval/predict

Modules: `optimizer` (AdamW, schedules, lr groups), `state` (trainable/frozen split, train state),
`step` (the compiled step, NaN guard), `sharding` (mesh, jax.distributed), `checkpoint` (Orbax run
directory, load_run), `feature_cache` (frozen features on disk), `metrics_writer` (JSON lines +
TensorBoard), `loop` (the loop). Submodules are imported on use; importing this package is cheap.
"""
