"""The Avalanche bridge: Avalanche benchmarks as clbench streams, Avalanche strategies as clbench
strategies (``avalanche:EWC``, ``avalanche:Replay``, ...).

* :func:`stream_from_benchmark` turns an Avalanche benchmark with a ``train_stream`` and a
  ``test_stream`` (from ``nc_benchmark``, ``benchmark_from_datasets``, ``SplitMNIST``, ...) into a
  :class:`clbench.tasks.Stream`: one task per experience.
* :func:`benchmark_from_stream` goes the other way (what the strategy adapter trains on).
* ``avalanche:<Class>`` strategies run the Avalanche strategy class's own training loop (its
  plugins, its data loaders, its losses) on the cell's model, one ``strategy.train(experience)``
  per task, through the ``fit_task`` hook; clbench's loop does everything else (the model, the
  seed, evaluation, results).
  Suite parameters go to the class's constructor; clbench supplies the model, optimizer, batch
  size, epochs and device from the suite's ``[model]`` and ``[training]``.

Avalanche is imported only when one of these is used, inside the functions that use it (importing
it takes seconds), so loading clbench stays fast. See docs/avalanche.md.
"""

from __future__ import annotations

import importlib
import inspect
import typing
import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader

from clbench import hookimpl
from clbench.cell import Diverged
from clbench.errors import UserError
from clbench.loop import make_optimizer
from clbench.tasks import Examples, Stream, Task
from clbench.tasks.batching import batch_indices
from clbench.tasks.digits import check_order

#: Avalanche strategy classes registered as ``avalanche:<name>`` (all in
#: ``avalanche.training.supervised``; they train a plain classifier).
STRATEGIES: tuple[str, ...] = (
    "Naive",
    "Cumulative",
    "EWC",
    "LwF",
    "Replay",
    "GEM",
    "AGEM",
    "SynapticIntelligence",
    "MAS",
    "GDumb",
    "LFL",
    "MIR",
    "ER_ACE",
    "DER",
)

#: Constructor arguments clbench supplies itself (not settable from a suite).
SUPPLIED = (
    "model",
    "optimizer",
    "criterion",
    "train_mb_size",
    "train_epochs",
    "eval_mb_size",
    "device",
    "plugins",
    "evaluator",
    "eval_every",
)


# --------------------------------------------------------------------------------------------
# Packing: Avalanche calls ``model(x)`` with one tensor, clbench's model needs lengths and the
# task of each example (task-incremental masking). Two extra positions at the end of each
# sequence carry them: ``[..., length, task]``.
# --------------------------------------------------------------------------------------------


def pack(ex: Examples, n: int | None = None) -> torch.Tensor:
    """``(B, N+2)`` int64 (tokens) or ``(B, N+2, P)`` float (patches): ``ex.x`` right-padded to
    ``n`` positions, then the length and the task index of each example."""
    x = ex.x
    n = x.shape[1] if n is None else n
    if n > x.shape[1]:
        x = torch.cat([x, x.new_zeros((x.shape[0], n - x.shape[1], *x.shape[2:]))], dim=1)
    extra = torch.stack([ex.lengths, ex.t], dim=1).to(x.dtype)  # (B, 2)
    if x.dim() == 3:
        extra = extra[:, :, None].expand(-1, -1, x.shape[2])
    return torch.cat([x, extra], dim=1)


