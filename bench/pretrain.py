"""Self-supervised pre-training of the clbench Transformer (``clbench pretrain``).

Masked language modelling (BERT's recipe: 15% of the tokens chosen, of which 80% become the mask
token, 10% a random token, 10% stay) for a bidirectional model; next-token prediction for a
causal one (``causal = true``). The LM head is BERT's (dense, GELU, LayerNorm, then the token
embeddings transposed, tied, plus a bias).

Text comes from ``.txt`` files (one document per non-empty line) or from the training split of
every task of a text-classification folder (the ``text`` stream's formats); test splits are never
read. Sequences are truncated to ``seq_len`` tokens.

A run writes ``checkpoint-<step>`` folders (``model.safetensors`` with the weights, the LM head's
under ``lm_head.``; ``config.json`` with the model config, tokenizer and run settings;
``tokenizer.json`` unless the tokens are bytes; ``trainer.pt`` with the optimizer state) and keeps
the last ``keep``. Started again on the same folder it resumes from the latest checkpoint, and goes
on exactly as an uninterrupted run would: each step's batch and masking are drawn from a generator
seeded by (seed, step). A checkpoint folder is what a suite's ``model.init`` takes (the run's folder
means its latest checkpoint), and what a text stream's ``tokenizer`` takes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .errors import UserError
from .models.backbones import (CHECKPOINT_FORMAT, CONFIG, TOKENIZER, WEIGHTS, is_pretrained, latest_checkpoint,
                               load_into, resolve)
from .models.transformer import LMHead, ModelConfig, Transformer
from .params import device_from

from clbench.tasks.text import FORMATS, find_tasks, read_split
from clbench.tasks.tokenizer import ByteTokenizer, load_tokenizer, train_bpe

TRAINER = "trainer.pt"


@dataclass
class PretrainConfig:
    steps: int = 1000  # total optimizer steps (a resumed run stops at the same total)
    batch_size: int = 32  # sequences per step
    seq_len: int = 128  # tokens per sequence (longer texts are truncated)
    lr: float = 5e-4  # peak learning rate (AdamW), after a linear warm-up, cosine decay to 10%
    warmup: int = 0  # warm-up steps (0: 5% of steps)
    weight_decay: float = 0.01
    mask_prob: float = 0.15  # masked language modelling: fraction of tokens predicted
    save_every: int = 200  # steps between checkpoints (the last step always saves)
    keep: int = 2  # checkpoints kept (the oldest are removed)
    seed: int = 0
    grad_clip: float = 1.0


# -- text ------------------------------------------------------------------------------------------


def read_corpus(path: str | Path) -> list[str]:
    """Training text under ``path``: ``.txt`` files (a document per non-empty line), else the
    training split of each task of a text-classification folder."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"text not found: {path}")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.txt") if p.is_file())
    if files and all(p.suffix == ".txt" for p in files):
        docs = [line.strip() for p in files for line in p.read_text(encoding="utf-8", errors="replace").splitlines()]
        docs = [d for d in docs if d]
    else:
        tasks = find_tasks(root, "auto") if root.is_dir() else {}
        docs = []
        for name, (folder, fmt) in tasks.items():
            train = folder / f"train.{FORMATS[fmt]}"
            if train.is_file():
                docs += read_split(train, fmt, "sentence", "label")[0]
    if not docs:
        raise UserError(f"no text under {path}: give .txt files or a folder of tasks with training splits")
    return docs


def make_tokenizer(spec: str, docs: list[str], seq_len: int, vocab_size: int):
    if spec == "bytes":
        return ByteTokenizer(max_len=seq_len)
    if spec == "bpe":
        return train_bpe(docs, vocab_size=vocab_size, max_len=seq_len)
    return load_tokenizer(spec, max_len=seq_len)


def special_ids(tok) -> tuple[int | None, list[int]]:
    """The tokenizer's mask token id (None if it has none) and its special token ids."""
    inner = getattr(tok, "tok", None)
    if inner is None:
        return None, []
    special = [i for i, t in inner.get_added_tokens_decoder().items() if t.special]
    return inner.token_to_id("[MASK]"), special


