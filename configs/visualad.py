"""VisualAD (language-free ZSAD, CVPR 2026): ../shared/papers/visualad.md.

Variants (`--config visualad.py:VARIANT`):
  (default) / visa_to_mvtec   train on VisA test, evaluate on MVTec-AD and the others
  mvtec_to_visa               train on MVTec-AD test, evaluate on VisA
  demo                        tiny random CLIP, synthetic data, minutes on a CPU
"""

from zsad_jax import config_lib

VARIANTS = ("visa_to_mvtec", "mvtec_to_visa", "demo")


def get_config(arg=None):
    arg = arg or "visa_to_mvtec"
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "visualad"
    c.backbones.vit = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24), pos_interpolation="bilinear")
    c.data.protocol = "visa_to_mvtec"
    c.data.batch_size = 8
    # Official script: lr 1e-3, cosine to 0.1 * lr (see FACTS.md).
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.end_lr_factor = 0.1
    c.train.epochs = 1
    c.train.remat = True
    if arg == "mvtec_to_visa":
        c.data.protocol = "mvtec_to_visa"
        c.train.epochs = 2
    elif arg == "demo":
        c.backbones.vit = config_lib.backbone_config("clip-tiny", image_size=64, layers=(1, 2),
                                                     pos_interpolation="bilinear")
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.train.epochs = 3
        c.train.remat = False
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
