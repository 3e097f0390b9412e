"""AnomalyCLIP (object-agnostic prompt learning, ICLR 2024, arXiv 2310.18961): the method is
zsad_jax/methods/anomalyclip/ (method.py, modules.py, losses.py, config.py); readings, the release's
bugs and the side-by-side check in docs/anomalyclip.md.

Variants (`--config anomalyclip.py:VARIANT`):
  (default) / mvtec_to_visa   prompts trained on MVTec-AD test, evaluated on VisA and every other
                              dataset whose root exists (protocol mvtec_to_all)
  visa_to_mvtec               prompts trained on VisA test, evaluated on MVTec-AD (protocol visa_to_mvtec)
  tap24, visa_to_mvtec_tap24  the release's shipped scripts (train.sh / test.sh): one tap, block 24
                              (`--features_list 24`), for each protocol
  no_dpam, no_deep_prompts    ablations: taps from the plain stream | no deep text prompts
  demo                        tiny random CLIP, synthetic data, minutes on a CPU

The default is mvtec_to_visa because the paper's protocol evaluates every dataset but MVTec-AD with
the MVTec-trained prompts (16 of its 17 datasets); the VisA-trained prompts serve MVTec-AD alone.

The release's checkpoints (`checkpoints/9_12_4_multiscale_visa/epoch_15.pth` = trained on MVTec-AD,
`checkpoints/9_12_4_multiscale/epoch_15.pth` = trained on VisA) evaluate without training:
  python -m weights_conversion.anomalyclip --src epoch_15.pth --dst weights/anomalyclip-mvtec
  ... --config anomalyclip.py --config.model.prompt_weights=weights/anomalyclip-mvtec
Ablation switches are config keys: --config.model.dpam=False, --config.model.dpam_start=12,
--config.model.deep_prompts=False, --config.model.deep_prompt_depth=5,
--config.model.deep_prompt_length=2, --config.backbones.clip.layers=6,12,18,24.
"""

from zsad_jax import config_lib
from zsad_jax.methods.anomalyclip import config as anomalyclip_config

VARIANTS = ("mvtec_to_visa", "visa_to_mvtec", "tap24", "visa_to_mvtec_tap24", "no_dpam",
            "no_deep_prompts", "demo")


def get_config(arg=None):
    arg = arg or "mvtec_to_visa"
    if arg not in VARIANTS:
        raise ValueError(f"unknown variant {arg!r}; known: {', '.join(VARIANTS)}")
    c = config_lib.base_config()
    c.method = "anomalyclip"
    c.seed = 111                        # test.py / train.py --seed
    # Frozen CLIP ViT-L/14@336 at 518x518 (37x37 grid); the 24x24 position table resized
    # bilinearly (torch F.interpolate(mode='bilinear', align_corners=False), AnomalyCLIP.py:362-370);
    # taps 6, 12, 18, 24 (test.py / train.py --features_list default).
    c.backbones.clip = config_lib.backbone_config(
        "clip-vit-l14-336", weights="weights/clip-vit-l14-336", image_size=518,
        layers=(6, 12, 18, 24), pos_interpolation="bilinear")
    c.data.protocol = "mvtec_to_all"
    c.data.batch_size = 8               # train.py --batch_size
    # DataLoader(shuffle=True) keeps the last partial batch (train.py:36): MVTec-AD test ends with
    # 5 images, VisA test with 2 (never 1, where the release's Dice would turn per-row).
    c.data.drop_last = False
    c.data.eval_batch_size = 8          # (test.py uses 1; the scores are per image here)
    # train.py:44: Adam(lr 1e-3, betas (0.5, 0.999)), no weight decay, no schedule; 15 epochs.
    c.optim.lr = 1e-3
    c.optim.b1 = 0.5
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.schedule = "constant"
    c.train.epochs = 15
    c.eval.smoothing_sigma = 4.0        # test.py --sigma: gaussian_filter(sigma=4) per map
    # The release's logged results (4 taps) beside ours in report.html; not for tap24/ablations.
    c.eval.paper_table = "anomalyclip.cross_dataset" if arg in ("mvtec_to_visa", "visa_to_mvtec") else ""

    # The model and loss sections with their defaults (the release's reading, one comment per key):
    # zsad_jax/methods/anomalyclip/config.py.
    c.model = anomalyclip_config.Model.defaults()
    c.loss = anomalyclip_config.Loss.defaults()

    if arg in ("visa_to_mvtec", "visa_to_mvtec_tap24"):
        c.data.protocol = "visa_to_mvtec"
    if arg in ("tap24", "visa_to_mvtec_tap24"):
        c.backbones.clip.layers = (24,)
    elif arg == "no_dpam":
        c.model.dpam = False
    elif arg == "no_deep_prompts":
        c.model.deep_prompts = False
    elif arg == "demo":
        # clip-tiny: 2 vision blocks (taps 1, 2; V-V attention in block 2), 2 text blocks (one
        # deep prompt, before block 2).
        c.backbones.clip = config_lib.backbone_config(
            "clip-tiny", weights="", image_size=64, layers=(1, 2), pos_interpolation="bilinear")
        c.model.dpam_start = 2
        c.model.prompt_length = 4
        c.model.deep_prompt_depth = 2
        c.model.deep_prompt_length = 2
        c.data.protocol = "synthetic"
        c.data.num_workers = 0
        c.data.eval_batch_size = 16
        c.optim.lr = 1e-2
        c.train.epochs = 30             # 5 steps an epoch on the synthetic classes: 150 steps
        c.train.eval_every = 75
        c.train.ckpt_every = 75
        c.eval.num_heatmaps = 2
        c.eval.smoothing_sigma = 1.0
    return c
