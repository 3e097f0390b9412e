"""VisualAD's config sections (`config.model`, `config.loss`), typed, one comment per key.

Readings of the paper and the official release behind each default: docs/visualad.md and the
docstring of `method.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from zsad_jax.config_types import Section


@dataclasses.dataclass(frozen=True)
class Model(Section):
    token_source: Literal["last", "per_layer"] = "last"   # t_a, t_n of the last block (release)
    token_pos_init: Literal["class", "random"] = "class"  # both start as the class token's position
    learn_token_pos: bool = True        # paper: learnable; the release leaves them frozen (False)
    num_anchors: int = 4                # SCA anchors m (paper and release train.py: 4)
    sca_max_patches: int = 1536         # rows of SCA's key position-encoding table (release: 1536)
    res_scale_init: float = 0.01        # SCA residual scale alpha at init (release train.py: 0.01)
    dropout: float = 0.1                # SCA attention/output and SAF dropout (release: 0.1)
    saf_hidden: int = 0                 # SAF hidden width; 0 = backbone width (release)
    use_sca: bool = True                # ablation switch: spatial cross-attention on the tokens
    use_saf: bool = True                # ablation switch: self-alignment of the patches
    topk_ratio: float = 0.01            # image score: mean of the top 1% pixels
    # Gaussian sigma applied before the top-k image score at inference (the release's test.py
    # scores the smoothed map); 0 = the raw map.
    score_sigma: float = 4.0
    head_weights: str = ""              # folder from `python -m weights_conversion.visualad`
    # Train the final LayerNorm too (a trainable copy in head/final_norm, at the SCA/SAF rate), as
    # the release's training does ...
    train_final_norm: bool = False
    # ... and which one the evaluation applies: "backbone" (the release's test.py never loads the
    # trained ln_post) or "trained" (the copy the training used).
    eval_final_norm: Literal["backbone", "trained"] = "backbone"

    def check(self, where):
        for key in ("num_anchors", "sca_max_patches"):
            self.require(where, key, getattr(self, key) >= 1, "expected an integer >= 1")
        self.require(where, "saf_hidden", self.saf_hidden >= 0, "expected >= 0 (0 = backbone width)")
        self.require(where, "dropout", 0 <= self.dropout < 1, "expected a value in [0, 1)")
        self.require(where, "topk_ratio", 0 < self.topk_ratio <= 1, "expected a value in (0, 1]")
        self.require(where, "score_sigma", self.score_sigma >= 0, "expected >= 0 (0 = off)")


@dataclasses.dataclass(frozen=True)
class Loss(Section):
    # Focal loss: "smoothed" = the release's FocalLoss (targets clamped to [1e-5, 1 - 1e-5],
    # pt + 1e-5) | "clipped" = probabilities clipped to [1e-6, 1 - 1e-6] (the summary's plain focal)
    focal: Literal["smoothed", "clipped"] = "smoothed"
    margin: float = 0.5                 # L_ctr = relu(cos(t_a, t_n) + margin): zero beyond 120 deg
    use_cls: bool = True                # ablation switches of the three terms
    use_seg: bool = True
    use_ctr: bool = True