def unpack(xp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inverse of :func:`pack`: ``(x, lengths, t)``."""
    x = xp[:, :-2]
    tail = xp[:, -2:] if xp.dim() == 2 else xp[:, -2:, 0]
    tail = tail.long()
    return x, tail[:, 0], tail[:, 1]


class PackedModel(torch.nn.Module):
    """The clbench model behind Avalanche's ``model(x)``: unpacks ``x`` (see :func:`pack`), trims
    token batches to their longest sequence and masks the logits per task (task-incremental), as
    ``CellContext.logits`` does."""

    def __init__(self, net: torch.nn.Module, class_mask: torch.Tensor | None = None, tokens: bool = False):
        super().__init__()
        self.net = net
        self.class_mask = class_mask
        self.tokens = tokens

    def _inputs(self, xp: torch.Tensor):
        x, lengths, t = unpack(xp)
        if self.tokens and x.shape[1] > 1:
            x = x[:, : int(lengths.max())]
        return x, lengths, t

    def forward(self, xp: torch.Tensor) -> torch.Tensor:
        x, lengths, t = self._inputs(xp)
        mask = None if self.class_mask is None else self.class_mask.to(t.device)[t]
        return self.net(x, lengths, mask)

    def get_features(self, xp: torch.Tensor) -> torch.Tensor:
        """Pooled features (Avalanche's ``BaseModel`` interface, which LFL needs)."""
        x, lengths, _ = self._inputs(xp)
        return self.net.features(x, lengths)


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


def _tensors(dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (x, y, task label) of an Avalanche dataset, stacked."""
    collate = getattr(dataset, "collate_fn", None)
    xs, ys, ts = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        xs.append(torch.as_tensor(batch[0]))
        ys.append(torch.as_tensor(batch[1]))
        ts.append(torch.as_tensor(batch[-1]) if len(batch) >= 3 else torch.zeros(len(batch[1]), dtype=torch.long))
    if not xs:
        raise UserError("an experience of the Avalanche benchmark has no examples")
    return torch.cat(xs), torch.cat(ys).long(), torch.cat(ts).long()


def _as_sequences(x: torch.Tensor, patch_size: int | None, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Avalanche inputs as clbench sequences: ``(x, lengths, input_kind)``.

    * integer ``(B, N)``: token ids; a sequence ends after its last token that is not ``pad_id``;
    * float ``(B, C, H, W)`` images: ``patch_size`` × ``patch_size`` patches (default 4), row-major,
      each flattened over channels and pixels, as a ViT sees an image;
    * float ``(B, N, P)``: a sequence of N vectors, as is;
    * float ``(B, D)``: ``D / patch_size`` chunks of ``patch_size`` (default: one position of D).
    """
    if not torch.is_floating_point(x):
        if x.dim() != 2:
            raise UserError(f"integer inputs must be (examples, positions) token ids, got shape {tuple(x.shape)}")
        nz = x != pad_id
        last = nz.flip(1).float().argmax(1)  # positions after the last real token
        lengths = torch.where(nz.any(1), x.shape[1] - last, torch.ones_like(last)).long()
        return x.long(), lengths, "tokens"
    x = x.float()
    if x.dim() == 4:
        b, c, h, w = x.shape
        p = patch_size or 4
        if h % p or w % p:
            raise UserError(f"patch_size {p} does not divide the {h}×{w} images")
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
    elif x.dim() == 2:
        p = patch_size or x.shape[1]
        if x.shape[1] % p:
            raise UserError(f"patch_size {p} does not divide the input size {x.shape[1]}")
        x = x.reshape(x.shape[0], x.shape[1] // p, p)
    elif x.dim() != 3:
        raise UserError(f"cannot read inputs of shape {tuple(x.shape)} as sequences")
    return x.contiguous(), torch.full((x.shape[0],), x.shape[1], dtype=torch.long), "patches"


def stream_from_benchmark(
    bench,
    *,
    name: str = "avalanche",
    scenario: str | None = None,
    patch_size: int | None = None,
    pad_id: int = 0,
    order: list[int] | None = None,
) -> Stream:
    """A clbench stream with one task per experience of ``bench`` (an Avalanche benchmark with a
    ``train_stream`` and a ``test_stream`` of the same length).

    :param scenario: the clbench scenario; by default ``task-incremental`` when the experiences
        carry different task labels, ``domain-incremental`` when they all have the same classes,
        else ``class-incremental``.
    :param patch_size: how images and flat vectors become sequences (see :func:`_as_sequences`).
    :param pad_id: the padding token of integer (token id) inputs.
    :param order: the order in which the experiences arrive (indices; default as in ``bench``).
    """
    train_exps, test_exps = list(bench.train_stream), list(bench.test_stream)
    if len(train_exps) != len(test_exps) or not train_exps:
        raise UserError(
            f"the Avalanche benchmark has {len(train_exps)} train and {len(test_exps)} test experiences: they must match"
        )
    raw = []
    for tr, te in zip(train_exps, test_exps):
        raw.append((_tensors(tr.dataset), _tensors(te.dataset)))
    classes = sorted({int(c) for (tr, te) in raw for part in (tr, te) for c in part[1].unique()})
    index = {c: i for i, c in enumerate(classes)}
    lut = torch.zeros(max(classes) + 1, dtype=torch.long)
    lut[torch.tensor(classes)] = torch.arange(len(classes))

    input_kinds, tasks, max_len, input_dim = set(), [], 0, 0
    for pos, (tr, te) in enumerate(raw):
        split = {}
        for part, (x, y, _t) in (("train", tr), ("test", te)):
            seq, lengths, input_kind = _as_sequences(x, patch_size, pad_id)
            input_kinds.add(input_kind)
            max_len = max(max_len, seq.shape[1])
            input_dim = max(input_dim, int(seq.max()) + 1 if input_kind == "tokens" else seq.shape[2])
            split[part] = Examples(seq, lut[y], lengths, torch.full_like(y, pos))
        task_classes = tuple(sorted(index[int(c)] for c in tr[1].unique()))
        label = "-".join(str(classes[c]) for c in task_classes)
        tasks.append(Task(f"experience {pos} ({label})", task_classes, split["train"], split["test"]))
    if len(input_kinds) > 1:
        raise UserError("the Avalanche benchmark mixes token and float inputs")

    if scenario is None:
        task_labels = [set(tr[2].unique().tolist()) for tr, _ in raw]
        if len(tasks) > 1 and len({frozenset(s) for s in task_labels}) == len(tasks):
            scenario = "task-incremental"
        elif len({t.classes for t in tasks}) == 1:
            scenario = "domain-incremental"
        else:
            scenario = "class-incremental"
    stream = Stream(
        name=name,
        scenario=scenario,
        input_kind=input_kinds.pop(),
        labels=tuple(str(c) for c in classes),
        tasks=tasks,
        input_dim=input_dim,
        max_len=max_len,
        params={"patch_size": patch_size, "pad_id": pad_id},
    )
    order = check_order(order, len(tasks))
    return stream if order == list(range(len(tasks))) else stream.reorder(order)


def benchmark_from_stream(stream: Stream):
    """An Avalanche benchmark (``train_stream``, ``test_stream``; one experience per task) whose
    examples are :func:`pack`-ed clbench examples, for a :class:`PackedModel`. Task labels are the
    task positions in task-incremental streams, else 0 (Avalanche's class-incremental
    convention)."""
    from avalanche.benchmarks.scenarios import benchmark_from_datasets, with_task_labels
    from avalanche.benchmarks.utils.classification_dataset import (
        _make_taskaware_tensor_classification_dataset as tensor_dataset,
    )

    n = max(max(t.train.x.shape[1], t.test.x.shape[1]) for t in stream.tasks)
    task_aware = stream.scenario == "task-incremental"

    def dataset(ex: Examples):
        ex = ex.to("cpu")
        labels = ex.t.tolist() if task_aware else 0
        return tensor_dataset(pack(ex, n), ex.y, task_labels=labels, targets=ex.y)

    return with_task_labels(
        benchmark_from_datasets(
            train=[dataset(t.train) for t in stream.tasks],
            test=[dataset(t.test) for t in stream.tasks],
        )
    )


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


def quiet_evaluator():
    """An Avalanche evaluator with no metrics and no loggers (clbench evaluates)."""
    from avalanche.training.plugins import EvaluationPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(loggers=[])


def _clip_plugin(max_norm: float):
    """An Avalanche plugin that clips the gradient norm before each step, like clbench's
    ``training.grad_clip``."""
    from avalanche.core import SupervisedPlugin

    class ClipGrad(SupervisedPlugin):
        def before_update(self, strategy, **kwargs):
            params = [p for p in strategy.model.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    return ClipGrad()


class _Batches:
    """A batch sampler giving clbench's batches (``batch_indices`` from the cell's generator),
    a new permutation on every pass, so a plain Avalanche strategy trains on the batches clbench
    would train on."""

    def __init__(self, lengths: torch.Tensor, cell):
        self.lengths = lengths
        self.cell = cell

    def __iter__(self):
        tcfg = self.cell.config.training
        for idx in batch_indices(self.lengths, tcfg.batch_size, self.cell.generator, tcfg.batching, tcfg.length_window):
            yield idx.tolist()

    def __len__(self) -> int:
        bs = self.cell.config.training.batch_size
        return (len(self.lengths) + bs - 1) // bs


def resolve_class(target: Any):
    """An Avalanche strategy class from a class or a name (``"EWC"`` or a dotted path)."""
    if not isinstance(target, str):
        return target
    if "." in target:
        module, _, attr = target.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    from avalanche.training import supervised

    return getattr(supervised, target)


class AvalancheStrategy:
    """Runs an Avalanche strategy's training on each task of a clbench cell.

    ``fit_task`` calls ``strategy.train(experience)`` on the cell's model (wrapped in a
    :class:`PackedModel`) instead of clbench's own steps; ``check_cell`` refuses any combination
    with another strategy; evaluation is the loop's.

    :param cls: the Avalanche strategy class.
    :param params: its constructor arguments from the suite.
    :param log: keep Avalanche's default evaluator and loggers (they print).
    """

    #: Avalanche's strategies train a classifier (a :class:`PackedModel`): generative streams are
    #: refused before anything runs.
    serves = ("classification",)

    def __init__(self, cls, params: dict[str, Any], log: bool = False):
        self.cls = cls
        self.params = params
        self.log = log
        self.strategy = None
        self.bench = None

    @hookimpl
    def check_cell(self, config, stream):
        if len(config.strategy.parts) > 1:
            others = [n for n, _ in config.strategy.parts if not n.startswith("avalanche:")]
            raise UserError(
                f"an Avalanche strategy runs its own training loop and cannot be combined (with {', '.join(others) or 'another'})"
            )

    def _build(self, cell) -> None:
        from avalanche.models.base_model import BaseModel

        BaseModel.register(PackedModel)  # it implements get_features
        tcfg = cell.config.training
        self.bench = benchmark_from_stream(cell.stream)
        self.model = PackedModel(cell.model, cell.class_mask, tokens=cell.stream.input_kind == "tokens")
        kwargs = dict(
            model=self.model,
            optimizer=make_optimizer(self.model.parameters(), tcfg),
            criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=tcfg.batch_size,
            train_epochs=tcfg.epochs,
            eval_mb_size=tcfg.eval_batch_size,
            device=cell.device,
            plugins=[_clip_plugin(tcfg.grad_clip)] if tcfg.grad_clip > 0 else [],
            eval_every=-1,
        )
        if not self.log:
            kwargs["evaluator"] = quiet_evaluator()
        try:
            self.strategy = self.cls(**kwargs, **self.params)
        except (TypeError, ValueError, AssertionError) as exc:
            raise UserError(f"avalanche {self.cls.__name__}: {exc}".splitlines()[0]) from None
        self.strategy.make_train_dataloader = self._make_train_dataloader

    def _make_train_dataloader(self, **kwargs) -> None:
        """clbench's batch order for the experience's data (a strategy plugin may still replace
        the loader afterwards, as Replay's does)."""
        data = self.strategy.adapted_dataset
        task = self._cell.task
        if len(data) == len(task.train):
            lengths = task.train.lengths.cpu()
        else:  # the strategy changed the data (Cumulative): read the lengths from it
            lengths = torch.cat([unpack(b[0])[1] for b in DataLoader(data, batch_size=1024, collate_fn=getattr(data, "collate_fn", None))])
        self.strategy.dataloader = DataLoader(
            data, batch_sampler=_Batches(lengths, self._cell), collate_fn=getattr(data, "collate_fn", None)
        )

    @hookimpl
    def fit_task(self, cell, task, data):
        self._cell = cell
        if self.strategy is None:
            self._build(cell)
        experience = self.bench.train_stream[cell.task_index]
        # record=True also swallows the warnings Avalanche's deprecation decorator forces "once"
        with warnings.catch_warnings(record=not self.log):
            if not self.log:
                warnings.simplefilter("ignore")
            self.strategy.train(experience, reset_optimizer_state=True)
        loss = self.strategy.loss
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            raise Diverged(f"loss is {loss.detach().flatten()[0].item()} on task {cell.task_index} ({task.name})")
        cell.model.train()  # the loop sets eval mode itself before evaluating
        return True


class AvalancheFactory:
    """Makes :class:`AvalancheStrategy` objects for one Avalanche class; its signature (what a
    suite may set) is the class's constructor without the arguments clbench supplies, plus
    ``log``. The class is imported when the signature or an object is first needed."""

    def __init__(self, target: Any):
        self.target = target
        self.__doc__ = f"the Avalanche strategy {getattr(target, '__name__', target)}"

    @property
    def __signature__(self) -> inspect.Signature:
        cls = resolve_class(self.target)
        init = cls.__init__
        try:
            hints = typing.get_type_hints(init)
        except Exception:
            hints = {}
        params = []
        for pname, p in inspect.signature(init).parameters.items():
            if pname == "self" or pname in SUPPLIED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            params.append(p.replace(kind=p.KEYWORD_ONLY, annotation=hints.get(pname, p.annotation)))
        params.append(inspect.Parameter("log", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool))
        return inspect.Signature(params)

    def __call__(self, log: bool = False, **params) -> AvalancheStrategy:
        return AvalancheStrategy(resolve_class(self.target), params, log=log)


@hookimpl
def register_strategies(register):
    for name in STRATEGIES:
        register(f"avalanche:{name}", AvalancheFactory(name), description=f"Avalanche's {name}, its own training loop on clbench's model")
