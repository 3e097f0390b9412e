"""Conversion of HF / OpenAI checkpoints, proven equal to transformers' torch models (tiny, fp32)."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest
import torch
import transformers

from weights_conversion import hf
from weights_conversion.__main__ import main as cli
from weights_conversion.convert import convert
from weights_conversion.tensors import ConversionError
from weights_conversion.verify import compare, jax_outputs, random_inputs, torch_outputs
from zsad_jax import backbones
from zsad_jax.backbones import io

TOL = 1e-4   # max |jax - torch| / max |torch|, fp32


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random non-trivial values everywhere (LayerScale, LN, biases are constant at init)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def tiny_hf(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
               patch_size=8)
    if kind == "clip":
        text = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=2, vocab_size=100, max_position_embeddings=16,
                    eos_token_id=99, bos_token_id=98, pad_token_id=0)
        model = transformers.CLIPModel(transformers.CLIPConfig(
            text_config=text, vision_config=dict(intermediate_size=64, **vit), projection_dim=16))
    elif kind == "clip_vision":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
            intermediate_size=64, hidden_act="gelu", **vit))
    elif kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(**vit))
    elif kind == "dinov2_swiglu":
        model = transformers.Dinov2Model(transformers.Dinov2Config(use_swiglu_ffn=True, **vit))
    elif kind == "dinov2_reg":
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            num_register_tokens=3, **vit))
    elif kind == "dinov3":
        model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
            intermediate_size=64, num_register_tokens=0, **vit))
    elif kind == "dinov3_reg_gated":
        model = transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
            intermediate_size=48, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu",
            **vit))
    else:
        raise ValueError(kind)
    return _perturb(model, seed)


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def convert_in_memory(model, **build_kw):
    cfg, params = hf.convert_hf(model.config.to_dict(), state_numpy(model), "in-memory")
    jax_model = backbones.build(cfg, **build_kw)
    backbones.check_params(jax_model, params)
    return jax_model, jax.tree_util.tree_map(np.asarray, params)


def assert_parity(torch_model, jax_model, params, size, batch=2):
    cfg = jax_model.cfg
    images, tokens = random_inputs(cfg, batch=batch)
    if size != cfg.image_size:
        h, w = size if isinstance(size, tuple) else (size, size)
        images = np.random.default_rng(1).standard_normal((batch, h, w, 3)).astype(np.float32)
    ref = torch_outputs(torch_model, cfg, images, tokens)
    got = jax_outputs(jax_model, params, images, tokens)
    errors = compare(ref, got)
    assert set(errors) >= {"layer1", "layer2", "pooled"}
    assert max(errors.values()) <= TOL, errors


# Native size, a larger grid (upsampled position embeddings), a smaller one (downsampled, where
# antialiasing matters) and a non-square one.
@pytest.mark.parametrize("kind,sizes", [
    ("clip", (32, 48, 24, (32, 48))),
    ("clip_vision", (40,)),
    ("dinov2", (32, 16)),
    ("dinov2_swiglu", (40,)),
    ("dinov2_reg", (48, 16)),
    ("dinov3", (32,)),
    ("dinov3_reg_gated", (32, 40, (32, 48))),
])
def test_parity_with_transformers(kind, sizes):
    torch_model = tiny_hf(kind)
    jax_model, params = convert_in_memory(torch_model)
    for size in sizes:
        assert_parity(torch_model, jax_model, params, size)


def test_bilinear_interpolation_matches_torch_resize_of_pos_embed():
    """VisualAD's bilinear resize: equal to F.interpolate(bilinear, align_corners=False)."""
    torch_model = tiny_hf("clip")
    jax_model, params = convert_in_memory(torch_model, pos_interpolation="bilinear")
    pos = torch_model.vision_model.embeddings.position_embedding.weight.detach()
    grid = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, size=(7, 7), mode="bilinear",
                                           align_corners=False)
    want = torch.cat([pos[:1], want.permute(0, 2, 3, 1).reshape(49, -1)]).numpy()
    from zsad_jax.backbones.common import resized_pos_embed
    got = resized_pos_embed(params["visual"]["pos_embed"], (7, 7), "bilinear")
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    out = jax_model.apply({"params": params}, np.zeros((1, 56, 56, 3), np.float32),
                          layers=(1,), method="encode_image")
    assert out.grid == (7, 7)


