"""Conversion driver: source (HF folder or OpenAI/open_clip file) -> converted folder."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil

from weights_conversion import hf, openai_clip
from weights_conversion.tensors import ConversionError, read_hf_folder, read_weights_file
from zsad_jax.backbones import io
from zsad_jax.backbones.config import ARCHS, BackboneConfig

# Options that do not change the weights: ignored when comparing with --arch.
_NON_ARCH = ("pos_interpolation",)


def load_source(src) -> tuple[BackboneConfig, dict, dict]:
    """(config, params, info) of a source checkpoint; info describes where it came from."""
    src = pathlib.Path(src)
    if src.is_dir():
        hf_config, tensors = read_hf_folder(src)
        cfg, params = hf.convert_hf(hf_config, tensors, str(src))
        return cfg, params, {"format": "huggingface", "model_type": hf_config.get("model_type"),
                             "name": src.name}
    if not src.is_file():
        raise ConversionError(f"--src {src}: no such file or folder")
    tensors = read_weights_file(src)
    if openai_clip.is_openai_state_dict(tensors):
        cfg, params = openai_clip.convert_openai(tensors, str(src))
        return cfg, params, {"format": "openai", "name": src.name}
    raise ConversionError(f"{src}: not an OpenAI/open_clip CLIP state dict (no "
                          f"'visual.conv1.weight'); pass a Hugging Face folder for other models")


def check_arch(cfg: BackboneConfig, arch: str) -> BackboneConfig:
    """Errors if the checkpoint's architecture differs from the named preset."""
    if arch not in ARCHS:
        raise ConversionError(f"--arch {arch!r} unknown; known: {', '.join(sorted(ARCHS))}")
    want = ARCHS[arch]
    diffs = [f"{f.name}: checkpoint {getattr(cfg, f.name)!r} != {getattr(want, f.name)!r}"
             for f in dataclasses.fields(cfg) if f.name not in _NON_ARCH
             and getattr(cfg, f.name) != getattr(want, f.name)]
    if diffs:
        raise ConversionError(f"checkpoint does not match --arch {arch}: " + "; ".join(diffs))
    return cfg


def write_tokenizer(src, dst: pathlib.Path, cfg: BackboneConfig, bpe) -> list[str]:
    """Copies / writes vocab.json + merges.txt for CLIP; returns the files written."""
    from zsad_jax.backbones import tokenizer

    src = pathlib.Path(src)
    names = ["vocab.json", "merges.txt"]
    if bpe:
        merges = tokenizer.openai_merges(bpe, cfg.vocab_size)
        tok = tokenizer.ClipTokenizer.from_bpe_merges(merges, cfg.context_length)
        if tok.vocab_size != cfg.vocab_size:
            raise ConversionError(f"--bpe {bpe}: gives {tok.vocab_size} tokens, the checkpoint "
                                  f"has vocab_size {cfg.vocab_size}")
        tokenizer.write_tokenizer_files(tok, merges, dst)
        return names
    if src.is_dir() and all((src / n).is_file() for n in names):
        for n in names:
            shutil.copyfile(src / n, dst / n)
        return names
    return []


def convert(src, dst, arch: str | None = None, bpe=None) -> BackboneConfig:
    """Converts `src` into folder `dst` (config.json, params/, tokenizer files)."""
    cfg, params, info = load_source(src)
    if arch:
        check_arch(cfg, arch)
        info["arch"] = arch
    dst = pathlib.Path(dst)
    io.write_folder(dst, cfg, params, source=info)
    if cfg.has_text:
        info["tokenizer"] = write_tokenizer(src, dst, cfg, bpe)
        io.seal(dst)                      # the tokenizer files too
    elif bpe:
        raise ConversionError("--bpe given but the checkpoint has no CLIP text tower")
    return cfg