# -- model -----------------------------------------------------------------------------------------


def mask_tokens(x, lengths, *, vocab: int, mask_id: int, special: torch.Tensor, prob: float, g: torch.Generator):
    """BERT masking of ``x`` ``(B, N)``: the inputs, and the targets (-100 where not predicted)."""
    B, N = x.shape
    valid = torch.arange(N)[None, :] < lengths[:, None]
    valid &= ~torch.isin(x, special)
    chosen = (torch.rand(B, N, generator=g) < prob) & valid
    r = torch.rand(B, N, generator=g)
    random_ids = torch.randint(0, vocab, (B, N), generator=g)
    inputs = torch.where(chosen & (r < 0.8), torch.full_like(x, mask_id), x)
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    targets = torch.where(chosen, x, torch.full_like(x, -100))
    return inputs, targets


def lm_loss(model: Transformer, head: LMHead, batch_x, lengths, targets) -> torch.Tensor:
    h = model.hidden_states(batch_x, lengths)
    sel = targets != -100
    if not bool(sel.any()):
        return h.sum() * 0.0
    return F.cross_entropy(head(h[sel], model.embed.weight), targets[sel])


# -- the run ---------------------------------------------------------------------------------------


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    warm = cfg.warmup or max(1, cfg.steps // 20)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pretrain(
    out: str | Path,
    text: str | Path,
    *,
    model: ModelConfig | None = None,
    tokenizer: str = "bytes",
    vocab_size: int = 8000,
    config: PretrainConfig | None = None,
    device: str = "cpu",
    on_step: Callable[[int, int, float], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> Path:
    """Pre-train into ``out`` (resuming from its latest checkpoint) and return the last checkpoint.

    ``model.init`` may name a backbone to start from (its architecture and tokenizer are then
    used, and ``tokenizer`` must be left at its default or name the same backbone).
    ``on_step(step, steps, loss)`` is called after every step.
    """
    cfg = config or PretrainConfig()
    model_cfg = model or ModelConfig()
    for name in ("steps", "batch_size", "seq_len", "save_every", "keep"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if not 0 < cfg.mask_prob < 1:
        raise UserError(f"mask_prob must be in (0, 1), got {cfg.mask_prob}")
    dev = device_from(device, "--device")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output is a file, not a folder: {out}")
    resume = latest_checkpoint(out)
    backbone = None  # the weights to start from, when not resuming

    if resume is not None:
        meta = json.loads((resume / CONFIG).read_text(encoding="utf-8"))
        model_cfg = replace(ModelConfig(**{**asdict(model_cfg), **meta["model"]}), init="random")
        # the checkpoint holds its tokenizer (tokenizer.json), unless the tokens are bytes
        tokenizer = "bytes" if meta["tokenizer"]["kind"] == "bytes" else str(resume)
        log(f"resuming from {resume.name}")
    elif is_pretrained(model_cfg.init):
        backbone = resolve(model_cfg.init)
        if backbone.input_kind != "tokens":
            raise UserError(f"--init {model_cfg.init!r} takes {backbone.input_kind}, not text")
        if tokenizer not in ("bytes", model_cfg.init):
            raise UserError(f"--init {model_cfg.init!r} comes with its own tokenizer: leave --tokenizer out")
        tokenizer = model_cfg.init
        model_cfg = replace(model_cfg, **backbone.arch)
    objective = "causal" if model_cfg.causal else "mlm"
    if cfg.seq_len > model_cfg.max_len:
        raise UserError(f"seq_len {cfg.seq_len} exceeds the model's max_len {model_cfg.max_len}")

    docs = read_corpus(text)
    tok = make_tokenizer(tokenizer, docs, cfg.seq_len, vocab_size)
    mask_id, special = special_ids(tok)
    vocab = tok.vocab_size
    if objective == "mlm" and mask_id is None:
        mask_id = vocab  # a mask token of its own, past the tokenizer's ids
    input_dim = vocab + (1 if objective == "mlm" and mask_id == vocab else 0)
    ids, lengths = tok.encode(docs)
    special = torch.tensor(special, dtype=torch.long)
    log(f"{len(docs)} documents, {int(lengths.sum())} tokens, vocabulary {vocab}, objective {objective}")

    torch.manual_seed(cfg.seed)
    net = Transformer(model_cfg, input_kind="tokens", input_dim=input_dim, n_classes=1)
    if backbone is not None:
        load_into(net, backbone)
        if net.embed.weight.shape[0] != input_dim:
            raise UserError(f"--init {model_cfg.init!r}: its vocabulary does not match its tokenizer")
    head = LMHead(model_cfg, input_dim)
    net.head.requires_grad_(False)  # the classification head is not pre-trained
    trainer = None
    if resume is not None:

        state = load_file(str(resume / WEIGHTS))
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("lm_head.")}, strict=False)
        head.load_state_dict({k[len("lm_head."):]: v for k, v in state.items() if k.startswith("lm_head.")})
        trainer = torch.load(resume / TRAINER, weights_only=True)
    net.to(dev).train()
    head.to(dev).train()
    params = [p for p in list(net.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if trainer is not None:
        opt.load_state_dict(trainer["optimizer"])  # its state moves to the parameters' device
        step = trainer["step"]
    if step >= cfg.steps:
        log(f"already at step {step} of {cfg.steps}")
        return resume

    meta = {
        "model": model_cfg.architecture(),
        "input_kind": "tokens",
        "input_dim": input_dim,
        "tokenizer": tok.describe(),
        "objective": objective,
        "run": {**asdict(cfg), "text": str(text), "tokenizer": tokenizer, "vocab_size": vocab_size,
                "init": model_cfg.init, "mask_id": mask_id},
    }
    while step < cfg.steps:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        idx = torch.randint(0, len(docs), (cfg.batch_size,), generator=g)
        x, ln = ids[idx], lengths[idx]
        x = x[:, : int(ln.max())]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        if objective == "mlm":
            inputs, targets = mask_tokens(x, ln, vocab=vocab, mask_id=mask_id, special=special, prob=cfg.mask_prob, g=g)
        else:  # next token: position t predicts token t + 1
            inputs = x
            nxt = torch.full_like(x, -100)
            nxt[:, :-1] = x[:, 1:]
            pos = torch.arange(x.shape[1])[None, :]
            targets = torch.where(pos + 1 < ln[:, None], nxt, torch.full_like(x, -100))
        loss = lm_loss(net, head, inputs.to(dev), ln.to(dev), targets.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise UserError(f"pre-training diverged at step {step} (loss {loss_value}); lower --lr")
        if on_step:
            on_step(step, cfg.steps, loss_value)
        if step % cfg.save_every == 0 or step == cfg.steps:
            meta["step"], meta["loss"] = step, loss_value
            last = _save(out, step, net, head, opt, tok, meta, cfg.keep)
    return last


def _save(out: Path, step: int, net, head, opt, tok, meta: dict, keep: int) -> Path:
    """Write ``checkpoint-<step>`` atomically (a temporary folder renamed into place) and remove
    all but the newest ``keep``."""

    final = out / f"checkpoint-{step:07d}"
    tmp = out / f".checkpoint-{step:07d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if not k.startswith("head.")}
    state.update({f"lm_head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()})
    save_file(state, str(tmp / WEIGHTS))
    (tmp / CONFIG).write_text(json.dumps({"format": CHECKPOINT_FORMAT, **meta}, indent=2), encoding="utf-8")
    inner = getattr(tok, "tok", None)
    if inner is not None:
        inner.save(str(tmp / TOKENIZER))
    torch.save({"optimizer": opt.state_dict(), "step": step}, tmp / TRAINER)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    steps = sorted(p for p in out.iterdir() if p.name.startswith("checkpoint-") and p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final
