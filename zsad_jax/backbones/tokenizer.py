"""CLIP byte-level BPE tokenizer (pure Python, no torch), and a tiny offline vocabulary.

Same algorithm as OpenAI's `simple_tokenizer` / HF `CLIPTokenizer`: text is NFC-normalised (or
ftfy-fixed if ftfy is installed), html-unescaped (as OpenAI; HF's fast tokenizer does not
unescape), whitespace-collapsed and lower-cased;
split with CLIP's regex; each piece is mapped to byte-level unicode characters, the last one
marked with `</w>`, and merged by BPE rank. Sequences are `<|startoftext|> ... <|endoftext|>`
padded with 0 to the context length (OpenAI `clip.tokenize`).
"""

from __future__ import annotations

import functools
import html
import json
import pathlib
import unicodedata
from collections.abc import Sequence

import numpy as np

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
            r"""[^\s\p{L}\p{N}]+""")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible map of the 256 byte values to printable unicode characters."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _clean(text: str) -> str:
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:
        text = unicodedata.normalize("NFC", text)   # what ftfy (and HF's normalizer) also do
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def base_vocab() -> list[str]:
    """The 512 byte symbols (bare and with `</w>`) that start every CLIP vocabulary."""
    chars = list(bytes_to_unicode().values())
    return chars + [c + "</w>" for c in chars]


class ClipTokenizer:
    """`tok(["a photo"]) -> (B, context_length) int32`; `tok.encode(text) -> list[int]`."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 context_length: int = 77):
        import regex

        for special in (SOT, EOT):
            if special not in vocab:
                raise ValueError(f"tokenizer vocab has no {special!r} entry")
        self.encoder = dict(vocab)
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_token_id = self.encoder[SOT]
        self.eot_token_id = self.encoder[EOT]
        self.context_length = context_length
        self.vocab_size = len(self.encoder)
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._cache = {SOT: SOT, EOT: EOT}

    # -- constructors ------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_json, merges_txt, context_length: int = 77) -> ClipTokenizer:
        """HF layout: `vocab.json` (token -> id) and `merges.txt` ("#version" header optional)."""
        vocab = json.loads(pathlib.Path(vocab_json).read_text(encoding="utf-8"))
        return cls(vocab, read_merges(merges_txt), context_length)

    @classmethod
    def from_bpe_merges(cls, merges: Sequence[tuple[str, str]],
                        context_length: int = 77) -> ClipTokenizer:
        """OpenAI layout: vocabulary = bytes + bytes</w> + merged pairs + SOT + EOT."""
        vocab = base_vocab() + ["".join(m) for m in merges] + [SOT, EOT]
        return cls({s: i for i, s in enumerate(vocab)}, merges, context_length)

    # -- BPE ---------------------------------------------------------------------------------
    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(word[i], word[i + 1]) for i in range(len(word) - 1)]
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        out = " ".join(word)
        self._cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without SOT/EOT."""
        ids = []
        for piece in self._pattern.findall(_clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for sym in self._bpe(piece).split(" "):
                if sym not in self.encoder:
                    raise ValueError(f"BPE symbol {sym!r} of {text!r} is not in the vocab")
                ids.append(self.encoder[sym])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of `encode` (up to the text cleaning)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        words = text.split("</w>")
        raw = [bytearray(self.byte_decoder[c] for c in w).decode("utf-8", "replace")
               for w in words]
        return " ".join(w for w in raw if w)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None,
                 truncate: bool = True) -> np.ndarray:
        """(B, L) int32: SOT + tokens + EOT, zero-padded (OpenAI `clip.tokenize`)."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.zeros((len(texts), length), np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > length:
                if not truncate:
                    raise ValueError(f"text {text!r} has {len(ids)} tokens > {length}")
                ids = ids[:length - 1] + [self.eot_token_id]
            out[row, :len(ids)] = ids
        return out


def read_merges(path) -> list[tuple[str, str]]:
    """merges.txt (HF) or OpenAI's `bpe_simple_vocab_16e6.txt[.gz]` -> list of pairs.

    The first line is a header in both: HF's `#version: 0.2`, OpenAI's
    `"bpe_simple_vocab_16e6.txt#version: 0.2` (two "symbols" when split: it must not be read as a
    merge, or every merged token's id moves up by one)."""
    path = pathlib.Path(path)
    if path.suffix == ".gz":
        import gzip
        text = gzip.open(path, "rt", encoding="utf-8").read()
    else:
        text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and "#version" in line):
            continue
        if "#version" in line:   # written by a converter before this was fixed
            raise ValueError(f"{path}:{number}: a header line {line!r} among the merges (this "
                             f"folder was converted with an earlier --bpe reader that shifted "
                             f"every merged token id by one): convert the CLIP again")
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected two symbols per merge line, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def openai_merges(path, vocab_size: int = 49408) -> list[tuple[str, str]]:
    """OpenAI's BPE file holds more merges than the model uses: keep vocab_size - 512 - 2."""
    return read_merges(path)[: vocab_size - 512 - 2]


