"""AnomalyCLIP's config sections (`config.model`, `config.loss`), typed, one comment per key.

Defaults = the official release (GitHub zqhang/AnomalyCLIP, commit 45ed4dd; `test.py` / `train.py`
argparse defaults); the readings and switches are in docs/anomalyclip.md. The tapped blocks are
`config.backbones.clip.layers` (release `--features_list`: 6 12 18 24 by default, 24 in its
shipped scripts).
"""

from __future__ import annotations

import dataclasses

from zsad_jax.config_types import Section


@dataclasses.dataclass(frozen=True)
class Model(Section):
    prompt_length: int = 12             # n_ctx: learnable vectors replacing "X" x n_ctx (test.py:188)
    object_word: str = "object"         # the one object-agnostic class name (prompt_ensemble.py:88)
    anomaly_word: str = "damaged"       # anomalous template "damaged {}" (prompt_ensemble.py:107)
    deep_prompts: bool = True           # ablation switch: deep compound prompts in the text tower
    # `depth`: deep prompts replace the text hidden states before text blocks 2..depth, i.e.
    # depth - 1 learnable tensors (test.py:187; AnomalyCLIP.py:232-254)
    deep_prompt_depth: int = 9
    deep_prompt_length: int = 4         # `t_n_ctx`: positions 1..t_n_ctx are replaced (test.py:189)
    deep_prompt_fp16: bool = True       # round the deep prompts to fp16 on the way in (release: .half())
    dpam: bool = True                   # ablation switch: DPAM's V-V attention stream for the taps
    # First 1-based block with V-V attention. The release's DPAM_layer = 20 replaces the attention
    # of the last 19 blocks: 6..24 of ViT-L/14 (AnomalyCLIP.py:344-353; test.py:71).
    dpam_start: int = 6
    temperature: float = 0.07           # fixed softmax temperature, CLIP's logit_scale unused
    prompt_weights: str = ""            # folder from `python -m weights_conversion.anomalyclip`

    def check(self, where):
        self.require(where, "prompt_length", self.prompt_length >= 1, "expected an integer >= 1")
        self.require(where, "deep_prompt_depth", self.deep_prompt_depth >= 2,
                     "expected an integer >= 2 (prompts before text blocks 2..depth); "
                     "model.deep_prompts=False switches them off")
        self.require(where, "deep_prompt_length", 1 <= self.deep_prompt_length <= self.prompt_length,
                     f"expected an integer in [1, model.prompt_length={self.prompt_length}]")
        self.require(where, "dpam_start", self.dpam_start >= 1, "expected a 1-based block index")
        self.require(where, "temperature", self.temperature > 0, "expected > 0")
        self.require(where, "object_word", bool(self.object_word.strip()), "expected a word")


@dataclasses.dataclass(frozen=True)
class Loss(Section):
    # L = seg_weight * sum_taps (focal + Dice_anomalous + Dice_normal) + cls * CE (train.py:87-104);
    # lam = 4 since commit 76b83e1 (2025-04-13), 1 before.
    seg_weight: float = 4.0
    focal: float = 1.0                  # weight of the focal term inside the segmentation sum
    dice: float = 1.0                   # weight of both Dice terms inside the segmentation sum
    cls: float = 1.0                    # weight of the image cross-entropy

    def check(self, where):
        for key in ("seg_weight", "focal", "dice", "cls"):
            self.require(where, key, getattr(self, key) >= 0, "expected >= 0")