def to_openai(sd: dict[str, np.ndarray], depth: int, text_depth: int) -> dict[str, np.ndarray]:
    """HF CLIPModel state dict -> OpenAI names (the inverse mapping, written out by hand)."""
    out = {"visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
           "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
           "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
           "visual.proj": sd["visual_projection.weight"].T.copy(),
           "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "text_projection": sd["text_projection.weight"].T.copy(),
           "logit_scale": sd["logit_scale"]}
    for kind in ("weight", "bias"):
        out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
    blocks = [(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
              for i in range(depth)]
    blocks += [(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
               for i in range(text_depth)]
    for dst, src in blocks:
        for kind in ("weight", "bias"):
            out[f"{dst}.attn.in_proj_{kind}"] = np.concatenate(
                [sd[f"{src}.self_attn.{n}_proj.{kind}"] for n in "qkv"])
            for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                         ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2")):
                out[f"{dst}.{a}.{kind}"] = sd[f"{src}.{b}.{kind}"]
    return out


def _openai_clip_model(vocab_size: int = 100):
    """A tiny CLIPModel in OpenAI's conventions (head_dim 64, EOT = largest id, 4x MLP)."""
    text = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1,
                num_attention_heads=1, vocab_size=vocab_size, max_position_embeddings=16,
                eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2, pad_token_id=0)
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=1, image_size=32, patch_size=8)
    torch.manual_seed(0)
    return _perturb(transformers.CLIPModel(transformers.CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=16)), 0)


def _tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


