"""``ssr``: Self-Synthesized Rehearsal (Huang et al., "Mitigating Catastrophic Forgetting in Large
Language Models with Self-Synthesized Rehearsal", ACL 2024).

No real example of an earlier task is kept: after each task (but the last), with θ⁽⁰⁾ the base
model (a frozen copy of the model before the first task) and θ⁽ᵗ⁾ the model just trained on
task t:

1. **In-context synthesis.** ``demos`` random training examples of task t are its
   demonstrations (the only real examples of the task SSR ever reads after training on it). For
   every ordered choice of ``shots`` of them, θ⁽⁰⁾ continues an in-context prompt ``samples``
   times, sampling with nucleus ``top_p`` at ``temperature``; each continuation is split into
   instances, and each instance's input x̂ is kept (duplicates dropped).
2. **Selection.** When there are more than ``memory_size`` inputs, k-means with ``clusters``
   clusters over their embeddings (θ⁽⁰⁾'s last hidden states, mean over the prompt's tokens,
   L2-normalised), and from each cluster c of n_c inputs the ``round(memory_size · n_c / n)``
   nearest its centre.
3. **Refinement.** θ⁽ᵗ⁾ answers each selected input (greedy, as evaluation decodes): the output
   ȳ = θ⁽ᵗ⁾(x̂) replaces whatever θ⁽⁰⁾ wrote, so the rehearsal data carry what the model knew of
   task t when it had just learned it.

Every later task trains on its own examples and all the synthetic examples (x̂, ȳ) of the earlier
tasks, shuffled together: ``L = Σ_{(x, y) ∈ D_t ∪ S_{<t}} L_ans(x → y)``.

The in-context prompt follows SSR's (``{definition}\\n\\nInput: x₁\\nOutput: y₁\\n\\n…Input:``) with
the stream's own prompt format in place of the ``Input:``/``Output:`` markers, since a clbench
prompt already carries its instruction and ends with its answer cue: the demonstrations' common
leading lines (the definition) once, then each demonstration's remaining prompt and answer,
separated by a blank line (more newlines where a demonstration holds a blank line), and the
model continues with a new instance. An instance's input is its text up to the demonstrations'
common ending (``=``, ``\\nAnswer:``, ``\\nOutput: ``: the common suffix of their prompts, from its
last line break, or without its leading letters and digits); where the prompts have no common
ending, each answer is put after ``\\nOutput: `` and the input is the text before it.
"""

from __future__ import annotations

import copy
import math
import os
from itertools import permutations

import numpy as np
import torch

from clbench import hookimpl
from clbench.models.sampling import Sampling
from clbench.params import require
from clbench.tasks import Examples
from clbench.tasks.tokenizer import pad

from .synthetic import complete, decode_example, generating, record, refuse_per_task_lora, report_buffer, to_examples, warn

#: Where the prompts have no common ending, an answer follows this cue in the in-context prompt.
OUTPUT_CUE = "\nOutput: "
#: Room for this many instances as long as the longest demonstration in each continuation.
INSTANCES_PER_CONTINUATION = 4


def _common_suffix(texts: list[str]) -> str:
    return os.path.commonprefix([t[::-1] for t in texts])[::-1]


def layout(demos: list[dict[str, str]]) -> tuple[str, list[str], str, str]:
    """How the in-context prompt writes ``demos`` (``{"prompt", "answer"}`` texts):
    ``(definition, each demo's text after it, the common ending of the prompts, separator)``.
    A demonstration is written ``rest + answer + separator`` (``rest + OUTPUT_CUE + answer +
    separator`` when the common ending is "")."""
    prompts = [d["prompt"] for d in demos]
    common = os.path.commonprefix(prompts)
    definition = common[: common.rfind("\n") + 1]  # whole lines only
    rest = [p[len(definition) :] for p in prompts]
    ending = _common_suffix(rest)
    ending = ending[ending.rfind("\n") :] if "\n" in ending else ending.lstrip("".join(c for c in ending if c.isalnum()))
    sep = "\n\n"
    while any(sep in r + d["answer"] for r, d in zip(rest, demos)):
        sep += "\n"
    return definition, rest, ending, sep


