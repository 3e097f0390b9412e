"""SSVP: synergistic semantic-visual prompting (../shared/papers/ssvp.md; user guide docs/ssvp.md).

Two frozen backbones, two image views: "clip" (CLIP ViT-L/14@336 at 518) and "dino" (DINOv3 ViT-L/16
at 592), both giving a 37x37 patch grid. Per image (Algorithm 1):

1. HSVS (eqs. 1-5): per tapped layer, CLIP patch tokens (mapped to D_c by CLIP's own ln_post + proj)
   and DINO patch tokens are fused by an ATF block -> V_syn^local,(l); the pooled CLIP embedding and
   the final-normed DINO class token by another ATF -> V_syn^global.
2. VCPG (eqs. 6-12): prompts "<sot> [V]_bg [V]_state [CLASS] . <eot>" (K normal + K abnormal) through
   the frozen CLIP text tower -> T_init; VAE on V_syn^global -> z; text-latent cross-attention ->
   delta_inj; T_final = LayerNorm(T_init + alpha delta_inj).
3. VTAM (eqs. 13-19): per-layer softmax(cos / tau) maps P_anom^(l), AnomalyMoE gating -> P_map,
   S_final = (1 - gamma) S_global + gamma S_local.

Parameters: {"clip": frozen, "dino": frozen, "ssvp": trainable}; the prompt embeddings are under
"ssvp/prompts/" (their own learning rate through `config.optim.lr_groups`).

[CLASS] (eq. 6): `prepare_batch` turns the host key `class_name` into token ids on the host:
batch["text"] = {"ids": (B, C) int32 [<sot>, C_ctx placeholders, words of the class name ('_' -> ' ')
+ ".", <eot>, 0 ...], "eot": (B,) int32 position of <eot>}; the placeholders' embeddings are
replaced by the learned [V]_bg, [V]_state inside the compiled step. An empty class name (e.g.
`predict` on loose images) gets the word "object". With `model.class_words = "object"` every image
gets "object" (object-agnostic prompts): the token ids are constants (`text` is not needed) and the
text tower runs once per batch instead of once per image.

Reading choices (the paper is silent or ambiguous; alternatives are config options):
* D_c = 768 is CLIP ViT-L/14's joint embedding size: CLIP tokens are mapped with CLIP's frozen
  ln_post + proj (`model.clip_projection="frozen"`; "learned": a trainable Dense per layer).
* Global pair: CLIP's pooled embedding and DINO's final-normed class token (one token each, so the
  cross-attentions of eq. 3 attend to a single key).
* K prompts per bank are averaged (L2-normalised mean) into one normal and one abnormal embedding
  before eqs. 13-14; S_global (Algorithm 1's CosineSim(V_syn^global, T_final)) is the softmax of
  eq. 14 applied to V_syn^global (`model.global_score="softmax"`; "cosine": raw cosine with the
  abnormal embedding).
* z is one vector (`model.latent_tokens=1`): eq. 10's softmax then has one key and delta_inj = z W_V;
  latent_tokens > 1 splits z into that many key/value tokens.
* Eq. 20's focal loss is applied to every layer's P_anom^(l) and summed (`loss.seg_maps="layers"`);
  Algorithm 3 applies it to P_map ("fused"). Maps are bilinearly resized to the mask size first.
* S_local = spatial max of P_map (eq. 18, the precise statement) by default; Algorithm 1's
  "Mean(SpatialMaxPool)" is `model.local_score="mean_maxpool"`.
* Ablations: without VTAM, P_map is the mean of the layer maps and S_final = S_global; without VCPG,
  T_final = T_init (no VAE, no margin term); without HSVS (model A) no DINO backbone is used and
  V_syn = the CLIP features.

Feature cache (`config.train.feature_cache`): everything before HSVS is frozen, so
`frozen_features` returns the tapped CLIP / DINO patch tokens and the global tokens (the
`_image_features` dict); `loss_from_features` runs HSVS, VCPG and VTAM on them, the text tower
included (it runs on the learnable prompts every step anyway). The class-word token ids are not
cached: they stay per-image host data (`batch["text"]`, remade by `prepare_batch` from `class_name`
each step), so the cache does not depend on the tokenizer or the prompt layout.
`outputs_from_features(params, features)` takes them as `features["text"]` (the contract passes no
batch), which is optional with `model.class_words="object"`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax.losses import ssvp as ssvp_losses
from zsad_jax.methods import ssvp_modules as mods
from zsad_jax.methods.base import ImageView, Method, compute_dtype

FUSIONS = ("atf", "concat", "none")


class SSVPHead(nn.Module):
    """Every trainable part of SSVP (HSVS, prompts, VCPG, VTAM)."""

    num_layers: int
    embed_dim: int           # D_c (CLIP joint embedding size)
    fusion: str = "atf"
    use_vcpg: bool = True
    use_vtam: bool = True
    learned_clip_projection: bool = False
    atf_dim: int = 768
    atf_mlp_hidden: int = 768
    num_prompts: int = 3
    bg_length: int = 8
    state_length: int = 4
    vae_hidden: int = 512
    vae_latent: int = 128
    latent_tokens: int = 1
    attn_dim: int = 768
    gate_hidden: int = 256

    def setup(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"config.model.fusion={self.fusion!r}: use one of {FUSIONS}")
        if self.learned_clip_projection:
            self.clip_proj = [nn.Dense(self.embed_dim, name=f"clip_proj_{i}")
                              for i in range(self.num_layers + 1)]
        if self.fusion != "none":
            self.hsvs_local = [mods.ATF(self.atf_dim, self.atf_mlp_hidden, self.fusion,
                                        name=f"hsvs_local_{i}") for i in range(self.num_layers)]
            self.hsvs_global = mods.ATF(self.atf_dim, self.atf_mlp_hidden, self.fusion)
        self.prompts = mods.PromptLearner(self.num_prompts, self.bg_length, self.state_length)
        if self.use_vcpg:
            if self.vae_latent % self.latent_tokens:
                raise ValueError(f"config.model.vae_latent={self.vae_latent} is not a multiple of "
                                 f"config.model.latent_tokens={self.latent_tokens}")
            self.vae = mods.VisualVAE(self.vae_hidden, self.vae_latent, self.embed_dim)
            self.text_latent = mods.TextLatentAttention(self.attn_dim)
            self.injection = mods.GatedInjection()
        if self.use_vtam:
            self.moe = mods.AnomalyMoE(self.gate_hidden)

    def project_clip(self, local, global_):
        """Learned CLIP projection (model.clip_projection="learned"): raw tokens -> D_c."""
        return (jnp.stack([p(local[:, i]) for i, p in enumerate(self.clip_proj[:-1])], axis=1),
                self.clip_proj[-1](global_))

    def synergy(self, clip_local, dino_local, clip_global, dino_global):
        """HSVS (eqs. 2-5). clip_local (B, L, N, D_c), dino_local (B, L, N, D_d), clip_global (B, D_c),
        dino_global (B, D_d) -> V_syn^local (B, L, N, D_c), V_syn^global (B, D_c)."""
        if self.fusion == "none":
            return clip_local, clip_global
        local = jnp.stack([atf(clip_local[:, i], dino_local[:, i])
                           for i, atf in enumerate(self.hsvs_local)], axis=1)
        glob = self.hsvs_global(clip_global[:, None], dino_global[:, None])[:, 0]
        return local, glob

    def prompt_embeddings(self, token_embeddings):
        """(B, C, E_t) embedded prompt ids -> (B, 2, K, C, E_t) with [V]_bg, [V]_state (eq. 6)."""
        return self.prompts(token_embeddings)

    def condition(self, t_init, v_global, eps):
        """VCPG (eqs. 7-11). t_init (B, 2, K, E), v_global (B, E), eps (B, Z) (zeros = use mu)
        -> T_final (B, 2, K, E), aux {mu, logvar, z, reconstruction}."""
        mu, logvar = self.vae.encode(v_global)                                   # eq. 7
        z = mods.reparameterize(mu, logvar, eps)                                 # eq. 8
        b = t_init.shape[0]
        tokens = z.reshape(b, self.latent_tokens, self.vae_latent // self.latent_tokens)
        text = t_init.reshape(b, -1, t_init.shape[-1])
        delta = self.text_latent(text, tokens).reshape(t_init.shape)            # eq. 10
        t_final = self.injection(t_init, delta)                                  # eq. 11
        return t_final, dict(mu=mu, logvar=logvar, z=z, reconstruction=self.vae.decode(z))

    def mixture(self, probs, local, global_feature):
        """AnomalyMoE (eqs. 15-17): see `ssvp_modules.AnomalyMoE`."""
        return self.moe(probs, local, global_feature)

    def __call__(self, clip_local, dino_local, clip_global, dino_global, token_embeddings, t_init):
        """Touches every submodule (used by `init`)."""
        if self.learned_clip_projection:
            clip_local, clip_global = self.project_clip(clip_local, clip_global)
        local, glob = self.synergy(clip_local, dino_local, clip_global, dino_global)
        self.prompt_embeddings(token_embeddings)
        if self.use_vcpg:
            t_init, _ = self.condition(t_init, glob, jnp.zeros((glob.shape[0], self.vae_latent)))
        if self.use_vtam:
            self.mixture(jnp.zeros(local.shape[:3]), local, glob)
        return t_init


def _class_words(name: str) -> str:
    return str(name).replace("_", " ").strip()


class SSVP(Method):
    name = "ssvp"
    trainable = (r"^ssvp/",)
    supports_feature_cache = True

    def __init__(self, config):
        super().__init__(config)
        from zsad_jax import backbones

        m = config.model
        if m.fusion not in FUSIONS:
            raise ValueError(f"config.model.fusion={m.fusion!r}: use one of {FUSIONS}")
        self.use_dino = m.fusion != "none"
        if "clip" not in config.backbones:
            raise ValueError("SSVP needs config.backbones.clip (a CLIP with a text tower)")
        if self.use_dino and "dino" not in config.backbones:
            raise ValueError(f"config.model.fusion={m.fusion!r} needs config.backbones.dino "
                             "(use fusion='none' for the CLIP-only model A)")
        for key, allowed in (("clip_projection", ("frozen", "learned")),
                             ("class_words", ("class_name", "object")),
                             ("eval_latent", ("mean", "sample")),
                             ("global_score", ("softmax", "cosine")),
                             ("local_score", ("max", "mean_maxpool"))):
            if m[key] not in allowed:
                raise ValueError(f"config.model.{key}={m[key]!r}: use one of {allowed}")
        for key, allowed in (("seg_maps", ("layers", "fused")),
                             ("class_mode", ("sigmoid", "probability")),
                             ("vae_reduction", ("sum", "mean"))):
            if config.loss[key] not in allowed:
                raise ValueError(f"config.loss.{key}={config.loss[key]!r}: use one of {allowed}")
        dtype = compute_dtype(config)
        self.clip_cfg = config.backbones.clip
        remat = bool(config.train.remat)
        self.clip_model = self._build_backbone(backbones, self.clip_cfg, dtype, remat)
        if not self.clip_model.cfg.has_text:
            raise ValueError(f"config.backbones.clip ({self.clip_cfg.arch}, weights "
                             f"{self.clip_cfg.weights!r}) has no text tower; SSVP needs one")
        self.clip_layers = tuple(self.clip_cfg.layers)
        views = {"clip": self._view(backbones, self.clip_model, self.clip_cfg.image_size)}
        if self.use_dino:
            self.dino_cfg = config.backbones.dino
            self.dino_model = self._build_backbone(backbones, self.dino_cfg, dtype, remat)
            self.dino_layers = tuple(self.dino_cfg.layers)
            if len(self.dino_layers) != len(self.clip_layers):
                raise ValueError(f"config.backbones.dino.layers={self.dino_layers} and "
                                 f"config.backbones.clip.layers={self.clip_layers}: HSVS fuses the "
                                 f"layers pairwise, give both the same number of layers")
            grid_c = self.clip_cfg.image_size // self.clip_model.cfg.patch_size
            grid_d = self.dino_cfg.image_size // self.dino_model.cfg.patch_size
            if grid_c != grid_d:
                raise ValueError(
                    f"CLIP at {self.clip_cfg.image_size} px (patch {self.clip_model.cfg.patch_size}) "
                    f"gives a {grid_c}x{grid_c} grid but DINO at {self.dino_cfg.image_size} px (patch "
                    f"{self.dino_model.cfg.patch_size}) gives {grid_d}x{grid_d}: set "
                    f"config.backbones.dino.image_size={grid_c * self.dino_model.cfg.patch_size} "
                    f"(SSVP sec. 4.2 resolution adaptation)")
            views["dino"] = self._view(backbones, self.dino_model, self.dino_cfg.image_size)
        self._views = views
        self.head = SSVPHead(
            num_layers=len(self.clip_layers), embed_dim=self.clip_model.cfg.embed_dim,
            fusion=m.fusion, use_vcpg=m.use_vcpg, use_vtam=m.use_vtam,
            learned_clip_projection=m.clip_projection == "learned", atf_dim=m.atf_dim,
            atf_mlp_hidden=m.atf_mlp_hidden, num_prompts=m.num_prompts, bg_length=m.bg_length,
            state_length=m.state_length, vae_hidden=m.vae_hidden, vae_latent=m.vae_latent,
            latent_tokens=m.latent_tokens, attn_dim=m.attn_dim, gate_hidden=m.gate_hidden)
        self._tokenizer = None

    # ---- construction ---------------------------------------------------------------------
    @staticmethod
    def _build_backbone(backbones, bb, dtype, remat):
        arch = bb.arch
        if bb.weights and os.path.isdir(bb.weights):
            from zsad_jax.backbones import io

            arch = io.read_config(bb.weights)   # the converted folder's architecture, never assumed
        # (a missing folder is reported with the other missing inputs by `required_files`)
        return backbones.build(arch, dtype=dtype, pos_interpolation=bb.pos_interpolation, remat=remat)

    @staticmethod
    def _view(backbones, model, size):
        mean, std = backbones.normalization(model.cfg)
        return ImageView(size=size, mean=tuple(mean), std=tuple(std))

    @property
    def views(self) -> dict[str, ImageView]:
        return self._views

    @property
    def grid(self) -> int:
        return self.clip_cfg.image_size // self.clip_model.cfg.patch_size

    @staticmethod
    def _init_backbone(backbones, model, bb, rng):
        if bb.weights:
            _, params = backbones.load(bb.weights)
            return params
        return jax.jit(lambda r: backbones.init_params(model, r, image_size=bb.image_size))(rng)

    def init(self, rng):
        from zsad_jax import backbones

        r_clip, r_dino, r_head = jax.random.split(rng, 3)
        params = {"clip": self._init_backbone(backbones, self.clip_model, self.clip_cfg, r_clip)}
        if self.use_dino:
            params["dino"] = self._init_backbone(backbones, self.dino_model, self.dino_cfg, r_dino)
        params["ssvp"] = jax.jit(self.init_head)(r_head)
        return params

    def init_head(self, rng):
        """Random parameters of the trainable head (shapes from the backbones' configs)."""
        c = self.clip_model.cfg
        n, layers = self.grid ** 2, len(self.clip_layers)
        clip_dim = c.width if self.config.model.clip_projection == "learned" else c.embed_dim
        dino_dim = self.dino_model.cfg.width if self.use_dino else 1
        k = self.config.model.num_prompts
        dummies = (jnp.zeros((1, layers, n, clip_dim)), jnp.zeros((1, layers, n, dino_dim)),
                   jnp.zeros((1, clip_dim)), jnp.zeros((1, dino_dim)),
                   jnp.zeros((1, c.context_length, c.text_width)), jnp.zeros((1, 2, k, c.embed_dim)))
        return self.head.init(rng, *dummies)["params"]

    # ---- host side ------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from zsad_jax import backbones

            self._tokenizer = backbones.load_tokenizer(self.clip_cfg.weights or self.clip_cfg.arch)
        return self._tokenizer

    def prompt_token_ids(self, class_names) -> tuple[np.ndarray, np.ndarray]:
        """Class names (B,) -> (prompt_ids (B, C) int32, prompt_eot (B,) int32); see module docstring."""
        c = self.clip_model.cfg
        m = self.config.model
        n_ctx = m.bg_length + m.state_length
        ids = np.zeros((len(class_names), c.context_length), np.int32)
        eot = np.zeros((len(class_names),), np.int32)
        cache: dict[str, list[int]] = {}
        for i, name in enumerate(class_names):
            words = "object" if m.class_words == "object" else (_class_words(name) or "object")
            if words not in cache:
                cache[words] = self._encode_words(words + ".")
            row = [c.sot_token_id] + [0] * n_ctx + cache[words] + [c.eot_token_id]
            if len(row) > c.context_length:
                raise ValueError(f"class name {name!r}: prompt of {len(row)} tokens exceeds the text "
                                 f"context of {c.context_length} (bg_length + state_length = {n_ctx})")
            ids[i, :len(row)] = row
            eot[i] = len(row) - 1
        return ids, eot

    def _encode_words(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text))
        c = self.clip_model.cfg
        return [t for t in ids if t not in (c.sot_token_id, c.eot_token_id)]

    def prepare_batch(self, batch: Mapping[str, Any]):
        out = super().prepare_batch(batch)
        if "class_name" not in batch:
            raise ValueError("SSVP needs the host batch key 'class_name' (the [CLASS] word of eq. 6)")
        ids, eot = self.prompt_token_ids(list(batch["class_name"]))
        out["text"] = {"ids": ids, "eot": eot}
        return out

    # ---- the model ------------------------------------------------------------------------
    def feature_cache_key(self) -> dict:
        # What `frozen_features` returns also depends on the CLIP projection (projected or raw
        # tokens) and on whether DINO is used (fusion="none" drops it).
        return {**super().feature_cache_key(),
                "ssvp": dict(clip_projection=self.config.model.clip_projection,
                             use_dino=self.use_dino)}

    def frozen_features(self, params, batch):
        """Frozen backbone outputs (see `_image_features`): a dict of float32 (B, ...) arrays."""
        return self._image_features(params, batch)

    def _image_features(self, params, batch):
        """Frozen backbone features: clip_local (B, L, N, D_c|W), clip_global (B, D_c|W); with DINO
        also dino_local (B, L, N, D_d), dino_global (B, D_d)."""
        clip_p = params["clip"]
        out = self.clip_model.apply({"params": clip_p}, batch["images"]["clip"], layers=self.clip_layers,
                                    method="encode_image")
        local = jnp.stack([t[:, out.num_prefix:] for t in out.layers], axis=1)
        if self.config.model.clip_projection == "frozen":
            local = self.clip_model.apply({"params": clip_p}, local, method="project_image_tokens")
            glob = out.pooled
        else:
            glob = out.layers[-1][:, out.num_prefix - 1]
        feats = dict(clip_local=local, clip_global=glob)
        if self.use_dino:
            d = self.dino_model.apply({"params": params["dino"]}, batch["images"]["dino"],
                                      layers=self.dino_layers, method="encode_image")
            feats["dino_local"] = jnp.stack([t[:, d.num_prefix:] for t in d.layers], axis=1)
            feats["dino_global"] = d.pooled
        return jax.tree_util.tree_map(lambda x: jax.lax.stop_gradient(x.astype(jnp.float32)), feats)

    def _text_init(self, params, batch, b):
        """T_init (b, 2, K, E) through the frozen text tower (gradients reach the prompts)."""
        if self.config.model.class_words == "object":   # the same prompts for every image
            ids, eot = (jnp.asarray(a) for a in self.prompt_token_ids(["object"]))
        elif "text" in batch:
            ids, eot = batch["text"]["ids"], batch["text"]["eot"]
        else:
            raise ValueError("SSVP: the batch has no 'text' key (the class-word prompt token ids); "
                             "pass host batches through method.prepare_batch, which makes it from "
                             "'class_name' (or set config.model.class_words='object')")
        clip_p = params["clip"]
        emb = self.clip_model.apply({"params": clip_p}, ids, method="embed_tokens")
        prompts = self.head.apply({"params": params["ssvp"]}, emb, method=SSVPHead.prompt_embeddings)
        n, two, k, length, width = prompts.shape
        text = self.clip_model.apply(
            {"params": clip_p}, prompts.reshape(n * two * k, length, width),
            jnp.repeat(eot, two * k), method="encode_text_embeddings")
        text = text.astype(jnp.float32).reshape(n, two, k, -1)
        return jnp.broadcast_to(text, (b, *text.shape[1:]))

    def forward(self, params, batch, rng=None):
        """Algorithm 1. rng=None: deterministic (z = mu unless model.eval_latent="sample").

        Returns a dict: layer_probs (B, L, h, w) P_anom^(l); p_map (B, h, w); s_global, s_local,
        s_final (B,); v_global (B, E); t_init, t_final (B, 2, K, E); and the VAE terms.
        """
        return self.forward_from_features(params, self._image_features(params, batch), batch, rng)

    def forward_from_features(self, params, f, batch, rng=None):
        """`forward` after the frozen backbones: f = `frozen_features` output; batch supplies
        "text" (the class-word prompt ids) unless model.class_words="object"."""
        m = self.config.model
        head = lambda method, *a: self.head.apply({"params": params["ssvp"]}, *a, method=method)
        clip_local, clip_global = f["clip_local"], f["clip_global"]
        if m.clip_projection == "learned":
            clip_local, clip_global = head(SSVPHead.project_clip, clip_local, clip_global)
        v_local, v_global = head(SSVPHead.synergy, clip_local, f.get("dino_local"), clip_global,
                                 f.get("dino_global"))                                 # eqs. 1-5
        t_init = self._text_init(params, batch, clip_global.shape[0])                   # eq. 6
        out = dict(v_global=v_global, t_init=t_init)
        if m.use_vcpg:
            shape = (v_global.shape[0], m.vae_latent)
            if rng is None and m.eval_latent == "sample":
                rng = jax.random.PRNGKey(self.config.seed)
            eps = jnp.zeros(shape) if rng is None else jax.random.normal(rng, shape)
            t_final, vae = head(SSVPHead.condition, t_init, v_global, eps)             # eqs. 7-11
            out.update(vae)
        else:
            t_final = t_init
        out["t_final"] = t_final
        banks = mods.bank_embeddings(t_final)
        b, n_layers, n, _ = v_local.shape
        h = w = self.grid
        layer_probs = mods.anomaly_probabilities(v_local, banks, m.tau)                # eqs. 13-14
        if m.global_score == "softmax":
            s_global = mods.anomaly_probabilities(v_global, banks, m.tau)
        else:
            s_global = (mods.l2_normalize(v_global) * mods.l2_normalize(banks[:, 1])).sum(-1)
        if m.use_vtam:
            p_map, w_scale, m_spatial = head(SSVPHead.mixture, layer_probs, v_local, v_global)  # 15-17
            p_map = p_map.reshape(b, h, w)
            s_local = mods.local_evidence(p_map, m.local_score, m.local_pool)          # eq. 18
            s_final = mods.final_score(s_global, s_local, m.gamma)                     # eq. 19
            out.update(w_scale=w_scale, m_spatial=m_spatial.reshape(b, n_layers, h, w), s_local=s_local)
        else:
            p_map = layer_probs.mean(axis=1).reshape(b, h, w)
            s_final = s_global
        out.update(layer_probs=layer_probs.reshape(b, n_layers, h, w), p_map=p_map,
                   s_global=s_global, s_final=s_final)
        return out

    def _resize(self, maps):
        size = self.mask_size
        return jax.image.resize(maps, (*maps.shape[:-2], size, size), "bilinear")

    def loss(self, params, batch, rng):
        total, terms, _ = self.loss_and_outputs(params, batch, rng)
        return total, terms

    def loss_and_outputs(self, params, batch, rng):
        """(L_total, {term: scalar}, `forward` outputs) (eqs. 20-22)."""
        return self._loss_terms(self.forward(params, batch, rng), batch)

    def loss_from_features(self, params, features, batch, rng):
        total, terms, _ = self._loss_terms(
            self.forward_from_features(params, features, batch, rng), batch)
        return total, terms

    def outputs_from_features(self, params, features):
        """features: `frozen_features` output plus "text" (= batch["text"]) unless
        model.class_words="object" -> (anomaly_map (B, M, M), image_score (B,))."""
        if "text" not in features and self.config.model.class_words != "object":
            raise ValueError("SSVP.outputs_from_features: features has no 'text' key; pass "
                             "{**features, 'text': batch['text']} (the class-word prompt ids made "
                             "by prepare_batch) or set config.model.class_words='object'")
        batch = {"text": features["text"]} if "text" in features else {}
        out = self.forward_from_features(params, features, batch, None)
        return self._resize(out["p_map"]), out["s_final"]

    def _loss_terms(self, out, batch):
        """Eqs. 20-22 on `forward` outputs: (L_total, {term: scalar}, out)."""
        cl = self.config.loss
        if cl.seg_maps == "layers":
            seg_maps = self._resize(out["layer_probs"])
        else:
            seg_maps = self._resize(out["p_map"])[:, None]
        seg = ssvp_losses.segmentation_loss(seg_maps, batch["masks"], cl.focal_gamma)   # eq. 20
        cls = ssvp_losses.classification_loss(out["s_final"], batch["labels"], cl.class_mode)  # eq. 21
        terms = dict(seg_focal=seg, cls_bce=cls)
        if self.config.model.use_vcpg:
            vae, vae_terms = ssvp_losses.vae_loss(out["v_global"], out["reconstruction"], out["mu"],
                                                  out["logvar"], cl.beta, cl.vae_reduction)  # eq. 9
            reg = ssvp_losses.margin_loss(out["t_final"], out["t_init"], cl.xi)             # eq. 12
            terms.update(vae=vae, margin=reg, **vae_terms)
        else:
            vae = reg = jnp.zeros(())
        total = ssvp_losses.total_loss(seg, cls, vae, reg, cl.lambda1, cl.lambda2)          # eq. 22
        return total, terms, out

    def anomaly_outputs(self, params, batch):
        out = self.forward(params, batch, None)
        return self._resize(out["p_map"]), out["s_final"]
