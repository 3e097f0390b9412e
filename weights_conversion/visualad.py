"""Convert an official VisualAD checkpoint (`weight/train_on_*/CLIP.pth` of GitHub 7HHHHH/VisualAD)
into a head folder for `zsad_jax.methods.visualad` (see `zsad_jax/methods/visualad/weights.py`).

    python -m weights_conversion.visualad --src weight/train_on_visa/CLIP.pth \
        --dst weights/visualad-train-on-visa

then evaluate with `--config visualad.py --config.model.head_weights=weights/visualad-train-on-visa`
(the frozen CLIP ViT-L/14@336 itself comes from `python -m weights_conversion`).

The checkpoint is a dict saved by the release's `save_checkpoint` (facts read from its
`utils/training_utils.py`): `anomaly_token`, `normal_token` (D,); `layer_transforms` =
{"layer_<l>": {"mlp.0.weight" (H, D), "mlp.0.bias", "mlp.3.weight" (D, H), "mlp.3.bias"}} (SAF);
`cross_attn` = {"layer_attentions.layer_<l>.<name>": ...} (SCA); `cross_attn_config`;
`features_list`, `image_size`, `backbone`, `epoch`, `transform_type`; `ln_post_weight` /
`ln_post_bias`. The release's `test.py` does not load the trained `ln_post` (it evaluates with
CLIP's own), so it is not converted either: published numbers are reproduced with CLIP's ln_post.
Every other key must be accounted for: an unknown key is an error naming it.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import numpy as np

from weights_conversion.tensors import ConversionError, load_release_checkpoint
from zsad_jax.methods.visualad.weights import save_head
from zsad_jax.tree import unflatten

# torch names inside one SCA layer -> (our path, transpose?)
_SCA_KEYS = {
    "anchor_queries": ("anchor_queries", False),
    "pos_encoding": ("pos_encoding", False),
    "q_proj.weight": ("q_proj/kernel", True),
    "k_proj.weight": ("k_proj/kernel", True),
    "v_proj.weight": ("v_proj/kernel", True),
    "q_norm.weight": ("q_norm/scale", False),
    "q_norm.bias": ("q_norm/bias", False),
    "k_norm.weight": ("k_norm/scale", False),
    "k_norm.bias": ("k_norm/bias", False),
    "gate.0.weight": ("gate/kernel", True),
    "gate.0.bias": ("gate/bias", False),
    "out_proj.weight": ("out_proj/kernel", True),
    "out_proj.bias": ("out_proj/bias", False),
    "res_scale": ("res_scale", False),
}
# torch names inside one SAF ("mlp" feature transform) -> (our path, transpose?)
_SAF_KEYS = {
    "mlp.0.weight": ("fc1/kernel", True),
    "mlp.0.bias": ("fc1/bias", False),
    "mlp.3.weight": ("fc2/kernel", True),
    "mlp.3.bias": ("fc2/bias", False),
}
_METADATA_KEYS = {"features_list", "image_size", "epoch", "backbone", "transform_type",
                  "cross_attn_config", "ln_post_weight", "ln_post_bias"}


def _array(value, key: str, src: str) -> np.ndarray:
    if not hasattr(value, "detach"):
        raise ConversionError(f"{src}: {key!r} should be a tensor, got {type(value).__name__}")
    return value.detach().cpu().float().numpy()


def _layer_of(name: str, key: str, src: str) -> int:
    match = re.fullmatch(r"layer_(\d+)", name)
    if not match:
        raise ConversionError(f"{src}: {key!r}: expected a 'layer_<index>' entry, got {name!r}")
    return int(match.group(1))


def convert_state(state: dict, src: str = "checkpoint") -> tuple[dict, dict]:
    """Official checkpoint dict -> (head params as nested numpy dict, meta for visualad.json)."""
    if not isinstance(state, dict):
        raise ConversionError(f"{src}: expected a dict checkpoint, got {type(state).__name__}")
    unknown = sorted(set(state) - _METADATA_KEYS - {"anomaly_token", "normal_token",
                                                   "layer_transforms", "cross_attn"})
    if unknown:
        raise ConversionError(f"{src}: unknown top-level key(s) {unknown}; this is not a VisualAD "
                              "checkpoint of the official release")
    for key in ("anomaly_token", "normal_token"):
        if key not in state:
            raise ConversionError(f"{src}: missing {key!r}")
    anomaly = _array(state["anomaly_token"], "anomaly_token", src).reshape(-1)
    normal = _array(state["normal_token"], "normal_token", src).reshape(-1)
    dim = anomaly.shape[0]
    if normal.shape != (dim,):
        raise ConversionError(f"{src}: 'normal_token' has shape {normal.shape}, 'anomaly_token' ({dim},)")
    params: dict = {"anomaly_token": anomaly, "normal_token": normal}

    transform_type = state.get("transform_type", "mlp")
    if transform_type != "mlp":
        raise ConversionError(f"{src}: 'transform_type'={transform_type!r}; only the release's 'mlp' "
                              "SAF is supported")
    saf_layers, saf_hidden = [], None
    for name, sub in sorted((state.get("layer_transforms") or {}).items()):
        layer = _layer_of(name, f"layer_transforms.{name}", src)
        out = {}
        for key, value in sub.items():
            full = f"layer_transforms.{name}.{key}"
            if key not in _SAF_KEYS:
                raise ConversionError(f"{src}: unknown SAF key {full!r}; expected {sorted(_SAF_KEYS)}")
            path, transpose = _SAF_KEYS[key]
            arr = _array(value, full, src)
            out[path] = arr.T if transpose else arr
        missing = sorted(set(_SAF_KEYS) - set(sub))
        if missing:
            raise ConversionError(f"{src}: layer_transforms.{name} lacks {missing}")
        hidden = out["fc1/kernel"].shape[1]
        if out["fc1/kernel"].shape != (dim, hidden) or out["fc2/kernel"].shape != (hidden, dim):
            raise ConversionError(f"{src}: layer_transforms.{name}: mlp weights of shapes "
                                  f"{out['fc1/kernel'].shape[::-1]}, {out['fc2/kernel'].shape[::-1]} "
                                  f"do not fit width {dim}")
        if saf_hidden not in (None, hidden):
            raise ConversionError(f"{src}: layer_transforms.{name}: hidden width {hidden} differs from "
                                  f"the other layers' {saf_hidden}")
        saf_hidden = hidden
        saf_layers.append(layer)
        params[f"saf_{layer}"] = {"fc1": {"kernel": out["fc1/kernel"], "bias": out["fc1/bias"]},
                                  "fc2": {"kernel": out["fc2/kernel"], "bias": out["fc2/bias"]}}

    sca: dict[int, dict] = {}
    for key, value in (state.get("cross_attn") or {}).items():
        match = re.fullmatch(r"layer_attentions\.(layer_\d+)\.(.+)", key)
        if not match or match.group(2) not in _SCA_KEYS:
            raise ConversionError(f"{src}: unknown SCA key 'cross_attn.{key}'; expected "
                                  f"'layer_attentions.layer_<l>.<name>' with name in {sorted(_SCA_KEYS)}")
        layer = _layer_of(match.group(1), f"cross_attn.{key}", src)
        path, transpose = _SCA_KEYS[match.group(2)]
        arr = _array(value, f"cross_attn.{key}", src)
        if path == "pos_encoding":
            arr = arr.reshape(arr.shape[-2], arr.shape[-1])          # (1, P, D) -> (P, D)
        sca.setdefault(layer, {})[path] = arr.T if transpose else arr
    num_anchors = max_patches = None
    for layer, flat in sorted(sca.items()):
        missing = sorted(k for k, (p, _) in _SCA_KEYS.items() if p not in flat)
        if missing:
            raise ConversionError(f"{src}: cross_attn.layer_attentions.layer_{layer} lacks {missing}")
        m, p = flat["anchor_queries"].shape[0], flat["pos_encoding"].shape[0]
        if (num_anchors, max_patches) not in ((None, None), (m, p)):
            raise ConversionError(f"{src}: SCA layer {layer} has {m} anchors / {p} positions, other "
                                  f"layers {num_anchors} / {max_patches}")
        num_anchors, max_patches = m, p
        for path, arr in flat.items():
            if path not in ("anchor_queries", "pos_encoding", "gate/kernel", "gate/bias", "res_scale") \
                    and arr.shape[0] != dim:
                raise ConversionError(f"{src}: SCA layer {layer} {path} has shape {arr.shape}, width {dim}")
        params[f"sca_{layer}"] = unflatten(flat)

    layers = sorted(set(saf_layers) | set(sca))
    features_list = [int(x) for x in state.get("features_list", layers)]
    for kind, present in (("SAF", sorted(saf_layers)), ("SCA", sorted(sca))):
        if present and present != sorted(features_list):
            raise ConversionError(f"{src}: {kind} layers {present} differ from features_list {features_list}")
    config = dict(state.get("cross_attn_config") or {})
    meta = {
        "source": str(src),
        "dim": dim,
        "layers": sorted(features_list),
        "use_sca": bool(sca),
        "use_saf": bool(saf_layers),
        "num_anchors": num_anchors,
        "max_patches": max_patches,
        "saf_hidden": saf_hidden,
        "res_scale_init": config.get("res_scale_init"),
        "image_size": state.get("image_size"),
        "backbone": state.get("backbone"),
        "epoch": state.get("epoch"),
        "has_token_pos": False,
        "ln_post": "not converted (the release's test.py evaluates with CLIP's own ln_post)",
    }
    return params, meta


def convert(src: str | pathlib.Path, dst: str | pathlib.Path) -> dict:
    """Reads `src` (torch, weights_only) and writes the head folder `dst`; returns the meta."""
    state = load_release_checkpoint(src, "the release keeps it under weight/train_on_visa/CLIP.pth "
                                         "or weight/train_on_mvtec/CLIP.pth; it is a Git LFS file: "
                                         "run `git lfs pull`")
    params, meta = convert_state(state, str(src))
    save_head(dst, params, meta)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights_conversion.visualad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True,
                        help="official checkpoint, e.g. weight/train_on_visa/CLIP.pth")
    parser.add_argument("--dst", required=True, help="output folder (visualad_head.npz + visualad.json)")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.src, args.dst)
    except (ConversionError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(f"wrote {args.dst}: width {meta['dim']}, layers {meta['layers']}, SCA {meta['use_sca']} "
          f"({meta['num_anchors']} anchors), SAF {meta['use_saf']} (hidden {meta['saf_hidden']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
