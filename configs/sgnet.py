"""SGNet (semantic gravitons, CVPR 2026): ../shared/papers/sgnet.md; the method is
zsad_jax/methods/sgnet.py, its GPR losses zsad_jax/losses/gpr.py (docs/sgnet.md).

Variants (`--config sgnet.py:VARIANT`):
  (default) / visa_to_mvtec   the paper: train on VisA test, evaluate on MVTec-AD and the others
  mvtec_to_visa               train on MVTec-AD test, evaluate on VisA
  baseline, gin, gin_att, gin_equ, full   rows of the paper's ablation table (default protocol):
                              w/o GIN/GPR, + GIN, + GIN + attraction, + GIN + equilibrium, full
  demo                        tiny random CLIP, synthetic data, minutes on a CPU

Every GPR term is a config switch, so ablations need no code change, e.g.
  --config.gpr.attraction=False --config.gpr.w2=energy --config.model.gin=False
"""

from zsad_jax import config_lib

VARIANTS = ("visa_to_mvtec", "mvtec_to_visa", "baseline", "gin", "gin_att", "gin_equ", "full", "demo")


def get_config(arg=None):
    arg = arg or "visa_to_mvtec"
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "sgnet"
    # Frozen CLIP ViT-L/14@336 at 518x518 (37x37 grid); tapped layer i feeds GIN stage i.
    c.backbones.clip = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24))
    c.data.protocol = "visa_to_mvtec"
    c.data.batch_size = 8
    # Paper: AdamW (weight decay 0.05), lr 5e-5, polynomial decay. (Epochs are not in the summary;
    # 15 is the protocol's usual value, AnomalyCLIP / SSVP.)
    c.optim.lr = 5e-5
    c.optim.weight_decay = 0.05
    c.optim.schedule = "polynomial"
    c.optim.power = 1.0
    c.optim.end_lr_factor = 0.0
    c.train.epochs = 15

    c.model.num_gravitons = 20          # N
    c.model.num_stages = 4              # K
    c.model.gin = True                  # False: the ablation baseline (no graviton interaction)
    c.model.visual_input = "per_stage"  # "per_stage": stage i gets tapped layer i | "fused": all at F_0
    c.model.visual_dims = ()            # C_v^0..C_v^K (K+1 sizes); () = C_l everywhere
    c.model.decoder_dim = 0             # channels of X; 0 = C_l
    c.model.decoder = "sum"             # "sum" (top-down) | "concat"
    c.model.gate_reduction = 4          # hidden size of the gate MLP gamma = C_l / this
    c.model.spatial_conv = True         # depthwise 3x3 on the unflattened stage features
    c.model.image_score = "max"         # "max" | "topk_mean" | "text"
    c.model.topk_fraction = 0.01
    c.model.prompts = "learned"         # "learned" (AnomalyCLIP object-agnostic) | "templates"
    c.model.prompt_length = 12
    c.model.object_word = "object"
    c.model.templates = ("a photo of a {}.", "a cropped photo of the {}.", "a close-up photo of a {}.")
    c.model.normal_states = ("", "flawless", "perfect", "unblemished")
    c.model.abnormal_states = ("damaged", "broken", "defective", "flawed")

    c.loss.focal = 1.0                  # L_seg = focal + dice; L_cls = BCE (weights of the plain sum)
    c.loss.focal_gamma = 2.0
    c.loss.dice = 1.0
    c.loss.cls = 1.0

    # GPR (zsad_jax/losses/gpr.py: GPROptions documents every field).
    c.gpr = dict(
        attraction=True, equilibrium=True,
        lambda_grav=0.6,                # L_total = L_seg + L_cls + lambda_grav L_grav
        lambda_att=0.6,                 # L_grav = lambda_att L_att + (1 - lambda_att) L_equ
        tau=0.07, normalize=True, responsibility="token_mean", energy_temperature=1.0,
        w2="feature", w2_squared=False, equilibrium_energy="expected",
        visual_tokens="clip",           # f_v: "clip" (CLIP ln_post+proj of the stage's tap) | "stage"
        stages="all",                   # GPR on every stage's gravitons, averaged | "last"
    )

    if arg == "mvtec_to_visa":
        c.data.protocol = "mvtec_to_visa"
    elif arg == "baseline":
        c.model.gin = False
        c.gpr.attraction = False
        c.gpr.equilibrium = False
    elif arg == "gin":
        c.gpr.attraction = False
        c.gpr.equilibrium = False
    elif arg == "gin_att":
        c.gpr.equilibrium = False
    elif arg == "gin_equ":
        c.gpr.attraction = False
    elif arg == "demo":
        c.backbones.clip = config_lib.backbone_config(
            "clip-tiny", weights="", image_size=64, layers=(1, 2))
        c.model.num_stages = 2
        c.model.num_gravitons = 8
        c.model.prompt_length = 4
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.data.eval_batch_size = 16
        c.optim.lr = 1e-3
        c.optim.weight_decay = 0.0
        c.train.epochs = 20             # 5 steps an epoch on the synthetic classes: 100 steps
        c.train.eval_every = 50
        c.train.ckpt_every = 50
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