def demo_text(rest: str, answer: str, ending: str, sep: str) -> str:
    return rest + (answer if ending else OUTPUT_CUE + answer) + sep


def inputs_of(continuation: str, ended: bool, ending: str, sep: str) -> list[str]:
    """The instance inputs in a continuation of the in-context prompt: each piece between
    separators (the last only if the model ended it) up to and including ``ending`` (or up to
    :data:`OUTPUT_CUE` when there is no common ending), if it has something before it."""
    pieces = continuation.split(sep)
    if not ended:
        pieces = pieces[:-1]  # cut off by the length limit
    found = []
    for piece in pieces:
        mark = ending or OUTPUT_CUE
        k = piece.find(mark)
        if k <= 0 or not piece[:k].strip():
            continue
        found.append(piece[: k + len(ending)])
    return found


def kmeans_select(emb: np.ndarray, k: int, clusters: int, seed: int) -> np.ndarray:
    """SSR's selection of ``k`` of ``len(emb)`` instances (the indices, sorted): the rows of
    ``emb`` are L2-normalised and clustered by k-means into ``clusters`` clusters; from a
    cluster of ``n_c`` rows the ``round(k · n_c / n)`` nearest its centre are kept (so about
    ``k`` in all). All of them when there are no more than ``k``."""
    from sklearn.cluster import KMeans

    n = len(emb)
    if n <= k:
        return np.arange(n)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(min=1e-12)
    c = min(clusters, n)
    km = KMeans(n_clusters=c, n_init=1, random_state=seed).fit(emb)
    labels = km.labels_
    dist = np.linalg.norm(emb - km.cluster_centers_[labels], axis=1)
    counts = np.bincount(labels, minlength=c)
    chosen: list[int] = []
    for j in range(c):
        members = np.flatnonzero(labels == j)
        chosen += members[np.argsort(dist[members], kind="stable")[: round(k * counts[j] / n)]].tolist()
    return np.sort(np.asarray(chosen, dtype=np.int64))


def embed(cell, model: torch.nn.Module, prompts: list[list[int]]) -> np.ndarray:
    """``model``'s last hidden states, mean over each prompt's tokens: ``(len(prompts), C)``."""
    bs = cell.config.training.eval_batch_size
    rows = []
    with generating(cell, model):
        for s in range(0, len(prompts), bs):
            x, lengths = pad(prompts[s : s + bs])
            x, lengths = x.to(cell.device), lengths.to(cell.device)
            h = model.hidden_states(x, lengths).float()  # (B, N, C)
            valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).float()
            rows.append(((h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)).cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 1))


