"""SGNet (semantic gravitons, CVPR 2026): ../shared/papers/sgnet.md.

Variants (`--config sgnet.py:VARIANT`):
  (default) / visa_to_mvtec   the paper: train on VisA test, evaluate on MVTec-AD and the others
  mvtec_to_visa               train on MVTec-AD test, evaluate on VisA
  baseline, gin, gin_att, gin_equ, full   rows of the paper's ablation table (on the default protocol)
  demo                        tiny random CLIP, synthetic data, minutes on a CPU
"""

from zsad_jax import config_lib

VARIANTS = ("visa_to_mvtec", "mvtec_to_visa", "baseline", "gin", "gin_att", "gin_equ", "full", "demo")


def get_config(arg=None):
    arg = arg or "visa_to_mvtec"
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "sgnet"
    # Frozen CLIP ViT-L/14@336 at 518x518 (37x37 grid), multi-layer features.
    c.backbones.clip = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24))
    c.data.protocol = "visa_to_mvtec"
    c.data.batch_size = 8
    # Paper: AdamW (weight decay 0.05), lr 5e-5, polynomial decay.
    c.optim.lr = 5e-5
    c.optim.weight_decay = 0.05
    c.optim.schedule = "polynomial"
    c.optim.power = 1.0
    c.optim.end_lr_factor = 0.0
    c.train.epochs = 15
    # Method options (filled in by zsad_jax/methods/sgnet.py's issue).
    c.model.num_gravitons = 20      # N
    c.model.num_stages = 4          # K
    c.loss.lambda_grav = 0.6
    c.loss.lambda_att = 0.6
    c.loss.gin = True
    c.loss.attraction = True
    c.loss.equilibrium = True

    if arg == "mvtec_to_visa":
        c.data.protocol = "mvtec_to_visa"
    elif arg == "baseline":
        c.loss.gin = False
        c.loss.attraction = False
        c.loss.equilibrium = False
    elif arg == "gin":
        c.loss.attraction = False
        c.loss.equilibrium = False
    elif arg == "gin_att":
        c.loss.equilibrium = False
    elif arg == "gin_equ":
        c.loss.attraction = False
    elif arg == "demo":
        c.backbones.clip = config_lib.backbone_config(
            "clip-tiny", weights="", image_size=64, layers=(1, 2))
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.data.eval_batch_size = 16
        c.optim.lr = 1e-3
        c.train.epochs = 3
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
