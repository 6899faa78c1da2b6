"""``jsonl-instructions``: instruction data in JSON Lines, a folder per task.

A task folder holds ``train.jsonl`` and ``test.jsonl`` (the layout of the ``text`` stream's JSONL
tasks, and of most instruction sets published as files per split), one object a line:
``{"instruction": ..., "input": ..., "output": ...}``. ``instruction`` may be left out; ``output``
is a string, or a list of strings (Super-NaturalInstructions lists the acceptable outputs), whose
first is the answer. The prompt follows ``template``:

* ``super-ni`` (default): Super-NaturalInstructions' encoding of an instance with its task
  definition (Tk-Instruct's ``DataCollatorForNI``, no examples)::

      Definition: {instruction}.\\n\\nNow complete the following example -\\nInput: {input}.\\nOutput:

  (each of the two ends with a full stop unless it already ends with punctuation; without an
  instruction the ``Definition`` paragraph is left out);
* ``plain``: ``{instruction}\\n{input}``, or ``{input}`` alone (for data whose input is the
  whole prompt).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Literal

from clbench import hookimpl
from clbench.errors import UserError

from .base import Stream
from .generative import TextTask
from .lmdata import build, cap, check_caps, folder_tasks, read_general, task_metric
from .text import read_records


def super_ni_prompt(instruction: str | None, text: str) -> str:
    """Super-NaturalInstructions' prompt for one instance (see the module docstring)."""
    definition = ""
    if instruction:
        definition = "Definition: " + instruction.strip()
        if definition[-1] not in string.punctuation:
            definition += "."
        definition += "\n\n"
    task_input = "Now complete the following example -\n" + "Input: " + text.strip()
    if task_input[-1] not in string.punctuation:
        task_input += "."
    return definition + task_input + "\n" + "Output: "


def plain_prompt(instruction: str | None, text: str) -> str:
    return f"{instruction}\n{text}" if instruction else text


TEMPLATES = {"super-ni": super_ni_prompt, "plain": plain_prompt}


def read_pairs(path: Path, template: str) -> list[tuple[str, str]]:
    """The (prompt, answer) pairs of one JSONL split file; a bad record is a one-line error."""
    pairs = []
    for where, r in read_records(path, "jsonl"):
        if not isinstance(r, dict):
            raise UserError(f"{path}: {where} is not an object")
        for f in ("input", "output"):
            if r.get(f) is None:
                raise UserError(f"{path}: {where} has no field '{f}' (it has: {', '.join(map(str, r)) or 'none'})")
        inst, text, out = r.get("instruction"), r["input"], r["output"]
        if isinstance(out, list) and out and all(isinstance(o, str) for o in out):
            out = out[0]
        if not isinstance(text, str) or not isinstance(out, str) or not isinstance(inst, (str, type(None))):
            raise UserError(f"{path}: {where}: 'instruction' and 'input' must be strings, 'output' a string "
                            f"or a list of strings, got {r!r:.200}")
        if not out.strip():
            raise UserError(f"{path}: {where} has an empty answer ('output')")
        pairs.append((TEMPLATES[template](inst, text), out))
    if not pairs:
        raise UserError(f"{path}: no examples (the task is empty)")
    return pairs


def jsonl_instructions(
    data_dir: str | None = None,
    tasks: list[str] | None = None,
    template: Literal["super-ni", "plain"] = "super-ni",
    metric: str = "rouge_l",
    metrics: dict[str, str] | None = None,
    train_per_task: int | None = None,
    test_per_task: int | None = None,
    sample_seed: int = 0,
    tokenizer: str = "bytes",
    vocab_size: int = 8000,
    max_len: int = 512,
    skip_missing: bool = False,
    general: str | list[str] | None = None,
    order: str | list | None = None,
) -> Stream:
    """Instruction tasks from JSONL files, a folder per task (``train.jsonl``, ``test.jsonl``).

    :param data_dir: the data folder (default: ``$CLBENCH_DATA``, which ``--data-dir`` sets).
    :param tasks: the pool of tasks, by relative path or unique last part (default: all found).
    :param template: how instruction and input make the prompt (``super-ni`` or ``plain``).
    :param metric: every task's primary metric (default ``rouge_l``, Super-NaturalInstructions');
        ``metrics``: task name -> metric, for some tasks.
    :param train_per_task: keep at most this many training examples per task, drawn with
        ``sample_seed``; ``test_per_task``: the same for test examples.
    :param tokenizer: ``bytes``, ``bpe`` (``vocab_size``), a clbench checkpoint, or a causal LM's.
    :param max_len: tokens per example; a longer prompt loses tokens from its left.
    :param skip_missing: skip the tasks ``order`` names but the folder lacks (one warning line).
    :param general: held-out general text (``.txt`` files or folders, relative to the data folder);
        default: clbench's default general text (English prose); ``[]``: none.
    :param order: a list of task names or of positions into ``tasks``.
    """
    check_caps(train_per_task=train_per_task, test_per_task=test_per_task)
    metrics = metrics or {}
    root, found, seq, skipped = folder_tasks("jsonl-instructions", data_dir, "jsonl", order, tasks, skip_missing)
    chosen = {n: task_metric("jsonl-instructions", n, metrics.get(n) or metrics.get(n.rsplit("/", 1)[-1]) or metric)
              for n in seq}
    out = []
    for n in seq:
        split = {part: cap(read_pairs(found[n][0] / f"{part}.jsonl", template), limit, sample_seed, f"{n}/{part}")
                 for part, limit in (("train", train_per_task), ("test", test_per_task))}
        out.append(TextTask(n, split["train"], split["test"], metric=chosen[n]))
    params = dict(data_dir=str(root), tasks=seq, skipped_tasks=skipped, metrics=chosen)
    return build("jsonl-instructions", out, tokenizer=tokenizer, vocab_size=vocab_size, max_len=max_len,
                 general=read_general(general, root), params=params)


@hookimpl
def register_streams(register):
    register("jsonl-instructions", jsonl_instructions,
             description="instruction tasks from JSONL (instruction/input/output), a folder per task")
