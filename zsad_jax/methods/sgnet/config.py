"""SGNet's config sections (`config.model`, `config.loss`, `config.gpr`), typed, one comment per key.

The readings behind each default are in docs/sgnet.md ("Readings") and the docstrings of
`method.py`, `modules.py` and `gpr.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from zsad_jax.config_types import Section
from zsad_jax.methods.sgnet.gpr import GPROptions


@dataclasses.dataclass(frozen=True)
class Model(Section):
    num_gravitons: int = 20             # N learnable semantic gravitons
    num_stages: int = 4                 # K GIN stages
    gin: bool = True                    # False: the ablation baseline (no gravitons; text scores patches)
    # the baseline's patch tokens: "clip" = CLIP ln_post + proj of each tapped layer (AnomalyCLIP)
    # | "decoded" = X of the GIN rows' trainable projections and decoder
    baseline_tokens: Literal["clip", "decoded"] = "clip"
    text_tau: float = 0.07              # baseline: Softmax([cos_nor, cos_abn] / tau) (AnomalyCLIP's 0.07)
    # "fused": all tapped layers fused into F_0 ("multi-layer features F_0") | "per_stage": tapped
    # layer i is added to stage i's input
    visual_input: Literal["fused", "per_stage"] = "fused"
    visual_dims: tuple[int, ...] = ()   # C_v^0..C_v^K (K + 1 sizes); () = C_l everywhere
    decoder_dim: int = 0                # channels of X; 0 = C_l
    decoder: Literal["sum", "concat"] = "sum"   # hierarchical decoding: top-down sum | one Dense
    gate_reduction: int = 4             # hidden size of the gate MLP gamma = C_l / this
    spatial_conv: bool = True           # depthwise 3x3 on the unflattened stage features
    image_score: Literal["max", "topk_mean", "text"] = "max"   # how the image logit S is formed
    topk_fraction: float = 0.01         # of "topk_mean"
    # "learned": AnomalyCLIP's object-agnostic prompts | "templates": a fixed prompt ensemble
    prompts: Literal["learned", "templates"] = "learned"
    prompt_length: int = 12             # learned context vectors per prompt
    object_word: str = "object"         # the object word of the prompts
    templates: tuple[str, ...] = ("a photo of a {}.", "a cropped photo of the {}.",
                                  "a close-up photo of a {}.")
    normal_states: tuple[str, ...] = ("", "flawless", "perfect", "unblemished")
    abnormal_states: tuple[str, ...] = ("damaged", "broken", "defective", "flawed")

    def check(self, where):
        for key in ("num_gravitons", "num_stages", "gate_reduction", "prompt_length"):
            self.require(where, key, getattr(self, key) >= 1, "expected an integer >= 1")
        self.require(where, "visual_dims", not self.visual_dims
                     or len(self.visual_dims) == self.num_stages + 1,
                     f"expected () or K + 1 = {self.num_stages + 1} sizes (C_v^0..C_v^K)")
        self.require(where, "decoder_dim", self.decoder_dim >= 0, "expected >= 0 (0 = C_l)")
        self.require(where, "topk_fraction", 0 < self.topk_fraction <= 1, "expected a value in (0, 1]")
        self.require(where, "text_tau", self.text_tau > 0, "expected > 0")


@dataclasses.dataclass(frozen=True)
class Loss(Section):
    focal: float = 1.0                  # L_seg = focal + dice; L_cls = BCE (weights of the plain sum)
    focal_gamma: float = 2.0            # focusing parameter of the focal loss
    dice: float = 1.0                   # weight of the Dice term of L_seg
    cls: float = 1.0                    # weight of L_cls

    def check(self, where):
        for key in ("focal", "focal_gamma", "dice", "cls"):
            self.require(where, key, getattr(self, key) >= 0, "expected >= 0")


@dataclasses.dataclass(frozen=True)
class GPR(GPROptions):
    """`config.gpr`: the loss options of `gpr.GPROptions` plus how the method feeds them."""

    lambda_grav: float = 0.6            # L_total = L_seg + L_cls + lambda_grav L_grav
    # f_v: "stage" (stage i's updated visual tokens through its Proj: trainable, GPR pulls them)
    # | "clip" (CLIP ln_post + proj of the stage's tapped layer: frozen, GPR cannot move them)
    visual_tokens: Literal["stage", "clip"] = "stage"
    stages: Literal["all", "last"] = "all"      # GPR on every stage's gravitons (averaged) | last

    def check(self, where):
        super().check(where)
        self.require(where, "lambda_grav", self.lambda_grav >= 0, "expected >= 0")

    @property
    def active(self) -> bool:
        """Whether L_grav is computed at all."""
        return bool((self.attraction or self.equilibrium) and self.lambda_grav > 0)
