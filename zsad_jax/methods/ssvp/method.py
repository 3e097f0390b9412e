"""SSVP: synergistic semantic-visual prompting (arXiv 2601.09147; user guide docs/ssvp.md).

Two frozen backbones, two image views: "clip" (CLIP ViT-L/14@336 at 518) and "dino" (DINOv3 ViT-L/16
at 592), both giving a 37x37 patch grid. Per image (Algorithm 1):

1. HSVS (eqs. 1-5): per tapped layer, CLIP patch tokens (mapped to D_c by CLIP's own ln_post + proj)
   and DINO patch tokens (through DINO's final norm) are fused by an ATF block -> V_syn^local,(l);
   CLIP's image embedding and DINO's final-normed class token by another ATF -> V_syn^global (L2-
   normalised).
2. VCPG (eqs. 6-12): prompts "<sot> [V]_bg [V]_state [CLASS] . <eot>" (K normal + K abnormal) through
   the frozen CLIP text tower -> T_init; VAE on V_syn^global -> z; text-latent cross-attention of
   the prompts over z's key/value tokens -> delta_inj; T_final = LayerNorm(T_init + alpha delta_inj).
3. VTAM (eqs. 13-19): per-layer softmax(cos / tau) maps P_anom^(l), AnomalyMoE gating -> P_map,
   S_final = (1 - gamma) S_global + gamma S_local.
Loss (Algorithm 3): Focal(P_map, mask) + BCE(sigmoid(S_final), y) + lambda1 L_VAE + lambda2 L_reg.

Parameters: {"backbones": {"clip", "dino"}: frozen, "head": trainable}; the prompt embeddings are
under "head/prompts/" (their own learning rate through `config.optim.lr_groups`).

[CLASS] (eq. 6): `prepare_batch` turns the host key `class_name` into token ids on the host:
batch["text"] = {"ids": (B, C) int32 [<sot>, C_ctx placeholders, words of the class name ('_' -> ' ')
+ ".", <eot>, 0 ...], "eot": (B,) int32 position of <eot>}; the placeholders' embeddings are
replaced by the learned [V]_bg, [V]_state inside the compiled step. An empty class name (e.g.
`predict` on loose images) gets the word "object". With `model.class_words = "object"` every image
gets "object" (object-agnostic prompts): the token ids are constants (`text` is not needed) and the
text tower runs once per batch instead of once per image.

Reading choices (docs/ssvp.md, "Readings", quotes the paper beside each; alternatives are options):
* D_c = 768 is CLIP ViT-L/14's joint embedding size: CLIP tokens are mapped with CLIP's frozen
  ln_post + proj (`model.clip_projection="frozen"`; "learned": a trainable Dense per layer).
  DINO's tapped tokens go through DINO's final LayerNorm (`model.dino_norm="final"`; "raw").
* Global pair (eq. 1): CLIP's image embedding and DINO's final-normed class token, one token each
  (`model.global_tokens="final"`): eq. 3's softmax has one key, Attn = V exactly, so the global ATF
  has no W_Q, W_K (they could never learn). "layers": the class tokens of the tapped layers, L per
  side, eq. 3 attends over them; V_syn^global = the output at the deepest layer.
* V_syn^global is L2-normalised (`model.global_norm="l2"`, like CLIP's image embedding; eq. 19's
  <V_syn^global, T_final> is then Algorithm 1's CosineSim): it feeds the VAE (eqs. 7, 9) and the
  scale gate (eq. 15) as a unit vector; "none": as the ATF returns it.
* z gives eq. 10 `model.latent_tokens` = 4 key/value tokens (K_z = z W_K read as 4 tokens,
  `model.latent_keys="project"`; "split": z cut into 4 chunks), so each prompt attends differently;
  with 1 token the softmax weight is 1, delta_inj = z W_V for all prompts and W_Q, W_K are dropped.
* K prompts per bank are averaged (L2-normalised mean) into one normal and one abnormal embedding
  before eqs. 13-14; S_global (Algorithm 1's CosineSim(V_syn^global, T_final)) is the softmax of
  eq. 14 applied to V_syn^global (`model.global_score="softmax"`; "cosine": raw cosine with the
  abnormal embedding).
* The focal loss is on the evaluated map P_map (Algorithm 3 line 8, `loss.seg_maps="fused"`);
  "layers": eq. 20 on each P_anom^(l), summed. Maps are bilinearly resized to the mask size first.
* L_VAE (eq. 9) is the squared L2 norm (summed over D) on sg(V_syn^global): the VAE's observation
  gets no gradient from it (`loss.vae_stop_gradient`, `loss.vae_reduction`).
* Evaluation samples z (Algorithm 1 line 7) with one fixed eps (key `config.seed`) shared by every
  image, so outputs are deterministic and independent of the batch (`model.eval_latent="sample"`;
  "mean": z = mu).
* S_local = spatial max of P_map (eq. 18, the precise statement) by default; Algorithm 1's
  "Mean(SpatialMaxPool)" is `model.local_score="mean_maxpool"`.
* Ablations: without VTAM, P_map is the mean of the layer maps and S_final = S_global; without VCPG,
  T_final = T_init (no VAE, no margin term); without HSVS (model A) no DINO backbone is used and
  V_syn = the CLIP features.

Feature cache (`config.train.feature_cache`): everything before HSVS is frozen, so
`frozen_features` returns the tapped CLIP / DINO patch tokens and the global tokens;
`loss_from_features` runs HSVS, VCPG and VTAM on them, the text tower
included (it runs on the learnable prompts every step anyway). The class-word token ids are not
cached: they stay per-image host data (`batch["text"]`, remade by `prepare_batch` from `class_name`
each step), so the cache does not depend on the tokenizer or the prompt layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from zsad_jax import ops
from zsad_jax.config_types import ConfigError
from zsad_jax.methods.base import FrozenFeaturesMethod
from zsad_jax.methods.ssvp import losses as ssvp_losses
from zsad_jax.methods.ssvp import modules as mods
from zsad_jax.methods.ssvp.config import Loss, Model


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
    latent_tokens: int = 4
    latent_keys: str = "project"
    attn_dim: int = 768
    gate_hidden: int = 256
    global_norm: bool = True

    def setup(self):
        if self.learned_clip_projection:
            self.clip_proj = [nn.Dense(self.embed_dim, name=f"clip_proj_{i}")
                              for i in range(self.num_layers)]
        if self.fusion != "none":
            self.hsvs_local = [mods.ATF(self.atf_dim, self.atf_mlp_hidden, self.fusion,
                                        name=f"hsvs_local_{i}") for i in range(self.num_layers)]
            self.hsvs_global = mods.ATF(self.atf_dim, self.atf_mlp_hidden, self.fusion)
        self.prompts = mods.DecoupledPrompts(self.num_prompts, self.bg_length, self.state_length)
        if self.use_vcpg:
            self.vae = mods.VisualVAE(self.vae_hidden, self.vae_latent, self.embed_dim)
            self.text_latent = mods.TextLatentAttention(self.attn_dim, self.latent_tokens,
                                                        self.latent_keys)
            self.injection = mods.GatedInjection()
        if self.use_vtam:
            self.moe = mods.AnomalyMoE(self.gate_hidden)

    def project_clip(self, local, global_):
        """Learned CLIP projection (model.clip_projection="learned"): raw tokens -> D_c, one Dense per
        tapped layer. local (B, L, N, W), global_ (B, G, W) (G = L: each layer's class token; G = 1:
        the deepest one) -> (B, L, N, D_c), (B, G, D_c)."""
        g = global_.shape[1]
        return (jnp.stack([p(local[:, i]) for i, p in enumerate(self.clip_proj)], axis=1),
                jnp.stack([p(global_[:, i]) for i, p in enumerate(self.clip_proj[-g:])], axis=1))

    def synergy(self, clip_local, dino_local, clip_global, dino_global):
        """HSVS (eqs. 2-5). clip_local (B, L, N, D_c), dino_local (B, L, N, D_d), clip_global
        (B, G, D_c), dino_global (B, G, D_d) -> V_syn^local (B, L, N, D_c), V_syn^global (B, D_c):
        the global ATF's output at the last (deepest) of the G global tokens, L2-normalised with
        `global_norm`."""
        if self.fusion == "none":
            local, glob = clip_local, clip_global[:, -1]
        else:
            local = jnp.stack([atf(clip_local[:, i], dino_local[:, i])
                               for i, atf in enumerate(self.hsvs_local)], axis=1)
            glob = self.hsvs_global(clip_global, dino_global)[:, -1]
        return local, ops.l2_normalize(glob) if self.global_norm else glob

    def prompt_embeddings(self, token_embeddings):
        """(B, C, E_t) embedded prompt ids -> (B, 2, K, C, E_t) with [V]_bg, [V]_state (eq. 6)."""
        return self.prompts(token_embeddings)

    def condition(self, t_init, v_global, eps, stop_vae_gradient=True):
        """VCPG (eqs. 7-11). t_init (B, 2, K, E), v_global (B, E), eps (B, Z) (zeros = use mu)
        -> T_final (B, 2, K, E), aux: z (B, Z) the injected latent; mu, logvar (B, Z),
        reconstruction and vae_target (B, E) for L_VAE (eq. 9).

        stop_vae_gradient: L_VAE's terms come from the VAE run on sg(V_syn^global) (the same values:
        its gradient reaches the VAE only); z, which conditions the prompts, from V_syn^global.
        """
        mu, logvar = self.vae.encode(v_global)                                   # eq. 7
        z = mods.reparameterize(mu, logvar, eps)                                 # eq. 8
        text = t_init.reshape(t_init.shape[0], -1, t_init.shape[-1])
        delta = self.text_latent(text, z).reshape(t_init.shape)                  # eq. 10
        t_final = self.injection(t_init, delta)                                  # eq. 11
        target, z_vae = v_global, z
        if stop_vae_gradient:
            target = jax.lax.stop_gradient(v_global)
            mu, logvar = self.vae.encode(target)
            z_vae = mods.reparameterize(mu, logvar, eps)
        return t_final, dict(mu=mu, logvar=logvar, z=z, vae_target=target,
                             reconstruction=self.vae.decode(z_vae))

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


class SSVP(FrozenFeaturesMethod):
    name = "ssvp"
    config_sections = {"model": Model, "loss": Loss}

    @classmethod
    def check_config(cls, config, sections):
        m = sections["model"]
        need = ["clip"] if m.fusion == "none" else ["clip", "dino"]
        cls.require_backbones(config, need, f"SSVP with config.model.fusion={m.fusion!r}")
        clip, dino = config.backbones.clip, config.backbones.get("dino")
        if dino is not None and len(dino.layers) != len(clip.layers):
            raise ConfigError(f"config.backbones.dino.layers={tuple(dino.layers)} and "
                              f"config.backbones.clip.layers={tuple(clip.layers)}: HSVS fuses the "
                              f"layers pairwise, give both the same number of layers")

    def __init__(self, config):
        super().__init__(config)
        self.model_cfg: Model = self.sections["model"]
        self.loss_cfg: Loss = self.sections["loss"]
        m = self.model_cfg
        self.use_dino = m.fusion != "none"
        self.clip = self.build_backbone("clip")
        if not self.clip.has_text:
            raise ConfigError(f"config.backbones.clip ({self.clip.arch.family}, weights "
                              f"{self.clip.weights!r}) has no text tower; SSVP needs one")
        if self.use_dino:
            self.dino = self.build_backbone("dino")
            if self.dino.grid != self.clip.grid:
                raise ConfigError(
                    f"CLIP at {self.clip.image_size} px (patch {self.clip.arch.patch_size}) gives a "
                    f"{self.clip.grid} grid but DINO at {self.dino.image_size} px (patch "
                    f"{self.dino.arch.patch_size}) gives {self.dino.grid}: set "
                    f"config.backbones.dino.image_size="
                    f"{self.clip.grid[0] * self.dino.arch.patch_size} (SSVP sec. 4.2 resolution "
                    f"adaptation)")
        self.head = SSVPHead(
            num_layers=len(self.clip.layers), embed_dim=self.clip.arch.embed_dim,
            fusion=m.fusion, use_vcpg=m.use_vcpg, use_vtam=m.use_vtam,
            learned_clip_projection=m.clip_projection == "learned", atf_dim=m.atf_dim,
            atf_mlp_hidden=m.atf_mlp_hidden, num_prompts=m.num_prompts, bg_length=m.bg_length,
            state_length=m.state_length, vae_hidden=m.vae_hidden, vae_latent=m.vae_latent,
            latent_tokens=m.latent_tokens, latent_keys=m.latent_keys, attn_dim=m.attn_dim,
            gate_hidden=m.gate_hidden, global_norm=m.global_norm == "l2")
        self._tokenizer = None

    @property
    def grid(self) -> int:
        return self.clip.grid[0]

    @property
    def num_global_tokens(self) -> int:
        """G, the global tokens per backbone: one per tapped layer ("layers") or 1 ("final")."""
        return len(self.clip.layers) if self.model_cfg.global_tokens == "layers" else 1

    def init_head(self, rng, towers):
        """Random parameters of the trainable head (shapes from the backbones' configs)."""
        c = self.clip.arch
        n, layers = self.clip.num_patches, len(self.clip.layers)
        clip_dim = c.width if self.model_cfg.clip_projection == "learned" else c.embed_dim
        dino_dim = self.dino.arch.width if self.use_dino else 1
        k, g = self.model_cfg.num_prompts, self.num_global_tokens
        dummies = (jnp.zeros((1, layers, n, clip_dim)), jnp.zeros((1, layers, n, dino_dim)),
                   jnp.zeros((1, g, clip_dim)), jnp.zeros((1, g, dino_dim)),
                   jnp.zeros((1, c.context_length, c.text_width)), jnp.zeros((1, 2, k, c.embed_dim)))
        return jax.jit(lambda r: self.head.init(r, *dummies)["params"])(rng)

    # ---- host side ------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self.clip.tokenizer()
        return self._tokenizer

    def prompt_token_ids(self, class_names) -> tuple[np.ndarray, np.ndarray]:
        """Class names (B,) -> (prompt_ids (B, C) int32, prompt_eot (B,) int32); see module docstring."""
        c = self.clip.arch
        m = self.model_cfg
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
        c = self.clip.arch
        return [t for t in ids if t not in (c.sot_token_id, c.eot_token_id)]

    def prepare_batch(self, batch: Mapping[str, Any]):
        out = super().prepare_batch(batch)
        if self.model_cfg.class_words == "object":     # constant prompts: made in the step
            return out
        if "class_name" not in batch:
            raise ValueError("SSVP needs the host batch key 'class_name' (the [CLASS] word of eq. 6)")
        ids, eot = self.prompt_token_ids(list(batch["class_name"]))
        out["text"] = {"ids": ids, "eot": eot}
        return out

    # ---- the model ------------------------------------------------------------------------
    def feature_cache_key(self) -> dict:
        # What `frozen_features` returns also depends on the CLIP projection (projected or raw
        # tokens), the DINO norm, the global tokens and on whether DINO is used (fusion="none").
        m = self.model_cfg
        return {**super().feature_cache_key(), "projection": m.clip_projection,
                "use_dino": self.use_dino, "dino_norm": m.dino_norm, "global_tokens": m.global_tokens}

    def frozen_features(self, params, batch):
        """Frozen backbone features (eq. 1), float32, no gradient: clip_local (B, L, N, D_c|W),
        clip_global (B, G, D_c|W); with DINO also dino_local (B, L, N, D_d), dino_global (B, G, D_d).
        G = L (each tapped layer's class token, `model.global_tokens="layers"`) or 1 ("final":
        CLIP's image embedding, or its last tapped class token with a learned projection, and
        DINO's final-normed class token). Frozen projection: CLIP tokens through ln_post + proj;
        `model.dino_norm="final"`: DINO's tapped tokens through its final norm."""
        m = self.model_cfg
        towers = params["backbones"]
        out = self.clip.encode_image(towers["clip"], batch["images"]["clip"])
        local = jnp.stack([t[:, out.num_prefix:] for t in out.layers], axis=1)
        layers = out.layers if m.global_tokens == "layers" else out.layers[-1:]
        glob = jnp.stack([t[:, out.num_prefix - 1] for t in layers], axis=1)
        if m.clip_projection == "frozen":
            local = self.clip.project(towers["clip"], local)
            glob = (self.clip.project(towers["clip"], glob) if m.global_tokens == "layers"
                    else out.pooled[:, None])
        feats = dict(clip_local=local, clip_global=glob)
        if self.use_dino:
            d = self.dino.encode_image(towers["dino"], batch["images"]["dino"])
            cls_index = d.num_prefix - 1 - self.dino.arch.num_registers
            dino_local = jnp.stack([t[:, d.num_prefix:] for t in d.layers], axis=1)
            dino_global = (jnp.stack([t[:, cls_index] for t in d.layers], axis=1)
                           if m.global_tokens == "layers" else d.pooled[:, None])
            if m.dino_norm == "final":
                dino_local = self.dino.final_norm(towers["dino"], dino_local)
                if m.global_tokens == "layers":         # (d.pooled is final-normed already)
                    dino_global = self.dino.final_norm(towers["dino"], dino_global)
            feats.update(dino_local=dino_local, dino_global=dino_global)
        return jax.tree_util.tree_map(lambda x: jax.lax.stop_gradient(x.astype(jnp.float32)), feats)

    def _text_init(self, params, batch, b):
        """T_init (b, 2, K, E) through the frozen text tower (gradients reach the prompts)."""
        if self.model_cfg.class_words == "object":   # the same prompts for every image
            ids, eot = (jnp.asarray(a) for a in self.prompt_token_ids(["object"]))
        elif "text" in batch:
            ids, eot = batch["text"]["ids"], batch["text"]["eot"]
        else:
            raise ValueError("SSVP: the batch has no 'text' key (the class-word prompt token ids); "
                             "pass host batches through method.prepare_batch, which makes it from "
                             "'class_name' (or set config.model.class_words='object')")
        tower = params["backbones"]["clip"]
        emb = self.clip.embed_tokens(tower, ids)
        prompts = self.head.apply({"params": params["head"]}, emb, method=SSVPHead.prompt_embeddings)
        n, two, k, length, width = prompts.shape
        text = self.clip.encode_text_embeddings(tower, prompts.reshape(n * two * k, length, width),
                                                jnp.repeat(eot, two * k))
        text = text.astype(jnp.float32).reshape(n, two, k, -1)
        return jnp.broadcast_to(text, (b, *text.shape[1:]))

    def forward(self, params, batch, rng=None):
        """Algorithm 1. rng: training (eps ~ N(0, I) per image); None: deterministic evaluation
        (z from one fixed eps, key config.seed, with model.eval_latent="sample"; z = mu with "mean").

        Returns a dict: layer_probs (B, L, h, w) P_anom^(l); p_map (B, h, w); s_global, s_local,
        s_final (B,); v_global (B, E); t_init, t_final (B, 2, K, E); and the VAE terms (z, mu,
        logvar (B, Z); reconstruction, vae_target (B, E)).
        """
        return self.forward_from_features(params, self.frozen_features(params, batch), batch, rng)

    def forward_from_features(self, params, f, batch, rng=None):
        """`forward` after the frozen backbones: f = `frozen_features` output; batch supplies
        "text" (the class-word prompt ids) unless model.class_words="object"."""
        m = self.model_cfg
        head = lambda method, *a: self.head.apply({"params": params["head"]}, *a, method=method)
        clip_local, clip_global = f["clip_local"], f["clip_global"]
        if m.clip_projection == "learned":
            clip_local, clip_global = head(SSVPHead.project_clip, clip_local, clip_global)
        v_local, v_global = head(SSVPHead.synergy, clip_local, f.get("dino_local"), clip_global,
                                 f.get("dino_global"))                                 # eqs. 1-5
        t_init = self._text_init(params, batch, clip_global.shape[0])                   # eq. 6
        out = dict(v_global=v_global, t_init=t_init)
        if m.use_vcpg:
            shape = (v_global.shape[0], m.vae_latent)
            if rng is not None:                         # training: one eps per image (eq. 8)
                eps = jax.random.normal(rng, shape)
            elif m.eval_latent == "sample":             # Alg. 1 line 7, one fixed draw for all
                eps = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(self.config.seed),
                                                         shape[1:]), shape)
            else:                                       # z = mu
                eps = jnp.zeros(shape)
            t_final, vae = head(SSVPHead.condition, t_init, v_global, eps,
                                self.loss_cfg.vae_stop_gradient)                      # eqs. 7-11
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
            s_global = (ops.l2_normalize(v_global) * ops.l2_normalize(banks[:, 1])).sum(-1)
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

    def loss_and_outputs(self, params, batch, rng):
        """(L_total, {term: scalar}, `forward` outputs) (eqs. 20-22)."""
        return self._loss_terms(self.forward(params, batch, rng), batch)

    def loss_from_features(self, params, features, batch, rng):
        total, terms, _ = self._loss_terms(
            self.forward_from_features(params, features, batch, rng), batch)
        return total, terms

    def outputs_from_features(self, params, features, batch):
        out = self.forward_from_features(params, features, batch, None)
        return ops.upsample_maps(out["p_map"], self.mask_size), out["s_final"]

    def _loss_terms(self, out, batch):
        """Eqs. 20-22 on `forward` outputs: (L_total, {term: scalar}, out)."""
        cl = self.loss_cfg
        if cl.seg_maps == "fused":              # Algorithm 3 line 8: Focal(P_map, GT_local)
            seg_maps = ops.upsample_maps(out["p_map"], self.mask_size)[:, None]
        else:                                   # eq. 20 on each P_anom^(l)
            seg_maps = ops.upsample_maps(out["layer_probs"], self.mask_size)
        seg = ssvp_losses.segmentation_loss(seg_maps, batch["masks"], cl.focal_gamma)   # eq. 20
        cls = ssvp_losses.classification_loss(out["s_final"], batch["labels"], cl.class_mode)  # eq. 21
        terms = dict(seg_focal=seg, cls_bce=cls)
        if self.model_cfg.use_vcpg:
            vae, vae_terms = ssvp_losses.vae_loss(out["vae_target"], out["reconstruction"],
                                                  out["mu"], out["logvar"], cl.beta,
                                                  cl.vae_reduction)                           # eq. 9
            reg = ssvp_losses.margin_loss(out["t_final"], out["t_init"], cl.xi)             # eq. 12
            terms.update(vae=vae, margin=reg, **vae_terms)
        else:
            vae = reg = jnp.zeros(())
        total = ssvp_losses.total_loss(seg, cls, vae, reg, cl.lambda1, cl.lambda2)          # eq. 22
        return total, terms, out