class SSR:
    """Self-synthesized rehearsal: the base model writes inputs of each learned task from a few
    demonstrations in context, the latest model answers them, and a diverse subset is rehearsed.

    :param demos: demonstrations kept of each task (its only real examples SSR uses).
    :param shots: demonstrations in each in-context prompt.
    :param samples: continuations sampled per in-context prompt.
    :param memory_size: synthetic examples kept of each task.
    :param clusters: k-means clusters the selection spreads them over.
    :param top_p: nucleus sampling's probability mass.
    :param temperature: the sampling temperature.
    """

    #: Runs on generative streams only (the host's capability check).
    serves = ("generation",)

    def __init__(
        self,
        demos: int = 4,
        shots: int = 2,
        samples: int = 3,
        memory_size: int = 200,
        clusters: int = 20,
        top_p: float = 0.6,
        temperature: float = 0.9,
    ):
        require(demos >= 1, "demos", ">= 1", demos)
        require(1 <= shots <= demos, "shots", f"in 1..demos ({demos})", shots)
        require(samples >= 1, "samples", ">= 1", samples)
        require(memory_size >= 1, "memory_size", "a positive integer", memory_size)
        require(clusters >= 1, "clusters", ">= 1", clusters)
        require(0 < top_p <= 1, "top_p", "in (0, 1]", top_p)
        require(temperature > 0 and math.isfinite(temperature), "temperature", "a positive number", temperature)
        self.demos, self.shots, self.samples = demos, shots, samples
        self.memory_size, self.clusters = memory_size, clusters
        self.sampling = Sampling(top_p=top_p, temperature=temperature)
        self.base: torch.nn.Module | None = None  # θ⁽⁰⁾
        self.memory: list[Examples] = []  # the synthetic examples of each earlier task

    @hookimpl
    def check_cell(self, config, stream):
        refuse_per_task_lora("ssr", config)

    @hookimpl
    def before_task(self, cell, task):
        if self.base is None:
            self.base = copy.deepcopy(cell.model).eval().requires_grad_(False)

    @hookimpl
    def train_data(self, cell, task):
        if not self.memory:
            return None
        return Examples.cat([task.train, *self.memory])

    @hookimpl
    def after_task(self, cell, task):
        i = cell.task_index
        if i == len(cell.tasks) - 1:
            return  # no later task to rehearse it
        tok, max_len = cell.stream.tokenizer, cell.config.model.max_len
        pick = cell.rng.permutation(len(task.train))[: self.demos]
        demos = [decode_example(tok, task.train, int(k)) for k in pick]

        # 1. in-context synthesis by the base model
        definition, rest, ending, sep = layout(demos)
        texts = [demo_text(r, d["answer"], ending, sep) for r, d in zip(rest, demos)]
        longest = max(len(tok.encode_answers([t])[0]) for t in texts)
        contexts = tok.encode_prompts([definition + "".join(texts[a] for a in order)
                                       for order in permutations(range(len(demos)), min(self.shots, len(demos)))])
        contexts = [c for c in contexts if len(c) + longest <= max_len]  # room for one instance at least
        if not contexts:
            warn(f"ssr: no in-context prompt of task '{task.name}' leaves room for an instance within "
                 f"model.max_len = {max_len} (lower shots, or raise model.max_len): no synthetic examples of it")
        runs = complete(cell, self.base, [c for c in contexts for _ in range(self.samples)],
                        INSTANCES_PER_CONTINUATION * longest, self.sampling) if contexts else []
        inputs = list(dict.fromkeys(x for ids, ended in runs for x in inputs_of(tok.decode(ids), ended, ending, sep)))
        answer_room = max(len(a) for a in tok.encode_answers([d["answer"] for d in demos])) + 1  # with its end token
        prompts = [p[max(0, len(p) + answer_room - max_len):]  # shortened from the left, as the stream does
                   for p in (tok.encode_prompts([definition + x for x in inputs]) if inputs else [])]

        # 2. a diverse subset
        keep = kmeans_select(embed(cell, self.base, prompts), self.memory_size, self.clusters,
                             int(cell.rng.integers(2**31))) if prompts else np.zeros(0, dtype=np.int64)
        chosen = [prompts[k] for k in keep]

        # 3. outputs refined by the model that has just learned the task
        answers = complete(cell, cell.model, chosen, task.max_new_tokens)
        pairs = [(p, a) for p, (a, _) in zip(chosen, answers) if a]
        synthetic = to_examples(cell, pairs, i)
        record(cell, "ssr", i, len(inputs), synthetic, train_task=i + 1, continuations=len(runs), selected=len(chosen))
        self.memory.append(synthetic)
        report_buffer(cell, "ssr", sum(len(m) for m in self.memory))


@hookimpl
def register_strategies(register):
    register("ssr", SSR, description="self-synthesized rehearsal: the base model writes inputs in context, the latest "
                                     "model answers them, k-means keeps a diverse subset (Huang et al. 2024)")
