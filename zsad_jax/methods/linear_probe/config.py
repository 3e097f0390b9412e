"""Config sections of the reference linear probe (`config.model`, `config.loss`)."""

from __future__ import annotations

import dataclasses

from zsad_jax.config_types import Section


@dataclasses.dataclass(frozen=True)
class Model(Section):
    image_size: int = 64                # input side (a multiple of patch)
    patch: int = 8                      # patch side of the frozen random patch embedding
    width: int = 32                     # channels of the frozen random features
    context_deviation: bool = False     # score |feature - image mean| (transfers to new classes)

    def check(self, where):
        self.require(where, "patch", self.patch > 0, "expected > 0")
        self.require(where, "image_size", self.image_size > 0 and self.image_size % self.patch == 0,
                     f"expected a positive multiple of model.patch={self.patch}")
        self.require(where, "width", self.width > 0, "expected > 0")


@dataclasses.dataclass(frozen=True)
class Loss(Section):
    balanced_pixel_bce: bool = False    # anomalous / normal pixels weigh half each
