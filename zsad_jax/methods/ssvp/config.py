"""SSVP's config sections (`config.model`, `config.loss`), typed, one comment per key.

The readings behind each default are in docs/ssvp.md ("Readings") and `method.py`'s docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from zsad_jax.config_types import Section


@dataclasses.dataclass(frozen=True)
class Model(Section):
    # Ablation switches (SSVP Table 3).
    fusion: Literal["atf", "concat", "none"] = "atf"   # HSVS: ATF (eqs. 2-5) | concat (B) | none (A)
    use_vcpg: bool = True               # VAE + text-latent attention + gated injection (eqs. 7-12)
    use_vtam: bool = True               # AnomalyMoE gating + score enhancement (eqs. 15-19)
    # HSVS.
    clip_projection: Literal["frozen", "learned"] = "frozen"   # CLIP tokens -> D_c: ln_post + proj
    atf_dim: int = 768                  # d_head of eq. 2
    atf_mlp_hidden: int = 768           # hidden width of the fusion MLP of eq. 5
    # VCPG prompts (eq. 6).
    num_prompts: int = 3                # prompts per bank (3 normal + 3 abnormal)
    bg_length: int = 8                  # learnable [V]_bg tokens (shared)
    state_length: int = 4               # learnable [V]_state tokens (one sequence per prompt)
    # [CLASS]: "class_name" (the batch's class, '_' -> ' ') | "object" (object-agnostic)
    class_words: Literal["class_name", "object"] = "class_name"
    # VCPG VAE + attention (eqs. 7-11).
    vae_hidden: int = 512               # hidden width of the VAE's MLPs
    vae_latent: int = 128               # size of z
    latent_tokens: int = 1              # z split into this many key/value tokens for eq. 10
    attn_dim: int = 768                 # d_k of eq. 10
    eval_latent: Literal["mean", "sample"] = "mean"   # evaluation: z = mu (deterministic) | sample
    # VTAM (eqs. 13-19).
    tau: float = 0.07                   # softmax temperature of eq. 14
    gate_hidden: int = 256              # hidden width of F_gate^global (eq. 15)
    local_score: Literal["max", "mean_maxpool"] = "max"   # S_local: eq. 18 | Algorithm 1, line 10
    local_pool: int = 3                 # window of "mean_maxpool"
    global_score: Literal["softmax", "cosine"] = "softmax"   # S_global: eq. 14 | raw cosine
    gamma: float = 0.5                  # eq. 19

    def check(self, where):
        for key in ("atf_dim", "atf_mlp_hidden", "num_prompts", "vae_hidden", "vae_latent",
                    "latent_tokens", "attn_dim", "gate_hidden", "local_pool"):
            self.require(where, key, getattr(self, key) >= 1, "expected an integer >= 1")
        for key in ("bg_length", "state_length"):
            self.require(where, key, getattr(self, key) >= 0, "expected >= 0")
        self.require(where, "vae_latent", self.vae_latent % self.latent_tokens == 0,
                     f"expected a multiple of config.{where}.latent_tokens={self.latent_tokens}")
        self.require(where, "tau", self.tau > 0, "expected > 0")
        self.require(where, "gamma", 0 <= self.gamma <= 1, "expected a value in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Loss(Section):
    beta: float = 0.1                   # KL weight of eq. 9
    lambda1: float = 1.0                # L_VAE weight (eq. 22)
    lambda2: float = 0.5                # L_reg weight (eq. 22)
    xi: float = 0.85                    # margin of eq. 12
    focal_gamma: float = 2.0            # lambda of eq. 20
    # Focal loss on: "layers" (eq. 20, each P_anom^(l)) | "fused" (Algorithm 3, P_map)
    seg_maps: Literal["layers", "fused"] = "layers"
    # Eq. 21: "sigmoid" (BCE(sigmoid(S_final))) | "probability" (BCE(S_final))
    class_mode: Literal["sigmoid", "probability"] = "sigmoid"
    # Eq. 9 reconstruction: "sum" (squared L2 norm) | "mean" (over the feature dims)
    vae_reduction: Literal["sum", "mean"] = "sum"

    def check(self, where):
        for key in ("beta", "lambda1", "lambda2", "focal_gamma"):
            self.require(where, key, getattr(self, key) >= 0, "expected >= 0")
        self.require(where, "xi", -1 <= self.xi <= 1, "expected a cosine in [-1, 1]")