# Prompt words the tiny vocabulary's merges are learned from (demo prompts stay short).
_TINY_CORPUS = ("a photo of the object flawless perfect unblemished normal good damaged broken "
                "defect defective anomaly anomalous abnormal crack scratch hole contamination "
                "with without bottle cable capsule carpet grid hazelnut leather metal nut pill "
                "screw tile toothbrush transistor wood zipper candle fryum pcb macaroni")


@functools.lru_cache(maxsize=1)
def tiny_bpe() -> tuple[tuple[tuple[str, str], ...], int]:
    """Deterministic (merges, vocab_size) of `clip-tiny`: BPE learned on a fixed prompt corpus."""
    from zsad_jax.backbones.config import TINY_VOCAB_SIZE

    num_merges = TINY_VOCAB_SIZE - 512 - 2
    b2u = bytes_to_unicode()
    words: dict[tuple[str, ...], int] = {}
    for w in _TINY_CORPUS.split():
        chars = [b2u[b] for b in w.encode()]
        key = tuple(chars[:-1] + [chars[-1] + "</w>"])
        words[key] = words.get(key, 0) + 1
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        counts: dict[tuple[str, str], int] = {}
        for word, n in words.items():
            for pair in zip(word[:-1], word[1:], strict=True):
                counts[pair] = counts.get(pair, 0) + n
        if not counts:
            break
        best = max(sorted(counts), key=lambda p: counts[p])  # ties: lexicographic, deterministic
        merges.append(best)
        new_words = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words
    # Pad with merges of unused byte pairs so the vocabulary size is exactly TINY_VOCAB_SIZE.
    filler = iter((a, b) for a in "0123456789" for b in "0123456789")
    seen = set(merges)
    while len(merges) < num_merges:
        pair = next(filler)
        if pair not in seen:
            merges.append(pair)
    return tuple(merges), TINY_VOCAB_SIZE


def tiny_tokenizer(context_length: int = 77, sot_token_id: int | None = None,
                   eot_token_id: int | None = None) -> ClipTokenizer:
    """The offline tokenizer of the tiny random `clip-tiny` (vocab size TINY_VOCAB_SIZE).

    With `sot_token_id` / `eot_token_id` the start / end tokens take those ids instead (a random
    CLIP of a real architecture pools at its own EOT id; the other ids stay below 638).
    """
    tok = ClipTokenizer.from_bpe_merges(tiny_bpe()[0], context_length)
    if sot_token_id is None and eot_token_id is None:
        return tok
    vocab = dict(tok.encoder)
    vocab[SOT] = tok.sot_token_id if sot_token_id is None else sot_token_id
    vocab[EOT] = tok.eot_token_id if eot_token_id is None else eot_token_id
    return ClipTokenizer(vocab, tiny_bpe()[0], context_length)


def write_tokenizer_files(tok: ClipTokenizer, merges: Sequence[tuple[str, str]], dst) -> None:
    """Writes HF-style `vocab.json` + `merges.txt` (deterministic) into folder `dst`."""
    dst = pathlib.Path(dst)
    (dst / "vocab.json").write_text(json.dumps(tok.encoder, ensure_ascii=False, sort_keys=False),
                                    encoding="utf-8")
    (dst / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges)
                                    + "\n", encoding="utf-8")
