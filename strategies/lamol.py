"""``lamol``: LAnguage MOdeling for Lifelong language learning (Sun, Ho & Lee, ICLR 2020).

One model answers the tasks and writes its own rehearsal data. Every training example, prompt
``p`` and answer ``a``, is trained on with the task's answer loss and, behind a generation token,
as a language model of the whole example:

    ``L = L_ans(p → a) + λ · L_LM([GEN_t] p [ANS] a [EOS])``

``L_ans`` is the task's loss (next-token cross-entropy on the answer and end tokens); ``L_LM`` the
next-token cross-entropy of every token after ``GEN_t`` (the prompt, the answer token, the answer
and the end token), a mean in which the answer token counts ``answer_token_weight`` times, as the
authors' code weighs it (``tokens_weight``). ``GEN_t`` is one token shared by every task
(``gen_token = "shared"``, the authors' ``__gen__``) or one per task (``"per-task"``, their
``__<task>__``, ``--add_task_tokens``).

Before each task after the first, with ``k`` earlier tasks, the model writes
``n = ⌈γ · |training data of the new task|⌉`` pseudo-examples, rounded down to a multiple of
``k`` (the authors' ``gen_lm_sample_percentage``): ``n / k`` sequences sampled from each earlier
task's generation token with top-``top_k`` sampling at ``temperature``, each until its end token
or the length of the longest example of the stream (with its two markers). A sample with
exactly one answer token, a non-empty prompt before it and a non-empty answer after it, and no
other marker, becomes an example ``prompt → answer`` of that task; the others are dropped, as
the authors' parser drops them. The new task trains on its own examples and the pseudo-examples
shuffled together; both kinds get both losses.

The markers are vocabulary tokens that no text encodes to: those of the bytes 0xFF, 0xFE, ...
that never occur in UTF-8 (:data:`clbench.strategies.synthetic.SPARE_BYTES`); the first is the
answer token, the next the shared generation token or, per task, one each (so at most 12 tasks
with per-task tokens). clbench's byte and BPE tokenizers, byte-level BPEs (GPT-2, Qwen2, Llama 3, SmolLM2)
and SentencePiece models with byte fallback (Llama 2, Mistral) have them; another tokenizer is
refused before anything runs. The authors add new tokens to the vocabulary instead (and resize
the embedding); here the vocabulary and the model's shape never change, and the markers'
embeddings start as whatever the model has there (random or pre-trained, never seen in text).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from clbench import hookimpl
from clbench.errors import UserError
from clbench.models.sampling import Sampling
from clbench.params import require
from clbench.tasks import Examples

from .synthetic import complete, record, refuse_per_task_lora, spare_token_ids, to_examples


def lm_sequences(batch: Examples, gen: torch.Tensor, ans: int, max_len: int) -> Examples:
    """Each example of ``batch`` as LAMOL's language-model sequence ``[GEN_t] prompt [ANS]
    answer [EOS]`` (``gen[t]`` the example's generation token), with ``start`` 1: its loss is
    that of every token after the generation token. A sequence longer than ``max_len`` loses
    tokens from the left of its prompt, as the stream shortens prompts."""
    x, L, s = batch.x, batch.lengths, batch.start
    cut = torch.minimum((L + 2 - max_len).clamp(min=0), s)  # prompt tokens dropped from the left
    n_len = L + 2 - cut
    ps = (s - cut)[:, None]  # the prompt tokens kept
    j = torch.arange(int(n_len.max()), device=x.device)[None, :]
    src = torch.where(j <= ps, cut[:, None] + j - 1, s[:, None] + j - ps - 2)  # where position j comes from in x
    out = x.gather(1, src.clamp(0, x.shape[1] - 1))
    out = torch.where(j == 0, gen[batch.t][:, None], torch.where(j == ps + 1, torch.full_like(out, ans), out))
    out = torch.where(j < n_len[:, None], out, torch.zeros_like(out))
    return Examples(out, batch.y, n_len, batch.t, torch.ones_like(s))


def parse(ids: list[int], ans: int, markers: set[int]) -> tuple[list[int], list[int]] | None:
    """A sampled sequence (after its generation token, without its end token) as ``(prompt,
    answer)``, or None: it needs exactly one answer token, something on either side, and no
    other marker."""
    if ids.count(ans) != 1 or any(t in markers for t in ids if t != ans):
        return None
    k = ids.index(ans)
    prompt, answer = ids[:k], ids[k + 1 :]
    return (prompt, answer) if prompt and answer else None


class LAMOL:
    """LAMOL: the model learns each task as a language model too, and writes pseudo-examples of
    the earlier tasks before each new one.

    :param lambda_: λ, the weight of the language-model loss (``lambda`` in a suite).
    :param gamma: γ, pseudo-examples written before a task per example of its training data.
    :param gen_token: ``"shared"``: one generation token for every task; ``"per-task"``: one each.
    :param top_k: sample among the k likeliest tokens (0: all of them).
    :param temperature: the sampling temperature.
    :param answer_token_weight: the weight of the answer token in the language-model loss.
    """

    #: Runs on generative streams only (the host's capability check).
    serves = ("generation",)
    #: What ``clbench tune`` searches by default (docs/tuning.md): λ (γ is a budget the suite fixes).
    search_space = {"lambda": {"log-uniform": [0.05, 1.0]}}

    def __init__(
        self,
        lambda_: float = 0.25,
        gamma: float = 0.2,
        gen_token: Literal["shared", "per-task"] = "shared",
        top_k: int = 20,
        temperature: float = 1.0,
        answer_token_weight: float = 5.0,
    ):
        require(lambda_ >= 0 and math.isfinite(lambda_), "lambda", "a number >= 0", lambda_)
        require(gamma >= 0 and math.isfinite(gamma), "gamma", "a number >= 0", gamma)
        require(top_k >= 0, "top_k", ">= 0", top_k)
        require(temperature > 0 and math.isfinite(temperature), "temperature", "a positive number", temperature)
        require(answer_token_weight > 0 and math.isfinite(answer_token_weight), "answer_token_weight",
                "a positive number", answer_token_weight)
        self.lambda_, self.gamma, self.gen_token = lambda_, gamma, gen_token
        self.sampling = Sampling(top_k=top_k, temperature=temperature)
        self.answer_token_weight = answer_token_weight
        self.gen: torch.Tensor | None = None  # (n_tasks,): each task's generation token
        self.ans: int = -1
        self.markers: set[int] = set()
        self.pseudo: Examples | None = None  # the pseudo-examples of the task being trained

    @hookimpl
    def check_cell(self, config, stream):
        refuse_per_task_lora("lamol", config)
        spare = spare_token_ids(stream.tokenizer)
        if not spare:
            raise UserError(f"strategy 'lamol' needs token ids that no text encodes to, for its generation and answer "
                            f"tokens: the tokenizer of stream '{stream.name}' has none (clbench's bytes and bpe, byte-level "
                            "BPEs and SentencePiece models with byte fallback have them)")
        if self.gen_token == "per-task" and stream.n_tasks + 1 > len(spare):
            raise UserError(f"strategy 'lamol': gen_token = 'per-task' needs {stream.n_tasks + 1} spare token ids for "
                            f"{stream.n_tasks} tasks, the tokenizer has {len(spare)} (use gen_token = 'shared')")

    def _markers(self, cell) -> None:
        if self.gen is None:
            spare = spare_token_ids(cell.stream.tokenizer)
            n = len(cell.tasks)
            self.ans = spare[0]
            gen = spare[1 : 1 + n] if self.gen_token == "per-task" else [spare[1]] * n
            self.gen = torch.tensor(gen, dtype=torch.long, device=cell.device)
            self.markers = set(spare)  # no text has any of them

    @hookimpl
    def before_task(self, cell, task):
        self._markers(cell)
        self.pseudo = None
        k = cell.task_index  # earlier tasks
        n = math.ceil(self.gamma * len(task.train))
        per = (n - n % k) // k if k else 0
        if per == 0:
            return
        prompts = [[int(self.gen[j])] for j in range(k) for _ in range(per)]
        longest = min(cell.config.model.max_len, cell.stream.max_len + 2)  # an example with its two markers
        samples = complete(cell, cell.model, prompts, longest - 1, self.sampling)
        parts = []
        for j in range(k):
            pairs = [p for ids, _ in samples[j * per : (j + 1) * per] if (p := parse(ids, self.ans, self.markers))]
            ex = to_examples(cell, pairs, j)
            record(cell, "lamol", j, per, ex, train_task=cell.task_index)
            parts.append(ex)
        self.pseudo = Examples.cat(parts)

    @hookimpl
    def train_data(self, cell, task):
        if self.pseudo is None or not len(self.pseudo):
            return None
        return Examples.cat([task.train, self.pseudo])

    @hookimpl
    def loss_terms(self, cell, batch, logits, loss):
        if self.lambda_ == 0:
            return None
        self._markers(cell)
        lm = lm_sequences(batch, self.gen, self.ans, cell.config.model.max_len)
        target = cell.kind.targets(lm)
        ce = F.cross_entropy(cell.logits(lm).float(), target, reduction="none")
        w = torch.where(target == self.ans, self.answer_token_weight, 1.0)
        return self.lambda_ * (w * ce).sum() / w.sum()


@hookimpl
def register_strategies(register):
    register("lamol", LAMOL, description="LAMOL: a language-model loss behind a generation token, and pseudo-examples "
                                         "of earlier tasks sampled from it (Sun et al. 2020)")
