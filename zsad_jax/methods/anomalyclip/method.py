"""AnomalyCLIP: object-agnostic prompt learning for zero-shot anomaly detection (Zhou et al.,
ICLR 2024, arXiv 2310.18961), equal to the official release (GitHub zqhang/AnomalyCLIP, commit
45ed4dd; `AC.py` = AnomalyCLIP_lib/AnomalyCLIP.py, `PE.py` = prompt_ensemble.py).

    text:  "X x n object." / "X x n damaged object." -> token embeddings, "X"s replaced by the
           learned contexts -> frozen CLIP text tower with deep prompts (positions 1..t replaced
           before blocks 2..depth, rounded to fp16) -> t_n, t_a (2, E), L2-normalized
    image: frozen CLIP ViT with DPAM: from block `dpam_start` on, a second stream accumulates the
           V-V attention softmax(v v^T / sqrt(hd)) v of each block, computed from ln_1 of the
           original stream, without MLP. Taps = that stream at `backbones.clip.layers`, each
           ln_post + proj; global feature g = class token of the ORIGINAL stream after the last
           block @ proj, without ln_post (AC.py:380-387)
    maps:  per tap, softmax(cos(token, [t_n, t_a]) / 0.07), the CLS row dropped, probabilities
           upsampled bilinearly to the mask size, (p_a + 1 - p_n) / 2; SUMMED over the taps
    score: softmax(cos(g, [t_n, t_a]) / 0.07)[anomalous], per image
    loss:  losses.py (4 x sum_taps (focal + Dice + Dice) + image CE)

Parameters: {"backbones": {"clip": frozen CLIP}, "head": {"ctx_normal", "ctx_anomalous",
"deep_prompts"}}; trainable: `head/`. The image side is frozen (`frozen_features`: the projected
taps and the global feature), so the feature cache works; the text tower runs inside the loss and
the outputs (its weights get no gradient). Where the deep prompts and the original-stream output
live: `zsad_jax.backbones.clip` (`ClipText.run_deep_prompts`, `encode_image(final_hidden=True)`);
the V-V stream is `zsad_jax.backbones.layers.run_blocks(vv_from_layer=...)`.

The release's bugs (docs/anomalyclip.md): mimicked: the global feature skips ln_post, deep prompts
rounded to fp16 (`model.deep_prompt_fp16`), the sum over taps, the fixed temperature 0.07.
Fixed: the image score keeps only image 0 of a batch (test.py:95; here per image); the position
table is resized in place (AC.py:370; here always from the native table).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax import ops
from zsad_jax.backbones.config import ARCHS
from zsad_jax.config_types import ConfigError
from zsad_jax.methods.anomalyclip import losses as aloss
from zsad_jax.methods.anomalyclip import modules
from zsad_jax.methods.anomalyclip import weights as prompt_files
from zsad_jax.methods.anomalyclip.config import Loss, Model
from zsad_jax.methods.base import FrozenFeaturesMethod

VIEW = "clip"
NUM_PROMPTS = 2                         # [normal, anomalous]
# A loaded checkpoint's frozen token embeddings (prefix / suffix) must equal this CLIP's to this
# relative tolerance (max abs difference / max abs value): the prompts were trained with it.
BUFFER_RTOL = 1e-4


class AnomalyCLIP(FrozenFeaturesMethod):
    """See the module docstring."""

    name = "anomalyclip"
    config_sections = {"model": Model, "loss": Loss}

    @classmethod
    def check_config(cls, config, sections):
        cls.require_backbones(config, [VIEW], "AnomalyCLIP (a CLIP with a text tower)")
        spec = config.backbones[VIEW]
        if not spec.arch.startswith("clip"):
            raise ConfigError(f"config.backbones.{VIEW}.arch={spec.arch!r}: AnomalyCLIP needs a CLIP "
                              f"with a text tower")
        arch, m = ARCHS[spec.arch], sections["model"]
        if not tuple(spec.layers):
            raise ConfigError(f"config.backbones.{VIEW}.layers is empty: AnomalyCLIP needs at least "
                              f"one tapped block (release --features_list)")
        if m.dpam and m.dpam_start > arch.depth:
            raise ConfigError(f"config.model.dpam_start={m.dpam_start}: {spec.arch} has {arch.depth} "
                              f"blocks (model.dpam=False switches DPAM off)")
        if m.deep_prompts and m.deep_prompt_depth > arch.text_depth:
            raise ConfigError(f"config.model.deep_prompt_depth={m.deep_prompt_depth}: the deep "
                              f"prompts go before text blocks 2..depth, {spec.arch} has "
                              f"{arch.text_depth} text blocks")

    def __init__(self, config):
        super().__init__(config)
        self.model_cfg: Model = self.sections["model"]
        self.loss_cfg: Loss = self.sections["loss"]
        m = self.model_cfg
        self.vv_from_layer = m.dpam_start if m.dpam else 0
        self.clip = self.build_backbone(VIEW, vv_from_layer=self.vv_from_layer)
        if not self.clip.has_text:
            raise ConfigError(f"config.backbones.{VIEW} ({self.clip.arch.family}, weights "
                              f"{self.clip.weights!r}) has no text tower; AnomalyCLIP needs one")
        self.deep_count = m.deep_prompt_depth - 1 if m.deep_prompts else 0

    # ---- prompts ---------------------------------------------------------------------------
    @functools.cache  # noqa: B019  (one method object per config; the ids are constants)
    def prompt_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Token ids (2, L) int32 of "X .. X object." / "X .. X damaged object." (PE.py:156-177)
        and their EOT positions (2,)."""
        m = self.model_cfg
        prefix = " ".join(["X"] * m.prompt_length)
        texts = [f"{prefix} {m.object_word}.", f"{prefix} {m.anomaly_word} {m.object_word}."]
        try:
            ids = np.asarray(self.clip.tokenizer()(texts, truncate=False), np.int32)
        except ValueError as e:
            raise ConfigError(f"config.model.prompt_length={m.prompt_length}: the prompts do not "
                              f"fit the text context ({e})") from None
        x_ids = ids[:, 1:1 + m.prompt_length]
        if np.unique(x_ids).size != 1 or np.any(ids[:, 1 + m.prompt_length] == x_ids[:, 0]):
            raise ValueError(f"the tokenizer does not give one token per 'X' in {texts[0]!r}: "
                             f"{ids[0, :m.prompt_length + 3].tolist()}")
        eot = np.argmax(ids == self.clip.arch.eot_token_id, axis=-1).astype(np.int32)
        return ids, eot

    def text_features(self, params) -> jax.Array:
        """[t_n, t_a]: (2, E), L2-normalized. Gradient reaches the head's prompts only."""
        m = self.model_cfg
        tower = jax.lax.stop_gradient(params["backbones"][VIEW])
        head = params["head"]
        ids, eot = self.prompt_tokens()
        embeddings = self.clip.embed_tokens(tower, jnp.asarray(ids))
        prompts = modules.prompt_embeddings(embeddings, head["ctx_normal"], head["ctx_anomalous"])
        deep = None
        if self.deep_count:
            deep = modules.deep_prompt_inputs(head["deep_prompts"], NUM_PROMPTS, m.deep_prompt_fp16)
        text = self.clip.encode_text_embeddings(tower, prompts, jnp.asarray(eot), deep_prompts=deep)
        return ops.l2_normalize(text.astype(jnp.float32))

    # ---- parameters ------------------------------------------------------------------------
    def init_head(self, rng, towers):
        m = self.model_cfg
        head = modules.init_prompts(rng, self.clip.arch.text_width, m.prompt_length,
                                    self.deep_count, m.deep_prompt_length)
        if m.prompt_weights:
            head = self._load_prompts(head, towers[VIEW])
        return head

    def _load_prompts(self, head, tower):
        """The converted release prompts, checked against this config and this CLIP."""
        m, path = self.model_cfg, self.model_cfg.prompt_weights
        params, buffers, meta = prompt_files.load_prompts(path)
        expected = dict(prompt_length=m.prompt_length, deep_prompt_length=m.deep_prompt_length,
                        deep_prompt_depth=self.deep_count + 1, text_width=self.clip.arch.text_width)
        if not self.deep_count:                       # no deep prompts: their length is moot
            expected.pop("deep_prompt_length")
        for key, value in expected.items():
            if meta.get(key) != value:
                raise ValueError(f"config.model.prompt_weights={path!r}: {key}={meta.get(key)!r} in "
                                 f"{prompt_files.META_FILE}, this config needs {value!r}")
        if sorted(params) != sorted(head):
            raise ValueError(f"config.model.prompt_weights={path!r}: holds {sorted(params)}, this "
                             f"config trains {sorted(head)}")
        for key, value in params.items():
            if value.shape != head[key].shape:
                raise ValueError(f"config.model.prompt_weights={path!r}: {key} has shape "
                                 f"{value.shape}, this config expects {head[key].shape}")
        ids, _ = self.prompt_tokens()
        if not np.array_equal(buffers["tokenized_prompts"], ids):
            raise ValueError(f"config.model.prompt_weights={path!r}: the checkpoint's tokenized "
                             f"prompts differ from this CLIP tokenizer's "
                             f"({buffers['tokenized_prompts'][:, :18].tolist()} vs "
                             f"{ids[:, :18].tolist()}): convert the CLIP with the release's BPE "
                             f"vocabulary")
        embeddings = np.asarray(self.clip.embed_tokens(tower, jnp.asarray(ids)), np.float32)
        n = m.prompt_length
        for name, ours in (("token_prefix", embeddings[:, :1]), ("token_suffix", embeddings[:, 1 + n:])):
            theirs = buffers[name]
            err = np.abs(theirs - ours).max() / max(np.abs(ours).max(), 1e-12)
            if theirs.shape != ours.shape or not err <= BUFFER_RTOL:
                raise ValueError(f"config.model.prompt_weights={path!r}: the checkpoint's {name} "
                                 f"(frozen token embeddings) differ from this CLIP's (relative "
                                 f"{err:.3g}): the prompts were trained with another CLIP")
        return {k: jnp.asarray(v) for k, v in params.items()}

    # ---- frozen part -----------------------------------------------------------------------
    def frozen_features(self, params, batch):
        """{"tokens": per tap (B, P, E) = ln_post + proj of the tapped (V-V stream) patch tokens;
        "global": (B, E) = original-stream class token after the last block @ proj, no ln_post}."""
        tower = jax.lax.stop_gradient(params["backbones"][VIEW])
        out = self.clip.encode_image(tower, batch["images"][VIEW], final_hidden=True)
        tokens = tuple(self.clip.project(tower, out.patch_tokens(i)) for i in range(len(out.layers)))
        cls = out.final[:, out.num_prefix - 1]
        proj = self.clip.param(tower, "image_proj")
        glob = cls.astype(jnp.float32) @ proj.astype(jnp.float32)
        return jax.lax.stop_gradient({"tokens": tokens, "global": glob})

    def feature_cache_key(self):
        key = super().feature_cache_key()
        key["anomalyclip"] = {"vv_from_layer": self.vv_from_layer,
                              "features": "taps ln_post+proj; class token @ proj, no ln_post"}
        return key

    # ---- trainable part --------------------------------------------------------------------
    def tap_probabilities(self, features, text) -> list[jax.Array]:
        """Per tap: (B, 2, M, M) upsampled [normal, anomalous] probabilities."""
        t = self.model_cfg.temperature
        return [modules.upsampled_probabilities(modules.token_probabilities(tokens, text, t),
                                                self.clip.grid, self.mask_size)
                for tokens in features["tokens"]]

    def outputs_from_features(self, params, features, batch):
        """(sum over taps of the anomaly maps (B, M, M), image scores (B,)); maps unsmoothed."""
        text = self.text_features(params)
        maps = sum(modules.anomaly_map(p) for p in self.tap_probabilities(features, text))
        return maps, modules.image_scores(features["global"], text, self.model_cfg.temperature)

    def loss_from_features(self, params, features, batch, rng):
        del rng                                                     # deterministic: no dropout
        text = self.text_features(params)
        logits = modules.image_logits(features["global"], text, self.model_cfg.temperature)
        lc = self.loss_cfg
        return aloss.anomalyclip_loss(self.tap_probabilities(features, text), batch["masks"], logits,
                                      batch["labels"], seg_weight=lc.seg_weight, focal=lc.focal,
                                      dice=lc.dice, cls=lc.cls)

    def required_files(self):
        out = super().required_files()
        path = self.model_cfg.prompt_weights
        if path:
            out.append((path, f"converted AnomalyCLIP prompts: {prompt_files.HOW.format(path)}"))
        return out
