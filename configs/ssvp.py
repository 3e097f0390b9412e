"""SSVP (synergistic semantic-visual prompting): ../shared/papers/ssvp.md, docs/ssvp.md.

Variants (`--config ssvp.py:VARIANT`; combine with commas, e.g. `ssvp.py:mvtec_to_visa,B`):
  (default) / visa_to_mvtec   the paper: train on VisA, evaluate on MVTec-AD and the others
  mvtec_to_visa               train on MVTec-AD, evaluate on VisA
  A, B, C, D, E               rows of the component ablation (Table 3):
                                A  no HSVS / VCPG / VTAM (CLIP only, learnable prompts; NOT Bayes-PFL)
                                B  HSVS with plain concatenation instead of ATF
                                C  HSVS (ATF)          D  ATF + VCPG          E  full model (= default)
  dinov2_vitl, dinov3_vits, dinov3_vitb, dinov3_vitl   auxiliary backbone of Table 5 (L = default)
  demo                        tiny random CLIP + tiny random DINOv3, synthetic data, minutes on a CPU
"""

from zsad_jax import config_lib

PROTOCOLS = ("visa_to_mvtec", "mvtec_to_visa")
ABLATIONS = ("A", "B", "C", "D", "E")
DINO_VARIANTS = {
    # name: (arch, weights folder, image size giving a 37x37 grid, tapped 1-based blocks)
    # 12-block models use the paper's {3, 6, 9, 11}; 24-block models the same relative depths
    # ({3, 6, 9, 11} * 2 = {6, 12, 18, 22}), see docs/ssvp.md.
    "dinov3_vitl": ("dinov3-vitl16", "weights/dinov3-vitl16", 592, (6, 12, 18, 22)),
    "dinov3_vitb": ("dinov3-vitb16", "weights/dinov3-vitb16", 592, (3, 6, 9, 11)),
    "dinov3_vits": ("dinov3-vits16", "weights/dinov3-vits16", 592, (3, 6, 9, 11)),
    "dinov2_vitl": ("dinov2-vitl14", "weights/dinov2-vitl14", 518, (6, 12, 18, 22)),
}
VARIANTS = PROTOCOLS + ABLATIONS + tuple(DINO_VARIANTS) + ("demo",)


