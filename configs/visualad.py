"""VisualAD (language-free ZSAD, CVPR 2026): the method is zsad_jax/methods/visualad/; readings and
switches in docs/visualad.md.

Variants (`--config visualad.py:VARIANT`):
  (default) / visa_to_mvtec   train on VisA test (1 epoch), evaluate on MVTec-AD and the others
                              (protocol visa_to_all)
  mvtec_to_visa               train on MVTec-AD test (2 epochs), evaluate on VisA
  dinov2                      frozen DINOv2 ViT-L/14 at 518 instead of CLIP (VisA -> MVTec-AD)
  dinov2_mvtec_to_visa        the same, MVTec-AD -> VisA
  paper_epochs                15 epochs (the training script's default) instead of the release's 1
  no_sca, no_saf, no_sca_saf  ablations of the paper (w/o SCA, w/o SAF, w/o both)
  demo                        tiny random CLIP, synthetic data, minutes on a CPU

Training follows the official release's `scripts/CLIP.sh` + `train.py` (the published checkpoints
come from it): batch 8, AdamW (weight decay 0.01), lr 1e-3 for the tokens and 1e-4 (0.1x) for SCA
and SAF, cosine decay to 0.1 * lr, 1 epoch VisA -> MVTec-AD, 2 epochs MVTec-AD -> VisA, m = 4
anchors, residual scale 0.01. Where the paper summary and the release differ, see docs/visualad.md.
"""

from zsad_jax import config_lib
from zsad_jax.methods.visualad import config as visualad_config

# Parameters trained at 0.1 x lr in the release: SCA, SAF and the final LayerNorm (its trainable
# copy, with model.train_final_norm).
SLOW_GROUP = "^head/(sca_|saf_|final_norm/)"

VARIANTS = ("visa_to_mvtec", "mvtec_to_visa", "dinov2", "dinov2_mvtec_to_visa", "paper_epochs",
            "no_sca", "no_saf", "no_sca_saf", "demo")


def get_config(arg=None):
    arg = arg or "visa_to_mvtec"
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "visualad"
    # Frozen CLIP ViT-L/14@336 at 518 (37x37 grid); position embeddings resized bilinearly as in
    # the release (torch F.interpolate(mode='bilinear', align_corners=False)).
    c.backbones.vit = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24), pos_interpolation="bilinear")
    c.data.protocol = "visa_to_all"
    c.data.batch_size = 8
    # Release: AdamW(betas 0.9/0.999, wd 0.01), tokens at lr, SCA + SAF (+ the final LayerNorm when
    # model.train_final_norm) at 0.1 * lr, CosineAnnealingLR(eta_min = 0.1 * lr).
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.end_lr_factor = 0.1
    c.optim.lr_groups = (SLOW_GROUP + "=1e-4",)
    c.train.epochs = 1
    c.train.remat = True              # gradients reach the tokens through the whole frozen tower

    # The architecture and loss sections with their defaults (one comment per key):
    # zsad_jax/methods/visualad/config.py.
    c.model = visualad_config.Model.defaults()
    c.loss = visualad_config.Loss.defaults()

    if arg == "mvtec_to_visa":
        c.data.protocol = "mvtec_to_visa"
        c.train.epochs = 2
    elif arg in ("dinov2", "dinov2_mvtec_to_visa"):
        # DINOv2 ViT-L/14 at 518: its native 37x37 grid; ImageNet normalization.
        c.backbones.vit = config_lib.backbone_config(
            "dinov2-vitl14", weights="weights/dinov2-vitl14", image_size=518,
            layers=(6, 12, 18, 24), pos_interpolation="bicubic")
        if arg == "dinov2_mvtec_to_visa":
            c.data.protocol = "mvtec_to_visa"
            c.train.epochs = 2
    elif arg == "paper_epochs":
        c.train.epochs = 15
    elif arg == "no_sca":
        c.model.use_sca = False
    elif arg == "no_saf":
        c.model.use_saf = False
    elif arg == "no_sca_saf":
        c.model.use_sca = False
        c.model.use_saf = False
    elif arg == "demo":
        c.backbones.vit = config_lib.backbone_config("clip-tiny", image_size=64, layers=(1, 2),
                                                     pos_interpolation="bilinear")
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.data.eval_batch_size = 16
        c.optim.lr = 1e-2
        c.optim.lr_groups = (SLOW_GROUP + "=1e-3",)
        c.train.epochs = 3
        c.train.remat = False
        c.model.dropout = 0.0
        c.model.score_sigma = 1.0
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
