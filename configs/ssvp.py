"""SSVP (synergistic semantic-visual prompting): ../shared/papers/ssvp.md.

Variants (`--config ssvp.py:VARIANT`):
  (default) / visa_to_mvtec   the paper: train on VisA, evaluate on MVTec-AD and the others
  mvtec_to_visa               train on MVTec-AD, evaluate on VisA
  demo                        tiny random CLIP + tiny random DINOv3, synthetic data, minutes on a CPU
"""

from zsad_jax import config_lib

VARIANTS = ("visa_to_mvtec", "mvtec_to_visa", "demo")


def get_config(arg=None):
    arg = arg or "visa_to_mvtec"
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "ssvp"
    # CLIP ViT-L/14 at 518 and DINOv3 ViT-L/16 at 592: both 37x37 grids (sec. 4.2).
    c.backbones.clip = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24))
    c.backbones.dino = config_lib.backbone_config(
        "dinov3-vitl16", weights="weights/dinov3-vitl16", image_size=592,
        layers=(6, 12, 18, 24))
    c.data.protocol = "visa_to_mvtec"
    c.data.batch_size = 8
    # Sec. 4.2: 15 epochs, batch 8, lr 5e-4 prompts / 1e-4 VAE and projections, cosine decay.
    c.optim.lr = 1e-4
    c.optim.schedule = "cosine"
    c.optim.lr_groups = ("prompt=5e-4",)
    c.train.epochs = 15
    c.loss.beta = 0.1
    c.loss.lambda1 = 1.0
    c.loss.lambda2 = 0.5
    c.loss.xi = 0.85
    c.model.gamma = 0.5

    if arg == "mvtec_to_visa":
        c.data.protocol = "mvtec_to_visa"
    elif arg == "demo":
        c.backbones.clip = config_lib.backbone_config("clip-tiny", image_size=56, layers=(1, 2))
        c.backbones.dino = config_lib.backbone_config("dinov3-tiny", image_size=64, layers=(1, 2))
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.train.epochs = 3
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