def get_config(arg=None):
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "ssvp"
    # CLIP ViT-L/14@336 at 518 and DINOv3 ViT-L/16 at 592: both 37x37 grids (sec. 4.2).
    c.backbones.clip = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24))
    arch, weights, size, layers = DINO_VARIANTS["dinov3_vitl"]
    c.backbones.dino = config_lib.backbone_config(arch, weights=weights, image_size=size, layers=layers)
    c.data.protocol = "visa_to_mvtec"
    c.data.batch_size = 8
    # Sec. 4.2: 15 epochs, batch 8, AdamW, lr 5e-4 prompt embeddings / 1e-4 VAE and projections,
    # cosine decay. Every trainable parameter lives under "ssvp/"; the prompts under "ssvp/prompts/".
    c.optim.lr = 1e-4
    c.optim.schedule = "cosine"
    c.optim.lr_groups = ("^ssvp/prompts/=5e-4",)
    c.train.epochs = 15

    m = c.model
    # Ablation switches (Table 3).
    m.fusion = "atf"                # HSVS: "atf" (eqs. 2-5) | "concat" (model B) | "none" (model A)
    m.use_vcpg = True               # VAE + text-latent attention + gated injection (eqs. 7-12)
    m.use_vtam = True               # AnomalyMoE gating + score enhancement (eqs. 15-19)
    # HSVS.
    m.clip_projection = "frozen"    # CLIP tokens -> D_c: "frozen" (CLIP's ln_post + proj) | "learned"
    m.atf_dim = 768                 # d_head of eq. 2
    m.atf_mlp_hidden = 768          # hidden width of the fusion MLP of eq. 5
    # VCPG prompts (eq. 6).
    m.num_prompts = 3               # prompts per bank (3 normal + 3 abnormal)
    m.bg_length = 8                 # learnable [V]_bg tokens (shared)
    m.state_length = 4              # learnable [V]_state tokens (one sequence per prompt)
    m.class_words = "class_name"    # [CLASS]: "class_name" (batch's class, '_' -> ' ') | "object"
    # VCPG VAE + attention (eqs. 7-11).
    m.vae_hidden = 512
    m.vae_latent = 128
    m.latent_tokens = 1             # z split into this many key/value tokens for eq. 10 (1 = paper)
    m.attn_dim = 768                # d_k of eq. 10
    m.eval_latent = "mean"          # evaluation: "mean" (z = mu, deterministic) | "sample"
    # VTAM (eqs. 13-19).
    m.tau = 0.07                    # softmax temperature of eq. 14
    m.gate_hidden = 256             # hidden width of F_gate^global (eq. 15)
    m.local_score = "max"           # S_local: "max" (eq. 18) | "mean_maxpool" (Algorithm 1, line 10)
    m.local_pool = 3                # window of "mean_maxpool"
    m.global_score = "softmax"      # S_global: "softmax" (eq. 14 on V_syn^global) | "cosine"
    m.gamma = 0.5                   # eq. 19

    c.loss.beta = 0.1               # KL weight of eq. 9
    c.loss.lambda1 = 1.0            # L_VAE weight (eq. 22)
    c.loss.lambda2 = 0.5            # L_reg weight (eq. 22)
    c.loss.xi = 0.85                # margin of eq. 12
    c.loss.focal_gamma = 2.0        # lambda of eq. 20
    c.loss.seg_maps = "layers"      # focal on: "layers" (eq. 20, each P_anom^(l)) | "fused" (Alg. 3, P_map)
    c.loss.class_mode = "sigmoid"   # eq. 21: "sigmoid" (BCE(sigmoid(S_final))) | "probability"
    c.loss.vae_reduction = "sum"    # eq. 9 reconstruction: "sum" (squared L2 norm) | "mean"

    for part in parts:
        if part in PROTOCOLS:
            c.data.protocol = part
        elif part in DINO_VARIANTS:
            arch, weights, size, layers = DINO_VARIANTS[part]
            c.backbones.dino = config_lib.backbone_config(arch, weights=weights, image_size=size,
                                                          layers=layers)
        elif part == "A":
            m.fusion, m.use_vcpg, m.use_vtam = "none", False, False
        elif part == "B":
            m.fusion, m.use_vcpg, m.use_vtam = "concat", False, False
        elif part == "C":
            m.fusion, m.use_vcpg, m.use_vtam = "atf", False, False
        elif part == "D":
            m.fusion, m.use_vcpg, m.use_vtam = "atf", True, False
        elif part == "E":
            m.fusion, m.use_vcpg, m.use_vtam = "atf", True, True
        elif part == "demo":
            # clip-tiny and dinov3-tiny both have 8 px patches: 64 px gives both an 8x8 grid.
            c.backbones.clip = config_lib.backbone_config("clip-tiny", image_size=64, layers=(1, 2))
            c.backbones.dino = config_lib.backbone_config("dinov3-tiny", image_size=64, layers=(1, 2))
            c.data.protocol = "synthetic"
            c.data.num_workers = 0
            c.data.eval_batch_size = 16
            c.optim.lr = 1e-3
            c.optim.lr_groups = ("^ssvp/prompts/=5e-3",)
            c.train.epochs = 3
            c.train.log_every = 5
            c.eval.num_heatmaps = 2
            c.eval.smoothing_sigma = 1.0
            m.atf_dim = m.atf_mlp_hidden = m.attn_dim = 32
            m.vae_hidden, m.vae_latent, m.gate_hidden = 32, 8, 16
            m.bg_length, m.state_length = 2, 2
    # Model A uses no DINO: the backbone (and its image view) is dropped.
    if m.fusion == "none":
        del c.backbones["dino"]
    return c
