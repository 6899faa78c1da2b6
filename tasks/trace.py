"""``trace``: the generative tasks of TRACE (Wang et al. 2023), from the user's copy of its data.

TRACE's folder format: a folder per task, ``<task>/train.json`` and ``<task>/test.json`` (its
``eval.json``, the validation split, is not read), each a JSON list of ``{"prompt": ...,
"answer": ...}``. The prompt already holds the task's instruction; training appends the answer
to it, as TRACE's collator does. Each of TRACE's eight tasks is scored by the metric TRACE
reports for it (:data:`TRACE_METRICS`); any other task folder needs ``metrics`` to name one.
"""

from __future__ import annotations

from clbench import hookimpl
from clbench.errors import UserError

from .base import Stream
from .generative import TextTask
from .lmdata import build, cap, check_answers, check_caps, folder_tasks, read_general, task_metric
from .text import read_split

#: TRACE's tasks in the order of its training scripts, each with the metric its paper reports,
#: computed as its ``evaluations/eval_*.py`` compute them (see docs/llm.md, "Metrics"): C-STANCE
#: and FOMC by whole-string accuracy (``eval_CStance.py``, ``eval_FOMC.py``), ScienceQA by the
#: answer's first character (``eval_ScienceQA.py``), MeetingBank by the ``rouge`` package.
TRACE_METRICS: dict[str, str] = {
    "C-STANCE": "strict_match",
    "FOMC": "strict_match",
    "MeetingBank": "trace_rouge_l",
    "Py150": "edit_similarity",
    "ScienceQA": "choice_accuracy",
    "NumGLUE-cm": "strict_match",
    "NumGLUE-ds": "strict_match",
    "20Minuten": "sari",
}


def trace(
    data_dir: str | None = None,
    tasks: list[str] | None = None,
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
    """TRACE's generative tasks from a folder in its format.

    :param data_dir: the data folder (default: ``$CLBENCH_DATA``, which ``--data-dir`` sets).
    :param tasks: the pool of tasks (default: every task folder found, TRACE's tasks first in
        TRACE's order, then the others by name).
    :param metrics: task name -> metric, for tasks TRACE does not have, or to replace TRACE's.
    :param train_per_task: keep at most this many training examples per task, drawn with
        ``sample_seed``; ``test_per_task``: the same for test examples.
    :param tokenizer: ``bytes``, ``bpe`` (``vocab_size``), a clbench checkpoint, or a causal LM's.
    :param max_len: tokens per example; a longer prompt loses tokens from its left (TRACE's
        tokenizers truncate on the left too).
    :param skip_missing: skip the tasks ``order`` names but the folder lacks (one warning line).
    :param general: held-out general text (``.txt`` files or folders, relative to the data folder);
        default: clbench's default general text (English prose); ``[]``: none.
    :param order: a list of task names or of positions into ``tasks``.
    """
    check_caps(train_per_task=train_per_task, test_per_task=test_per_task)
    metrics = metrics or {}
    known = list(TRACE_METRICS)

    def trace_first(name: str):
        short = name.rsplit("/", 1)[-1]
        return (known.index(short) if short in known else len(known), name)

    root, found, seq, skipped = folder_tasks("trace", data_dir, "cl-benchmark", order, tasks, skip_missing, trace_first)
    chosen = {}
    for n in seq:  # every task's metric is settled before any file is read
        short = n.rsplit("/", 1)[-1]
        metric = metrics.get(n) or metrics.get(short) or TRACE_METRICS.get(short)
        if metric is None:
            raise UserError(f"stream 'trace': task '{n}' has no known metric (TRACE's tasks: {', '.join(known)}); "
                            f"name one with metrics = {{ \"{short}\" = \"rouge_l\" }}")
        chosen[n] = task_metric("trace", n, metric, hint=f'name another for it: metrics = {{ "{short}" = "rouge_l" }}')
    out = []
    for n in seq:
        split = {}
        for part, limit in (("train", train_per_task), ("test", test_per_task)):
            path = found[n][0] / f"{part}.json"
            prompts, answers, wheres = read_split(path, "cl-benchmark", "prompt", "answer")
            check_answers(path, wheres, answers)
            split[part] = cap(list(zip(prompts, answers)), limit, sample_seed, f"{n}/{part}")
        out.append(TextTask(n, split["train"], split["test"], metric=chosen[n]))
    params = dict(data_dir=str(root), tasks=seq, skipped_tasks=skipped, metrics=chosen)
    return build("trace", out, tokenizer=tokenizer, vocab_size=vocab_size, max_len=max_len,
                 general=read_general(general, root), params=params)


@hookimpl
def register_streams(register):
    register("trace", trace, description="TRACE's generative tasks (<task>/{train,test}.json of prompt/answer), each with TRACE's metric")
