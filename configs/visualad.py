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
  paper_reading               the paper summary's readings instead of the release's (learnable token
                              positions, per-step cosine to 0.1x each group's rate, no per-token
                              clipping, frozen final LayerNorm, last partial batch dropped)
  demo                        tiny random CLIP, synthetic data, minutes on a CPU

Every paper variant reproduces the official release's training step for step (`scripts/CLIP.sh` +
`train.py`: the published checkpoints come from it): batch 8 with the last partial batch of each
epoch kept, seed 111, AdamW (betas 0.9/0.999, weight decay 0.01 on every parameter), lr 1e-3 for
the tokens and 1e-4 for SCA, SAF and the final LayerNorm, `CosineAnnealingLR(T_max=epochs,
eta_min=1e-4)` stepped once per epoch (one absolute floor: the 1e-4 groups never move), each
token's gradient clipped to norm 1 on its own, token position embeddings frozen (both = the class
token's), the release's focal loss (targets smoothed by 1e-5), 1 epoch VisA -> MVTec-AD and 2 epochs
MVTec-AD -> VisA, the last epoch evaluated, with CLIP's own ln_post (the release's test.py does not
load the trained one). docs/visualad.md lists every reading with the release's file:line.
"""

from zsad_jax import config_lib
from zsad_jax.methods.visualad import config as visualad_config

# Parameters trained at 0.1 x lr in the release: SCA, SAF and the final LayerNorm (its trainable
# copy, with model.train_final_norm).
SLOW_GROUP = "^head/(sca_|saf_|final_norm/)"

VARIANTS = ("visa_to_mvtec", "mvtec_to_visa", "dinov2", "dinov2_mvtec_to_visa", "paper_epochs",
            "no_sca", "no_saf", "no_sca_saf", "paper_reading", "demo")


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
    c.data.drop_last = False          # release: DataLoader(drop_last=False), 271 steps on VisA
    c.seed = 111                      # release train.py
    # Release: AdamW(betas 0.9/0.999, wd 0.01), tokens at lr, SCA + SAF + the final LayerNorm at
    # 0.1 * lr, CosineAnnealingLR(T_max=epochs, eta_min=0.1 * lr) stepped per epoch.
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.01
    c.optim.schedule = "cosine"
    c.optim.schedule_unit = "epoch"
    c.optim.end_lr_factor = 0.1
    c.optim.end_lr_of = "base"        # eta_min is one absolute value (1e-4) for every group
    c.optim.lr_groups = (SLOW_GROUP + "=1e-4",)
    c.optim.clip_each = ("^head/(anomaly|normal)_token$",)   # clip_grad_norm_ per token, norm 1
    c.optim.clip_each_norm = 1.0
    c.train.epochs = 1
    # Gradients reach the tokens through the whole frozen tower: the remat policy is chosen by
    # memory (none where the batch fits, dots, then full remat).
    c.train.remat = "auto"
    c.eval.paper_table = "visualad.cross_dataset"   # the paper's numbers beside ours in report.html

    # The architecture and loss sections with their defaults (one comment per key):
    # zsad_jax/methods/visualad/config.py; the release's choices where they differ.
    c.model = visualad_config.Model.defaults(learn_token_pos=False, train_final_norm=True,
                                             eval_final_norm="backbone")
    c.loss = visualad_config.Loss.defaults(focal="smoothed")

    if arg == "mvtec_to_visa":
        c.data.protocol = "mvtec_to_visa"
        c.train.epochs = 2
    elif arg in ("dinov2", "dinov2_mvtec_to_visa"):
        # DINOv2 ViT-L/14 at 518: its native 37x37 grid; ImageNet normalization.
        c.backbones.vit = config_lib.backbone_config(
            "dinov2-vitl14", weights="weights/dinov2-vitl14", image_size=518,
            layers=(6, 12, 18, 24), pos_interpolation="bicubic")
        c.eval.paper_table = "visualad.dinov2"
        if arg == "dinov2_mvtec_to_visa":
            c.data.protocol = "mvtec_to_visa"
            c.train.epochs = 2
    elif arg == "paper_epochs":
        c.train.epochs = 15
    elif arg in ("no_sca", "no_saf", "no_sca_saf"):
        # ablation rows (their paper numbers: experiments/visualad_ablation.py's table)
        c.eval.paper_table = ""
        c.model.use_sca = arg == "no_saf"
        c.model.use_saf = arg == "no_sca"
    elif arg == "paper_reading":
        c.model.learn_token_pos = True
        c.model.train_final_norm = False
        c.optim.schedule_unit = "step"
        c.optim.end_lr_of = "group"
        c.optim.clip_each = ()
        c.data.drop_last = True
        c.loss.focal = "clipped"
    elif arg == "demo":
        c.eval.paper_table = ""
        c.backbones.vit = config_lib.backbone_config("clip-tiny", image_size=64, layers=(1, 2),
                                                     pos_interpolation="bilinear")
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.data.eval_batch_size = 16
        c.optim.lr = 1e-2
        c.optim.lr_groups = (SLOW_GROUP + "=1e-3",)
        c.train.epochs = 3
        c.train.remat = "none"
        c.model.dropout = 0.0
        c.model.score_sigma = 1.0
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
