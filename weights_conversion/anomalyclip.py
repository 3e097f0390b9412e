"""Convert an AnomalyCLIP prompt checkpoint of the official release (GitHub zqhang/AnomalyCLIP:
`checkpoints/9_12_4_multiscale_visa/epoch_15.pth` = trained on MVTec-AD,
`checkpoints/9_12_4_multiscale/epoch_15.pth` = trained on VisA) into a prompt folder for
`zsad_jax.methods.anomalyclip` (see `zsad_jax/methods/anomalyclip/weights.py`).

    python -m weights_conversion.anomalyclip --src checkpoints/9_12_4_multiscale_visa/epoch_15.pth \
        --dst weights/anomalyclip-trained-on-mvtec

then evaluate with `--config anomalyclip.py
--config.model.prompt_weights=weights/anomalyclip-trained-on-mvtec` (the frozen CLIP ViT-L/14@336
comes from `python -m weights_conversion`).

The checkpoint is `{"prompt_learner": AnomalyCLIP_PromptLearner.state_dict()}` (train.py:113-114),
saved from CUDA (read here with map_location="cpu"). Facts from prompt_ensemble.py (PE.py):

    ctx_pos, ctx_neg                 (1, 1, n, D)  learned contexts, normal / anomalous (PE.py:148-170)
    compound_prompts_text.<i>        (t, D)        deep prompts, i = 0..depth-2 (PE.py:158-163)
    compound_prompt_projections.<i>  .weight (896, D), .bias (896,): never used in the forward
                                     (PE.py:165-166, 264): accepted and dropped
    token_prefix_pos/neg             (1, 1, 1, D)  buffers: start-token embedding
    token_suffix_pos/neg             (1, 1, L-1-n, D)  buffers: embeddings after the contexts
    tokenized_prompts_pos/neg        (1, 1, L) int buffers: the prompts' token ids

"pos" is the normal prompt, "neg" the anomalous one. The buffers are kept (not as parameters): the
method checks them against the CLIP it runs with. Any other key is an error naming every one.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

import numpy as np

from weights_conversion.tensors import ConversionError, load_release_checkpoint
from zsad_jax.methods.anomalyclip.weights import save_prompts

_CONTEXTS = {"ctx_pos": "ctx_normal", "ctx_neg": "ctx_anomalous"}
_BUFFERS = tuple(f"{name}_{kind}" for name in ("token_prefix", "token_suffix", "tokenized_prompts")
                 for kind in ("pos", "neg"))
_DEEP = re.compile(r"compound_prompts_text\.(\d+)")
_PROJECTION = re.compile(r"compound_prompt_projections\.(\d+)\.(weight|bias)")


def _array(value, key: str, src: str) -> np.ndarray:
    if not hasattr(value, "detach"):
        raise ConversionError(f"{src}: {key!r} should be a tensor, got {type(value).__name__}")
    return value.detach().cpu().numpy()


def _check_shape(arr: np.ndarray, shape: tuple, key: str, src: str) -> np.ndarray:
    if arr.shape != tuple(shape):
        raise ConversionError(f"{src}: {key!r} has shape {arr.shape}, expected {tuple(shape)}")
    return arr


def convert_state(checkpoint, src: str = "checkpoint") -> tuple[dict, dict, dict]:
    """Release checkpoint dict -> (params, buffers, meta) for `save_prompts` (numpy arrays)."""
    if not isinstance(checkpoint, dict) or "prompt_learner" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ConversionError(f"{src}: expected {{'prompt_learner': state dict}} (train.py's "
                              f"torch.save), got {keys}")
    others = sorted(set(checkpoint) - {"prompt_learner"})
    if others:
        raise ConversionError(f"{src}: unexpected top-level key(s) {others}")
    state = {k: _array(v, k, src) for k, v in checkpoint["prompt_learner"].items()}
    unknown = sorted(k for k in state if k not in _CONTEXTS and k not in _BUFFERS
                     and not _DEEP.fullmatch(k) and not _PROJECTION.fullmatch(k))
    if unknown:
        raise ConversionError(f"{src}: {len(unknown)} unexpected key(s), not part of the release's "
                              f"prompt learner: {', '.join(unknown)}")
    missing = sorted(k for k in (*_CONTEXTS, *_BUFFERS) if k not in state)
    if missing:
        raise ConversionError(f"{src}: missing key(s) {', '.join(missing)}")

    ctx = state["ctx_pos"]
    if ctx.ndim != 4 or ctx.shape[:2] != (1, 1):
        raise ConversionError(f"{src}: 'ctx_pos' has shape {ctx.shape}, expected (1, 1, n_ctx, D): "
                              f"one class ('object') and one template per state")
    n, width = ctx.shape[2:]
    params = {ours: _check_shape(state[key], (1, 1, n, width), key, src)[0, 0].astype(np.float32)
              for key, ours in _CONTEXTS.items()}

    indices = sorted(int(_DEEP.fullmatch(k).group(1)) for k in state if _DEEP.fullmatch(k))
    if indices != list(range(len(indices))):
        raise ConversionError(f"{src}: compound_prompts_text indices {indices} are not 0..N-1")
    deep = [state[f"compound_prompts_text.{i}"] for i in indices]
    t = deep[0].shape[0] if deep else 0
    for i, arr in enumerate(deep):
        _check_shape(arr, (t, width), f"compound_prompts_text.{i}", src)
    if deep:
        params["deep_prompts"] = np.stack(deep).astype(np.float32)

    dropped = sorted(k for k in state if _PROJECTION.fullmatch(k))
    for key in dropped:
        index, kind = _PROJECTION.fullmatch(key).groups()
        if int(index) not in indices:
            raise ConversionError(f"{src}: {key!r} has no compound_prompts_text.{index}")
        arr = state[key]
        if kind == "weight" and (arr.ndim != 2 or arr.shape[1] != width):
            raise ConversionError(f"{src}: {key!r} has shape {arr.shape}, expected (out, {width})")
        if kind == "bias" and arr.ndim != 1:
            raise ConversionError(f"{src}: {key!r} has shape {arr.shape}, expected (out,)")

    length = state["tokenized_prompts_pos"].shape[-1]
    shapes = {"token_prefix": (1, 1, 1, width), "token_suffix": (1, 1, length - 1 - n, width),
              "tokenized_prompts": (1, 1, length)}
    buffers = {}
    for name, shape in shapes.items():
        pair = [_check_shape(state[f"{name}_{kind}"], shape, f"{name}_{kind}", src)[0, 0]
                for kind in ("pos", "neg")]
        buffers[name] = np.stack(pair)
    ids = buffers["tokenized_prompts"]
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConversionError(f"{src}: tokenized_prompts are {ids.dtype}, expected integers")
    buffers["tokenized_prompts"] = ids.astype(np.int32)
    buffers["token_prefix"] = buffers["token_prefix"].astype(np.float32)
    buffers["token_suffix"] = buffers["token_suffix"].astype(np.float32)
    meta = {"source": str(src), "prompt_length": int(n), "text_width": int(width),
            "deep_prompt_depth": len(deep) + 1, "deep_prompt_length": int(t),
            "context_length": int(length), "dropped": dropped}
    return params, buffers, meta


def convert(src: str | pathlib.Path, dst: str | pathlib.Path) -> dict:
    """Reads `src` (torch, weights_only, map_location cpu) and writes the folder `dst`; returns
    the meta."""
    checkpoint = load_release_checkpoint(src, "the release keeps its checkpoints under "
                                              "checkpoints/9_12_4_multiscale*/epoch_15.pth")
    params, buffers, meta = convert_state(checkpoint, str(src))
    save_prompts(dst, params, buffers, meta)
    return meta


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m weights_conversion.anomalyclip",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True,
                        help="release checkpoint, e.g. checkpoints/9_12_4_multiscale_visa/epoch_15.pth")
    parser.add_argument("--dst", required=True,
                        help="output folder (anomalyclip_prompts.npz, anomalyclip_buffers.npz, "
                             "anomalyclip.json)")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.src, args.dst)
    except (ConversionError, FileNotFoundError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    print(f"wrote {args.dst}: {meta['prompt_length']} context vectors per prompt, "
          f"{meta['deep_prompt_depth'] - 1} deep prompts of {meta['deep_prompt_length']}, text width "
          f"{meta['text_width']}; dropped {len(meta['dropped'])} unused tensors "
          f"(compound_prompt_projections)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
