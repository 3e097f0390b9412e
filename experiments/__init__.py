"""Experiment runners on top of the train CLI: ablation grids, the cross-dataset protocol, result
tables beside the papers' numbers, multi-host launching (docs/experiments.md, docs/pods.md).

    python -m experiments.cross_dataset --method sgnet [--demo]
    python -m experiments.gpr_ablation | ssvp_ablation | visualad_ablation [--demo] [--dry_run]
    python -m experiments.aggregate ROOT --table sgnet.ablation
    python -m experiments.tpu_pod.launch {tpu,gpu,local} -- python -m zsad_jax.train ...
"""
