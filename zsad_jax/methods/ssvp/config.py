"""SSVP's config sections (`config.model`, `config.loss`), typed, one comment per key.

The readings behind each default are in docs/ssvp.md ("Readings", with the paper's words) and
`method.py`'s docstring. Defaults are the paper's reading; the other readings are the options.
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
    # DINO's tapped tokens: "final" (DINO's final LayerNorm, as get_intermediate_layers(norm=True))
    # | "raw" (the residual stream as it leaves the block)
    dino_norm: Literal["final", "raw"] = "final"
    # Global pair of eq. 1: "final" (CLIP's image embedding and DINO's class token, one token each:
    # eq. 3's softmax has one key, Attn = V, so the global ATF has no W_Q, W_K) | "layers" (the
    # class tokens of the tapped layers, eq. 3 attends over them; V_syn^global = the deepest one's)
    global_tokens: Literal["final", "layers"] = "final"
    # V_syn^global as "l2" (a unit vector, like CLIP's image embedding: eq. 19's <V, T> is then
    # Algorithm 1's CosineSim) | "none" (the ATF output as it is) for eqs. 7, 9, 15
    global_norm: Literal["l2", "none"] = "l2"
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
    # Key/value tokens z gives eq. 10 (1: one token, softmax weight 1, no W_Q / W_K) ...
    latent_tokens: int = 4
    # ... made by "project" (K_z = z W_K, V_z = z W_V with T outputs each) | "split" (z cut into T
    # chunks of vae_latent / T, each projected by the same W_K, W_V)
    latent_keys: Literal["project", "split"] = "project"
    attn_dim: int = 768                 # d_k of eq. 10
    # Evaluation z: "sample" (Algorithm 1 line 7, z = mu + eps sigma with one fixed draw eps ~ N(0, I),
    # key config.seed, shared by every image) | "mean" (z = mu)
    eval_latent: Literal["sample", "mean"] = "sample"
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
        if self.latent_keys == "split":
            self.require(where, "vae_latent", self.vae_latent % self.latent_tokens == 0,
                         f"expected a multiple of config.{where}.latent_tokens={self.latent_tokens} "
                         f"(latent_keys='split')")
        self.require(where, "tau", self.tau > 0, "expected > 0")
        self.require(where, "gamma", 0 <= self.gamma <= 1, "expected a value in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Loss(Section):
    beta: float = 0.1                   # KL weight of eq. 9
    lambda1: float = 1.0                # L_VAE weight (eq. 22)
    lambda2: float = 0.5                # L_reg weight (eq. 22)
    xi: float = 0.85                    # margin of eq. 12
    focal_gamma: float = 2.0            # lambda of eq. 20
    # Focal loss on: "fused" (Algorithm 3 line 8, Focal(P_map, GT_local): the evaluated map) |
    # "layers" (eq. 20's P_anom^(l), each layer's map, summed)
    seg_maps: Literal["fused", "layers"] = "fused"
    # Eq. 21: "sigmoid" (BCE(sigmoid(S_final))) | "probability" (BCE(S_final))
    class_mode: Literal["sigmoid", "probability"] = "sigmoid"
    # Eq. 9 reconstruction: "sum" (the squared L2 norm as written) | "mean" (over the feature dims)
    vae_reduction: Literal["sum", "mean"] = "sum"
    # Eq. 9 on sg(V_syn^global), the VAE's observed data: L_VAE trains the VAE only (True) | its
    # gradient also reaches HSVS through V_syn^global (False)
    vae_stop_gradient: bool = True

    def check(self, where):
        for key in ("beta", "lambda1", "lambda2", "focal_gamma"):
            self.require(where, key, getattr(self, key) >= 0, "expected >= 0")
        self.require(where, "xi", -1 <= self.xi <= 1, "expected a cosine in [-1, 1]")
