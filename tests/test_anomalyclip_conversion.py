"""Converter of the release's AnomalyCLIP prompt checkpoints (`weights_conversion.anomalyclip`) and
their loading into the method (`config.model.prompt_weights`).

`ReleaseLayoutLearner` is a torch module whose `state_dict()` has the key names, shapes and dtypes
of the release's `AnomalyCLIP_PromptLearner` (facts from GitHub zqhang/AnomalyCLIP @45ed4dd,
prompt_ensemble.py:148-213: ParameterList `compound_prompts_text`, ModuleList of Linear(D, 896)
`compound_prompt_projections`, int32 token buffers); it is written for this test.
"""

import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from weights_conversion import anomalyclip as conv
from weights_conversion.tensors import ConversionError
from zsad_jax import config_lib, methods
from zsad_jax.methods.anomalyclip import weights as prompt_files


class ReleaseLayoutLearner(torch.nn.Module):
    def __init__(self, embeddings, ids, n_ctx, depth, t_n_ctx, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        width = embeddings.shape[-1]
        randn = lambda *shape: torch.randn(*shape, generator=gen)            # noqa: E731
        self.ctx_pos = torch.nn.Parameter(randn(1, 1, n_ctx, width))
        self.ctx_neg = torch.nn.Parameter(randn(1, 1, n_ctx, width))
        self.compound_prompts_text = torch.nn.ParameterList(
            [torch.nn.Parameter(randn(t_n_ctx, width)) for _ in range(depth - 1)])
        self.compound_prompt_projections = torch.nn.ModuleList(
            [torch.nn.Linear(width, 896) for _ in range(depth - 1)])
        emb = torch.tensor(np.asarray(embeddings))
        for i, kind in enumerate(("pos", "neg")):
            self.register_buffer(f"token_prefix_{kind}", emb[i:i + 1, :1][None].clone())
            self.register_buffer(f"token_suffix_{kind}", emb[i:i + 1, 1 + n_ctx:][None].clone())
            self.register_buffer(f"tokenized_prompts_{kind}",
                                 torch.as_tensor(np.asarray(ids[i:i + 1])[None], dtype=torch.int32))


def demo_config(**overrides):
    return config_lib.load_config("anomalyclip.py:demo", overrides)


@pytest.fixture(scope="module")
def demo():
    method = methods.build(demo_config())
    params = method.init(jax.random.key(0))
    ids, _ = method.prompt_tokens()
    embeddings = np.asarray(method.clip.embed_tokens(params["backbones"]["clip"], ids))
    return method, params, ids, embeddings


def _release_checkpoint(demo, tmp_path, **changes):
    _, _, ids, embeddings = demo
    learner = ReleaseLayoutLearner(embeddings, ids, n_ctx=4, depth=2, t_n_ctx=2)
    state = learner.state_dict()
    state.update(changes)
    path = tmp_path / "epoch_15.pth"
    torch.save({"prompt_learner": state}, path)
    return path, learner


def test_release_checkpoint_converts_and_drops_the_unused_projections(demo, tmp_path):
    path, learner = _release_checkpoint(demo, tmp_path)
    assert sorted(learner.state_dict()) == sorted([
        "ctx_pos", "ctx_neg", "compound_prompts_text.0", "compound_prompt_projections.0.weight",
        "compound_prompt_projections.0.bias", "token_prefix_pos", "token_suffix_pos",
        "token_prefix_neg", "token_suffix_neg", "tokenized_prompts_pos", "tokenized_prompts_neg"])
    meta = conv.convert(path, tmp_path / "out")
    params, buffers, saved = prompt_files.load_prompts(tmp_path / "out")
    assert meta == {k: v for k, v in saved.items() if k not in ("format", "version")}
    assert (meta["prompt_length"], meta["deep_prompt_depth"], meta["deep_prompt_length"],
            meta["text_width"]) == (4, 2, 2, 64)
    assert meta["dropped"] == ["compound_prompt_projections.0.bias",
                               "compound_prompt_projections.0.weight"]
    np.testing.assert_array_equal(params["ctx_normal"], learner.ctx_pos.detach()[0, 0].numpy())
    np.testing.assert_array_equal(params["ctx_anomalous"], learner.ctx_neg.detach()[0, 0].numpy())
    np.testing.assert_array_equal(params["deep_prompts"][0],
                                  learner.compound_prompts_text[0].detach().numpy())
    assert sorted(params) == ["ctx_anomalous", "ctx_normal", "deep_prompts"]
    _, _, ids, embeddings = demo
    np.testing.assert_array_equal(buffers["tokenized_prompts"], ids)
    assert buffers["tokenized_prompts"].dtype == np.int32
    np.testing.assert_array_equal(buffers["token_suffix"], embeddings[:, 5:])


def test_every_unexpected_key_is_named(demo, tmp_path):
    path, _ = _release_checkpoint(demo, tmp_path, **{"ctx_extra": torch.zeros(2),
                                                     "compound_prompts_visual.0": torch.zeros(2)})
    with pytest.raises(ConversionError, match="2 unexpected key.*compound_prompts_visual.0, ctx_extra"):
        conv.convert(path, tmp_path / "out")
    torch.save({"prompt_learner": {}, "optimizer": {}}, path)
    with pytest.raises(ConversionError, match=r"unexpected top-level key\(s\) \['optimizer'\]"):
        conv.convert(path, tmp_path / "out")


def test_shapes_and_missing_keys_are_checked(demo, tmp_path):
    path, learner = _release_checkpoint(demo, tmp_path, ctx_neg=torch.zeros(1, 1, 5, 64))
    with pytest.raises(ConversionError,
                       match=r"'ctx_neg' has shape \(1, 1, 5, 64\), expected \(1, 1, 4, 64\)"):
        conv.convert(path, tmp_path / "out")
    path, _ = _release_checkpoint(demo, tmp_path, **{"compound_prompts_text.0": torch.zeros(2, 63)})
    with pytest.raises(ConversionError, match=r"'compound_prompts_text.0' has shape \(2, 63\)"):
        conv.convert(path, tmp_path / "out")
    state = learner.state_dict()
    del state["token_suffix_neg"]
    torch.save({"prompt_learner": state}, path)
    with pytest.raises(ConversionError, match="missing key.*token_suffix_neg"):
        conv.convert(path, tmp_path / "out")


def test_command_line(demo, tmp_path):
    path, _ = _release_checkpoint(demo, tmp_path)
    assert conv.main(["--src", str(path), "--dst", str(tmp_path / "out")]) == 0
    assert conv.main(["--src", str(tmp_path / "missing.pth"), "--dst", str(tmp_path / "x")]) == 2
    out = subprocess.run([sys.executable, "-m", "weights_conversion.anomalyclip", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--src" in out.stdout and "compound_prompt_projections" in out.stdout


def test_prompt_weights_load_into_the_method_and_are_checked(demo, tmp_path):
    path, learner = _release_checkpoint(demo, tmp_path)
    conv.convert(path, tmp_path / "prompts")
    method = methods.build(demo_config(**{"model.prompt_weights": str(tmp_path / "prompts")}))
    assert method.required_files()[-1][0] == str(tmp_path / "prompts")
    head = method.init(jax.random.key(0))["head"]          # key 0: the CLIP the buffers came from
    np.testing.assert_array_equal(head["ctx_anomalous"], learner.ctx_neg.detach()[0, 0].numpy())
    np.testing.assert_array_equal(head["deep_prompts"][0], learner.compound_prompts_text[0].detach().numpy())

    other = demo_config(**{"model.prompt_weights": str(tmp_path / "prompts"), "model.prompt_length": 5})
    with pytest.raises(ValueError, match="prompt_length=4 in anomalyclip.json, this config needs 5"):
        methods.build(other).init(jax.random.key(0))
    ids = learner.tokenized_prompts_neg.clone()
    ids[0, 0, 5] += 1
    path, _ = _release_checkpoint(demo, tmp_path, tokenized_prompts_neg=ids)
    conv.convert(path, tmp_path / "bad_ids")
    with pytest.raises(ValueError, match="tokenized prompts differ"):
        methods.build(demo_config(**{"model.prompt_weights": str(tmp_path / "bad_ids")})).init(
            jax.random.key(0))
    path, _ = _release_checkpoint(demo, tmp_path, token_prefix_pos=learner.token_prefix_pos + 0.5)
    conv.convert(path, tmp_path / "other_clip")
    with pytest.raises(ValueError, match="token_prefix .* differ from this CLIP's"):
        methods.build(demo_config(**{"model.prompt_weights": str(tmp_path / "other_clip")})).init(
            jax.random.key(0))
    with pytest.raises(FileNotFoundError, match="weights_conversion.anomalyclip"):
        methods.build(demo_config(**{"model.prompt_weights": str(tmp_path / "none")})).init(
            jax.random.key(0))
