"""``instructions``: classification folders (CL_Benchmark) as generative tasks, in the instruction
format of O-LoRA (Wang et al. 2023).

Each example's prompt is built as O-LoRA's data loader (``src/uie_dataset_lora.py``) and collator
(``src/uie_collator.py``) build it, with the flags its scripts pass (``--add_task_name True
--add_dataset_name True``)::

    Task:{type}\\nDataset:{dataset}\\n{instruction}Option: {label 1}, {label 2}, ... \\n{sentence}\\nAnswer:

and the answer is the label text. ``{instruction}`` is the task type's wording in O-LoRA's
``configs/instruction_config.json`` (:data:`INSTRUCTIONS`); COPA has none there, and its loader
uses ``{sentence}\\nAnswer:`` alone. A task's type is its parent folder (O-LoRA's layout is
``<type>/<dataset>``: ``SC/amazon``, ``NLI/MNLI``, ``COPA/COPA``), or ``task_types`` names it.
Folders are read by the ``text`` stream's readers; orders are its named orders (1-6).
"""

from __future__ import annotations

from typing import Literal

from clbench import hookimpl
from clbench.errors import UserError

from .base import Stream
from .generative import TextTask
from .lmdata import build, check_caps, folder_tasks, read_general, task_metric
from .text import cap_per_class, read_task, warn_dropped

#: O-LoRA's ``configs/instruction_config.json``: the zero-shot instruction of each task type.
INSTRUCTIONS: dict[str, str] = {
    "NLI": 'What is the logical relationship between the "sentence 1" and the "sentence 2"? Choose one from the option.\n',
    "QQP": 'Whether the "first sentence" and the "second sentence" have the same meaning? Choose one from the option.\n',
    "SC": "What is the sentiment of the following paragraph? Choose one from the option.\n",
    "TC": "What is the topic of the following paragraph? Choose one from the option.\n",
    "BoolQA": "According to the following passage, is the question true or false? Choose one from the option.\n",
    "MultiRC": "According to the following passage and question, is the candidate answer true or false? Choose one from the option.\n",
    "WiC": "Given a word and two sentences, whether the word is used with the same sense in both sentence? Choose one from the option.\n",
}
#: Task types whose prompt is the sentence and the answer prefix only (O-LoRA's ``load_COPA_dataset``).
BARE = ("COPA",)
TYPES = (*INSTRUCTIONS, *BARE)


def olora_prompt(task_type: str, dataset: str, labels: list[str], sentence: str, prefix: bool = True) -> str:
    """One prompt, as O-LoRA builds it (see the module docstring)."""
    head = f"Task:{task_type}\nDataset:{dataset}\n" if prefix else ""
    if task_type in BARE:
        return head + sentence + "\nAnswer:"
    return head + INSTRUCTIONS[task_type] + "Option: " + ", ".join(labels) + " \n" + sentence + "\nAnswer:"


def _task_type(name: str, task_types: dict[str, str]) -> str:
    short = name.rsplit("/", 1)[-1]
    parent = name.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in name else None
    t = task_types.get(name) or task_types.get(short) or parent
    if t not in TYPES:
        where = f"its folder is in '{parent}/'" if parent else "its folder is not in a task type's folder"
        raise UserError(f"stream 'instructions': task '{name}' has no O-LoRA task type ({where}; the types are "
                        f"{', '.join(TYPES)}); set task_types = {{ \"{short}\" = \"SC\" }}")
    return t


def instructions(
    data_dir: str | None = None,
    tasks: list[str] | None = None,
    format: Literal["auto", "cl-benchmark", "jsonl", "csv"] = "auto",
    task_types: dict[str, str] | None = None,
    task_prefix: bool = True,
    metric: str = "exact_match",
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    sample_seed: int = 0,
    tokenizer: str = "bytes",
    vocab_size: int = 8000,
    max_len: int = 512,
    skip_missing: bool = False,
    unknown_labels: Literal["error", "drop"] = "error",
    general: str | list[str] | None = None,
    order: str | list | None = None,
) -> Stream:
    """Classification tasks from a folder as generative tasks in O-LoRA's instruction format.

    :param data_dir: the data folder (default: ``$CLBENCH_DATA``, which ``--data-dir`` sets).
    :param tasks: the pool of tasks, by relative path or unique last part (default: all found).
    :param format: the files to read, as the ``text`` stream reads them.
    :param task_types: task name -> O-LoRA task type (default: the task's parent folder).
    :param task_prefix: start each prompt with ``Task:{type}`` and ``Dataset:{name}`` lines, as
        O-LoRA's scripts do.
    :param metric: the tasks' primary metric (``exact_match``; ``accuracy`` ranks the labels).
    :param train_per_class: keep at most this many training examples per class (the same sample
        as the ``text`` stream takes with the same ``sample_seed``); ``test_per_class``: the same.
    :param tokenizer: ``bytes``, ``bpe`` (``vocab_size``), a clbench checkpoint, or a causal LM's.
    :param max_len: tokens per example; a longer prompt loses tokens from its left.
    :param skip_missing: skip the tasks an order names but the folder lacks (one warning line).
    :param unknown_labels: ``drop`` leaves out examples whose label is not in the task's labels.
    :param general: held-out general text (``.txt`` files or folders, relative to the data folder);
        default: clbench's default general text (English prose); ``[]``: none.
    :param order: a named order (``order1``-``order6``), a list of names, or of positions.
    """
    check_caps(train_per_class=train_per_class, test_per_class=test_per_class)
    task_types = task_types or {}
    for n, t in task_types.items():
        if t not in TYPES:
            raise UserError(f"stream 'instructions': task_types: {n!r} has type {t!r}; the types are {', '.join(TYPES)}")
    root, found, seq, skipped = folder_tasks("instructions", data_dir, format, order, tasks, skip_missing)
    types = {n: _task_type(n, task_types) for n in seq}
    raw = [read_task(found[n][0], n, found[n][1], "sentence", "label", unknown_labels == "drop") for n in seq]
    warn_dropped("instructions", raw)
    out = []
    for r in raw:
        task_metric("instructions", r.name, metric)
        split = {}
        for part, (texts, y), n in (("train", r.train, train_per_class), ("test", r.test, test_per_class)):
            keep = cap_per_class(y, n, sample_seed, f"{r.name}/{part}")
            split[part] = [(olora_prompt(types[r.name], r.name.rsplit("/", 1)[-1], r.labels, texts[i], task_prefix),
                            r.labels[y[i]]) for i in keep]
        out.append(TextTask(r.name, split["train"], split["test"], metric=metric, labels=tuple(r.labels)))
    params = dict(data_dir=str(root), tasks=seq, skipped_tasks=skipped, task_types={n: types[n] for n in seq})
    return build("instructions", out, tokenizer=tokenizer, vocab_size=vocab_size, max_len=max_len,
                 general=read_general(general, root), params=params)


@hookimpl
def register_streams(register):
    register("instructions", instructions,
             description="classification folders (CL_Benchmark) as generative tasks in O-LoRA's instruction format")
