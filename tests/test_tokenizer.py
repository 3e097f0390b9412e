"""CLIP BPE tokenizer: same ids as transformers' CLIPTokenizer on a hand-made vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from zsad_jax import backbones
from zsad_jax.backbones.config import ARCHS, TINY_VOCAB_SIZE
from zsad_jax.backbones.tokenizer import (
    EOT,
    SOT,
    ClipTokenizer,
    base_vocab,
    openai_merges,
    read_merges,
    tiny_bpe,
    tiny_tokenizer,
    write_tokenizer_files,
)

# A hand-made merge list: enough to exercise multi-step merges, word ends and punctuation.
MERGES = [("o", "t"), ("p", "h"), ("ph", "ot"), ("phot", "o</w>"), ("o", "f</w>"),
          ("d", "a"), ("da", "m"), ("dam", "a"), ("g", "e"), ("ge", "d</w>"), ("e", "r"),
          ("c", "r"), ("cr", "a"), ("c", "k"), ("t", "h"), ("th", "e</w>")]
TEXTS = ["a photo of a damaged bottle.", "A PHOTO of the  cracks!", "flawless screw, 3 holes",
         "it's a photo of the broken hazelnut", "   x-ray   ", "café crème naïve"]


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    tok = ClipTokenizer.from_bpe_merges(MERGES)
    write_tokenizer_files(tok, MERGES, folder)
    return folder, tok


def test_same_ids_as_transformers(hand_made):
    folder, ours = hand_made
    theirs = transformers.CLIPTokenizer.from_pretrained(str(folder))
    assert len(theirs.get_vocab()) == ours.vocab_size == 512 + len(MERGES) + 2
    for text in TEXTS:
        want = theirs(text)["input_ids"]
        assert [ours.sot_token_id] + ours.encode(text) + [ours.eot_token_id] == want, text
    # merges actually apply: "photo" is one token, "damaged" is "dama" + "ged</w>".
    assert ours.encode("photo") == [ours.encoder["photo</w>"]]
    assert ours.encode("damaged") == [ours.encoder["dama"], ours.encoder["ged</w>"]]


def test_html_entities_unescaped_like_openai(hand_made):
    _, tok = hand_made
    assert tok.encode("nut &amp; bolt") == tok.encode("nut & bolt")


def test_batch_layout_like_openai_tokenize(hand_made):
    _, tok = hand_made
    ids = tok(["a photo", "of"], context_length=8)
    assert ids.dtype == np.int32 and ids.shape == (2, 8)
    a, photo = tok.encoder["a</w>"], tok.encoder["photo</w>"]
    np.testing.assert_array_equal(ids[0], [tok.sot_token_id, a, photo, tok.eot_token_id,
                                           0, 0, 0, 0])
    long = tok(["a " * 20], context_length=6)
    assert long[0, -1] == tok.eot_token_id and long[0, 0] == tok.sot_token_id
    with pytest.raises(ValueError, match="tokens > 6"):
        tok(["a " * 20], context_length=6, truncate=False)


def test_round_trip_and_load_from_folder(hand_made):
    folder, tok = hand_made
    loaded = backbones.load_tokenizer(folder)
    assert loaded.encoder == tok.encoder
    assert loaded.decode(loaded.encode("a photo of the crack")) == "a photo of the crack"


def test_tiny_vocab_matches_clip_tiny():
    merges, size = tiny_bpe()
    tok = tiny_tokenizer()
    cfg = ARCHS["clip-tiny"]
    assert size == tok.vocab_size == cfg.vocab_size == TINY_VOCAB_SIZE
    assert tok.sot_token_id == cfg.sot_token_id and tok.eot_token_id == cfg.eot_token_id
    assert tiny_bpe()[0] == merges                      # deterministic
    assert len(tok.encode("a photo of a damaged bottle")) < 12   # merges learned on prompts
    assert tok.decode(tok.encode("a photo of a damaged bottle")) == "a photo of a damaged bottle"
    assert backbones.load_tokenizer("clip-tiny").encoder == tok.encoder


def test_bad_vocab_is_reported(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(base_vocab())}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=SOT.replace("|", r"\|")):
        backbones.load_tokenizer(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b c\n")
    vocab = {s: i for i, s in enumerate(base_vocab() + [SOT, EOT])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="merges.txt:2"):
        backbones.load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="--bpe"):
        backbones.load_tokenizer(tmp_path / "nothing")


@pytest.mark.parametrize("header", ["#version: 0.2", '"bpe_simple_vocab_16e6.txt#version: 0.2'])
def test_merges_header_is_not_a_merge(tmp_path, header):
    """HF's merges.txt and OpenAI's bpe_simple_vocab_16e6.txt.gz both open with a header line; with
    it read as a merge, every merged token id would move up by one."""
    import gzip

    body = "a b\nab c</w>\n"
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(f"{header}\n{body}")
    assert read_merges(path) == [("a", "b"), ("ab", "c</w>")]
    plain = tmp_path / "merges.txt"
    plain.write_text(f"{header}\n{body}")
    assert read_merges(plain) == [("a", "b"), ("ab", "c</w>")]
    tok = ClipTokenizer.from_bpe_merges(openai_merges(path, vocab_size=516))
    # ids: 512 byte symbols, then one per merge in order, then the start and end tokens.
    assert (tok.encoder["ab"], tok.encoder["abc</w>"], tok.vocab_size) == (512, 513, 516)


def test_folder_converted_with_the_shifted_merges_is_refused(tmp_path):
    """Folders converted with --bpe before the header fix hold the header as their first merge."""
    path = tmp_path / "merges.txt"
    path.write_text('#version: 0.2\n"bpe_simple_vocab_16e6.txt#version: 0.2\na b\n')
    with pytest.raises(ValueError, match="merges.txt:2: a header line .* convert the CLIP again"):
        read_merges(path)
