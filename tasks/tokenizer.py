"""Tokenizers for text streams: text in, padded ``(n, N)`` int64 token ids and lengths out.

Two kinds, both with id 0 as padding (``Examples.cat`` pads with zeros):

* :class:`ByteTokenizer` (the default): each UTF-8 byte is one token (id = byte + 1), so any
  language works and there is nothing to train; vocabulary size 257.
* :class:`BPETokenizer`: byte-level BPE trained with the ``tokenizers`` library on a stream's
  training text. Training is cached on disk, keyed by a hash of the text and the settings, in
  ``$CLBENCH_CACHE`` or else ``$XDG_CACHE_HOME/clbench`` (``~/.cache/clbench``).

Both truncate to ``max_len`` tokens; ``decode(encode(s)) == s`` for any text that fits.

A third kind, :class:`PretrainedTokenizer`, is a backbone's own tokenizer (MiniLM's WordPiece, a
clbench checkpoint's BPE): :func:`load_tokenizer` gives it for a backbone name (see
:mod:`clbench.models.backbones`), since a pretrained model only understands its own token ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import tokenizers
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from clbench.cache import cache_root
from clbench.errors import UserError
from clbench.models.backbones import resolve

PAD = 0
_CUT = re.compile(r"(?<=\w) ")  # a space after a word character: a safe place to cut a text


def pad(seqs: Sequence[Sequence[int] | np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences with :data:`PAD`: ``(n, N)`` int64 ids and ``(n,)`` int64 lengths,
    ``N`` the longest sequence (at least 1, so an empty batch still has a width)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = max(int(lengths.max()) if len(seqs) else 0, 1)
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return torch.from_numpy(ids), torch.from_numpy(lengths)


class ByteTokenizer:
    """UTF-8 bytes as tokens: id = byte + 1 (0 is padding)."""

    kind = "bytes"

    def __init__(self, max_len: int = 256, source: str | None = None):
        self.max_len = max_len
        self.vocab_size = 257
        self.source = source  # the backbone it serves, if any (see load_tokenizer)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = []
        for s in texts:
            b = np.frombuffer(s.encode("utf-8", errors="surrogatepass")[: self.max_len], dtype=np.uint8)
            seqs.append(b.astype(np.int64) + 1)
        return pad(seqs)

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) - 1 for i in ids if int(i) != PAD).decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "max_len": self.max_len}


class BPETokenizer:
    """A trained byte-level BPE (a ``tokenizers.Tokenizer``), truncating to ``max_len``."""

    kind = "bpe"

    def __init__(self, tok, max_len: int = 256, path: Path | None = None):
        self.tok = tok
        self.max_len = max_len
        self.vocab_size = tok.get_vocab_size()
        self.path = path  # the cache file it came from

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        # Long texts are cut at a word boundary first: the pre-tokenizer never joins a word
        # character and the space after it, so the cut text's tokens are the full text's first
        # tokens. Where that leaves fewer than max_len tokens, the full text is encoded.
        limit = 8 * self.max_len
        cut = []
        for s in texts:
            m = _CUT.search(s, limit) if len(s) > limit else None
            cut.append(s[: m.start()] if m else s)
        ids = [e.ids for e in self.tok.encode_batch_fast(cut)]  # no offsets: faster
        redo = [i for i, (c, s) in enumerate(zip(cut, texts)) if len(ids[i]) < self.max_len and c is not s]
        for i, e in zip(redo, self.tok.encode_batch_fast([texts[i] for i in redo])):
            ids[i] = e.ids
        return pad([x[: self.max_len] for x in ids])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) != PAD])

    def describe(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "max_len": self.max_len}


def text_hash(texts: Sequence[str], settings: dict) -> str:
    """A sha256 of ``settings`` and ``texts`` (order matters), hex."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for s in texts:
        b = s.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def train_bpe(
    texts: Sequence[str],
    *,
    vocab_size: int = 8000,
    max_len: int = 256,
    min_frequency: int = 2,
    cache_dir: str | Path | None = None,
) -> BPETokenizer:
    """A byte-level BPE trained on ``texts``, loaded from the cache when the same texts and
    settings were seen before (``cache_dir`` default: :func:`cache_root` ``/ "tokenizers"``).

    ``max_len`` only truncates; it is not part of the cache key.
    """
    settings = {
        "kind": "bytelevel-bpe",
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "tokenizers": tokenizers.__version__,
    }
    folder = Path(cache_dir) if cache_dir is not None else cache_root() / "tokenizers"
    path = folder / f"bpe-{text_hash(texts, settings)[:24]}.json"
    if path.is_file():
        try:
            return BPETokenizer(Tokenizer.from_file(str(path)), max_len, path)
        except Exception:  # a damaged cache file: train again and overwrite it
            pass
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<pad>"],  # id 0 = PAD
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id("<pad>") == PAD
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(tok.to_str(), encoding="utf-8")
    os.replace(tmp, path)  # atomic: concurrent cells never read half a file
    return BPETokenizer(tok, max_len, path)


class PretrainedTokenizer:
    """A backbone's tokenizer (a ``tokenizers.Tokenizer`` read from its ``tokenizer.json``, with
    the special tokens it adds, e.g. BERT's ``[CLS] … [SEP]``), truncating to ``max_len``.
    ``source`` is the backbone name it was loaded for."""

    kind = "pretrained"

    def __init__(self, tok, source: str, max_len: int = 256):
        self.tok = tok
        self.source = source
        self.max_len = max_len
        self.vocab_size = tok.get_vocab_size()
        tok.no_padding()
        tok.enable_truncation(max_len)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad([e.ids for e in self.tok.encode_batch_fast(list(texts))])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode([int(i) for i in ids])

    def describe(self) -> dict:
        return {"kind": self.kind, "source": self.source, "vocab_size": self.vocab_size, "max_len": self.max_len}


def load_tokenizer(spec: str, max_len: int = 256):
    """The tokenizer of the backbone ``spec`` names (``minilm``, a checkpoint folder, ``hf:<name>``)."""
    if spec not in ("minilm", "smollm2") and not spec.startswith("hf:") and not Path(spec).expanduser().exists():
        raise UserError(f"tokenizer {spec!r}: not 'bytes', 'bpe', 'minilm', 'hf:<name>' or a checkpoint folder")
    backbone = resolve(spec, what="tokenizer")
    if backbone.family == "hf-causal":
        raise UserError(f"tokenizer {spec!r} is a Hugging Face causal LM's: it runs generative streams "
                        "(prompts and answers), not a classification stream's texts")
    if backbone.input_kind != "tokens":
        raise UserError(f"tokenizer {spec!r}: that checkpoint takes {backbone.input_kind}, not text")
    if backbone.tokenizer["kind"] == "bytes":
        return ByteTokenizer(max_len=max_len, source=spec)
    return PretrainedTokenizer(Tokenizer.from_file(backbone.tokenizer["path"]), spec, max_len)
