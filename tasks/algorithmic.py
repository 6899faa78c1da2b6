"""``algorithmic``: generative tasks that need no data, generated from a seed.

Each task maps a short random string over a small alphabet to an answer by a fixed rule; the
prompt names the rule, so one model can hold them all, and training on one rule moves the
answers of the others (forgetting is plain to see). Small enough that a CPU learns each in
seconds. Tasks (``tasks`` picks and orders them):

* ``reverse``: ``rev cabd=`` → ``dbac``
* ``sort``: ``sort cabd=`` → ``abcd``
* ``shift``: ``next cabd=`` → ``dbce`` (each letter by the next one, the last by the first)
* ``count``: ``count a cabad=`` → ``2`` (occurrences of a letter)
* ``add``: ``add 23+45=`` → ``68``
* ``copy``: ``copy cabd=`` → ``cabd``

Scored by exact match. Train and test strings are drawn apart (no test string is trained on).
"""

from __future__ import annotations

import random
from typing import Callable, Literal

from clbench import hookimpl
from clbench.params import require

from .base import Stream
from .generative import TextTask, generative_stream, text_tokenizer


def _shift(s: str, alphabet: str) -> str:
    return "".join(alphabet[(alphabet.index(c) + 1) % len(alphabet)] for c in s)


RULES: dict[str, Callable[[random.Random, str, int], tuple[str, str]]] = {
    "reverse": lambda r, a, n: (lambda s: (f"rev {s}=", s[::-1]))("".join(r.choice(a) for _ in range(n))),
    "sort": lambda r, a, n: (lambda s: (f"sort {s}=", "".join(sorted(s))))("".join(r.choice(a) for _ in range(n))),
    "shift": lambda r, a, n: (lambda s: (f"next {s}=", _shift(s, a)))("".join(r.choice(a) for _ in range(n))),
    "count": lambda r, a, n: (lambda c, s: (f"count {c} {s}=", str(s.count(c))))(r.choice(a), "".join(r.choice(a) for _ in range(n))),
    "add": lambda r, a, n: (lambda x, y: (f"add {x}+{y}=", str(x + y)))(r.randrange(10 ** (n // 2)), r.randrange(10 ** (n // 2))),
    "copy": lambda r, a, n: (lambda s: (f"copy {s}=", s))("".join(r.choice(a) for _ in range(n))),
}
DEFAULT_TASKS = ("reverse", "sort", "shift", "count")


def make_task(rule: str, n_train: int, n_test: int, length: int, alphabet: str, seed: int) -> TextTask:
    """``n_train`` and ``n_test`` distinct examples of ``rule`` (fewer if the rule has fewer)."""
    r = random.Random(f"{seed}:{rule}")
    seen: dict[str, str] = {}
    tries = 0
    while len(seen) < n_train + n_test and tries < 50 * (n_train + n_test):
        prompt, answer = RULES[rule](r, alphabet, length)
        seen.setdefault(prompt, answer)
        tries += 1
    pairs = list(seen.items())
    n_test = min(n_test, len(pairs) // 5 or 1)
    return TextTask(rule, train=pairs[n_test:], test=pairs[:n_test], metric="exact_match")


def algorithmic(
    tasks: list[str] = list(DEFAULT_TASKS),
    n_train: int = 600,
    n_test: int = 100,
    length: int = 4,
    alphabet: str = "abcdef",
    seed: int = 0,
    tokenizer: str = "bytes",
    max_len: int = 32,
    general: bool = True,
    prompt_format: Literal["auto", "chat", "plain"] = "auto",
    order: list[int] | None = None,
) -> Stream:
    """Algorithmic text tasks (reverse, sort, shift, count, add, copy), generated from ``seed``.

    :param tasks: the rules, in stream order (see the module docstring).
    :param n_train: training examples per task; ``n_test``: test examples per task.
    :param length: characters of each input string (digits of the two numbers, for ``add``).
    :param general: a held-out general text (``copy`` prompts, never trained on) whose
        perplexity measures general ability.
    :param prompt_format: with a Hugging Face causal LM's tokenizer, ``chat`` renders each
        prompt as a user's turn and its answer as the assistant's with the tokenizer's chat
        template; ``plain`` as text; ``auto`` (default): ``chat`` when the tokenizer has one.
    """
    for name in tasks:
        require(name in RULES, "tasks", f"a list of {', '.join(RULES)}", tasks)
    require(len(set(tasks)) == len(tasks) and len(tasks) > 0, "tasks", "a non-empty list without repeats", tasks)
    require(n_train > 0 and n_test > 0, "n_train and n_test", "positive", (n_train, n_test))
    require(1 <= length <= 12, "length", "in 1..12", length)
    require(len(set(alphabet)) == len(alphabet) >= 2 and alphabet.isascii(), "alphabet", "two or more distinct ASCII characters", alphabet)
    text_tasks = [make_task(t, n_train, n_test, length, alphabet, seed) for t in tasks]
    general_text = None
    if general:
        g = make_task("copy", 0, 200, length + 2, alphabet, seed + 1)
        general_text = [p + a for p, a in g.test]
    tok = text_tokenizer(tokenizer, [p + a for t in text_tasks for p, a in t.train], prompt_format=prompt_format)
    params = dict(tasks=list(tasks), n_train=n_train, n_test=n_test, length=length, alphabet=alphabet, seed=seed,
                  tokenizer=tokenizer, max_len=max_len, general=general, prompt_format=tok.prompt_format)
    return generative_stream("algorithmic", text_tasks, tok, max_len=max_len, order=order, general=general_text, params=params)


@hookimpl
def register_streams(register):
    register("algorithmic", algorithmic, description="generative algorithmic text tasks from a seed (reverse, sort, shift, count, add, copy)")
