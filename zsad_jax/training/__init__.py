"""The training engine (docs/training.md).

    from zsad_jax.training import loop
    result = loop.train(config, workdir, evaluator=evaluator)   # train / resume

Modules: `optimizer` (AdamW, schedules, lr groups), `state` (trainable/frozen split, train state),
`step` (the compiled step, NaN guard), `checkpoint` (the run directory: config, Orbax checkpoints,
lock), `feature_cache` (frozen features on disk), `metrics_writer` (JSON lines + TensorBoard),
`progress` (compile phase, bar or log lines), `loop` (the loop). Evaluation is injected into the
loop; this package never imports `zsad_jax.evaluation`. Importing this package is cheap.
"""