@pytest.mark.filterwarnings("ignore:`torch.jit.(save|script)` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("torchscript", [False, True])
def test_openai_state_dict_equals_hf_route(tmp_path, torchscript):
    model = _openai_clip_model()
    hf_dir = tmp_path / "hf"
    model.save_pretrained(hf_dir)
    openai_sd = to_openai(state_numpy(model), 2, 1)
    pt = tmp_path / "ViT-tiny.pt"
    tensors = {k: torch.tensor(np.array(v)) for k, v in openai_sd.items()}
    if torchscript:
        torch.jit.save(torch.jit.script(_holder(tensors)), str(pt))
    else:
        torch.save(tensors, pt)
    assert cli(["--src", str(hf_dir), "--dst", str(tmp_path / "a")]) == 0
    assert cli(["--src", str(pt), "--dst", str(tmp_path / "b"), "--verify"]) == 0
    model_a, params_a = backbones.load(tmp_path / "a")
    model_b, params_b = backbones.load(tmp_path / "b")
    assert model_a.cfg == model_b.cfg
    _tree_equal(params_a, params_b)


class _Holder(torch.nn.Module):
    def forward(self, x):
        return x


def _holder(tensors):
    """A TorchScript-able module whose state_dict is `tensors` (like OpenAI's .pt archives)."""
    root = _Holder()
    for key, value in tensors.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                setattr(module, part, _Holder())
            module = getattr(module, part)
        module.register_parameter(leaf, torch.nn.Parameter(value))
    return root


@pytest.fixture(scope="module")
def dinov3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dinov3")
    tiny_hf("dinov3_reg_gated").save_pretrained(folder)
    return folder


def _digest(folder: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_cli_verify_passes_and_output_is_deterministic(dinov3_folder, tmp_path):
    dst = tmp_path / "out"
    assert cli(["--src", str(dinov3_folder), "--dst", str(dst), "--verify",
                "--verify-size", "48"]) == 0
    first = _digest(dst)
    assert "config.json" in first and len(first) > 10
    assert cli(["--src", str(dinov3_folder), "--dst", str(dst)]) == 0
    assert _digest(dst) == first


def test_verify_fails_on_wrong_weights(dinov3_folder, tmp_path):
    dst = tmp_path / "out"
    assert cli(["--src", str(dinov3_folder), "--dst", str(dst)]) == 0
    model, params = backbones.load(dst)
    params = jax.tree_util.tree_map(np.asarray, params)
    params["block1"]["mlp"]["fc2"]["bias"] = params["block1"]["mlp"]["fc2"]["bias"] + 0.1
    io.write_folder(dst, model.cfg, params)
    from weights_conversion.verify import verify
    assert not verify(dinov3_folder, dst, log=lambda _: None)


def test_arch_check(dinov3_folder, tmp_path):
    with pytest.raises(ConversionError,
                       match="does not match --arch dinov3-vitl16: .*width: checkpoint 32 != 1024"):
        convert(dinov3_folder, tmp_path / "x", arch="dinov3-vitl16")
    assert cli(["--src", str(dinov3_folder), "--dst", str(tmp_path / "y"),
                "--arch", "nope"]) == 2


def _bad_variant(tmp_path, edit):
    model = tiny_hf("dinov2")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    edit(sd)
    folder = tmp_path / "src"
    model.config.save_pretrained(folder)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors")
    return folder


def test_unknown_missing_and_misshaped_keys_are_named(tmp_path):
    def extra(sd):
        sd["encoder.layer.0.surprise"] = torch.zeros(3)

    def missing(sd):
        del sd["encoder.layer.1.norm2.bias"]

    def shape(sd):
        sd["encoder.layer.0.mlp.fc1.bias"] = torch.zeros(7)

    for edit, message in ((extra, "unknown key.*encoder.layer.0.surprise"),
                          (missing, "missing key 'encoder.layer.1.norm2.bias'"),
                          (shape, r"'encoder.layer.0.mlp.fc1.bias' has shape \(7,\)")):
        with pytest.raises(ConversionError, match=message):
            convert(_bad_variant(tmp_path / edit.__name__, edit), tmp_path / "dst")


def test_legacy_dinov2_names_convert_like_new_names():
    model = tiny_hf("dinov2_swiglu")
    sd = state_numpy(model)
    legacy = {}
    for k, v in sd.items():
        k2 = (k.replace("attention.q_proj", "attention.attention.query")
              .replace("attention.k_proj", "attention.attention.key")
              .replace("attention.v_proj", "attention.attention.value")
              .replace("attention.o_proj", "attention.output.dense")
              .replace("mlp.down_proj", "mlp.weights_out"))
        if ".mlp.gate_proj." in k2:
            up = sd[k.replace("gate_proj", "up_proj")]
            legacy[k2.replace("gate_proj", "weights_in")] = np.concatenate([v, up])
        elif ".mlp.up_proj." not in k2:
            legacy[k2] = v
    _, new = hf.convert_hf(model.config.to_dict(), sd, "new")
    _, old = hf.convert_hf(model.config.to_dict(), legacy, "legacy")
    _tree_equal(new, old)


def test_pickle_code_is_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"w": torch.zeros(2), "obj": _Holder}, path)
    with pytest.raises(ConversionError, match="weights_only=True"):
        convert(path, tmp_path / "dst")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(ConversionError, match="no config.json"):
        convert(tmp_path, tmp_path / "dst")
    assert cli(["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "d")]) == 2


def test_openai_bpe_tokenizer_files(tmp_path):
    from zsad_jax.backbones.tokenizer import tiny_bpe, tiny_tokenizer

    merges, vocab_size = tiny_bpe()
    model = _openai_clip_model(vocab_size)
    pt = tmp_path / "m.pt"
    torch.save({k: torch.tensor(np.array(v))
                for k, v in to_openai(state_numpy(model), 2, 1).items()}, pt)
    bpe = tmp_path / "bpe_simple_vocab.txt"
    bpe.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    convert(pt, tmp_path / "dst", bpe=bpe)
    assert backbones.load_tokenizer(tmp_path / "dst").encoder == tiny_tokenizer().encoder
    bpe.write_text("#version: 0.2\nh e\n")
    with pytest.raises(ConversionError, match="gives 515 tokens, the checkpoint has vocab_size"):
        convert(pt, tmp_path / "dst2", bpe=bpe)


def test_load_reports_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m weights_conversion"):
        backbones.load(tmp_path)
    (tmp_path / "config.json").write_text('{"format_version": 1, "arch": {"family": "clip"}}')
    with pytest.raises(ValueError, match="missing backbone config keys"):
        backbones.load(tmp_path)


def test_hf_tokenizer_files_are_copied(tmp_path):
    from zsad_jax.backbones.tokenizer import tiny_bpe, tiny_tokenizer, write_tokenizer_files

    model = tiny_hf("clip")
    src = tmp_path / "src"
    model.save_pretrained(src)
    write_tokenizer_files(tiny_tokenizer(), tiny_bpe()[0], src)
    convert(src, tmp_path / "dst")
    tok = backbones.load_tokenizer(tmp_path / "dst")
    assert tok.encode("a photo") == tiny_tokenizer().encode("a photo")
    assert pathlib.Path(tmp_path / "dst" / "vocab.json").read_bytes() == \
        (src / "vocab.json").read_bytes()


def test_bin_and_legacy_dinov3_layout_convert_like_safetensors(tmp_path):
    model = tiny_hf("dinov3_reg_gated")
    model.save_pretrained(tmp_path / "st")
    model.config.save_pretrained(tmp_path / "bin")
    # Released DINOv3 checkpoints name blocks `layer.N` (transformers 5 renames to `model.layer.N`).
    legacy = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    torch.save(legacy, tmp_path / "bin" / "pytorch_model.bin")
    convert(tmp_path / "st", tmp_path / "a")
    convert(tmp_path / "bin", tmp_path / "b")
    _tree_equal(backbones.load(tmp_path / "a")[1], backbones.load(tmp_path / "b")[1])


def test_garbage_or_truncated_safetensors_is_named(tmp_path, capsys):
    folder = _bad_variant(tmp_path, lambda sd: None)
    data = (folder / "model.safetensors").read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("garbage", b"\x00 not a file" * 9)):
        (folder / "model.safetensors").write_bytes(content)
        with pytest.raises(ConversionError, match=r"model.safetensors: not a readable safetensors"):
            convert(folder, tmp_path / name)
        assert cli(["--src", str(folder), "--dst", str(tmp_path / f"{name}_cli")]) == 2
        err = capsys.readouterr().err
        assert "model.safetensors" in err and "Traceback" not in err and len(err.splitlines()) == 1


def _converted(tmp_path):
    model = backbones.build("dinov2-tiny")
    params = jax.tree_util.tree_map(np.asarray, backbones.init_params(model, jax.random.key(0)))
    io.write_folder(tmp_path / "w", model.cfg, params)
    return tmp_path / "w", params


def test_corrupted_converted_folder_is_refused_naming_the_file(tmp_path):
    folder, params = _converted(tmp_path)
    _, loaded = backbones.load(folder)                                        # intact: loads
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    array_file = next(p for p in sorted((folder / "params").rglob("*"))
                      if p.is_file() and "mlp.fc1.kernel" in str(p) and p.stat().st_size > 64)
    blob = bytearray(array_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF                                              # one flipped byte
    array_file.write_bytes(bytes(blob))
    with pytest.raises(io.CorruptWeightsError, match=str(array_file.relative_to(folder))):
        backbones.load(folder)
    folder, _ = _converted(tmp_path / "again")
    meta = folder / "params" / "_METADATA"
    meta.write_text(meta.read_text()[:40])                                    # truncated metadata
    with pytest.raises(io.CorruptWeightsError, match="params/_METADATA differs"):
        backbones.load(folder)


def test_folder_without_checksums_loads_with_a_warning(tmp_path, caplog):
    folder, _ = _converted(tmp_path)
    (folder / io.CHECKSUMS_FILE).unlink()
    with caplog.at_level("WARNING"):
        backbones.load(folder)
    assert "cannot be checked" in caplog.text
