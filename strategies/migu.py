"""``migu``: magnitude-based gradient updating (Du et al., "Unlocking Continual Learning
Abilities in Language Models", EMNLP 2024 Findings; the authors' code is the MIGU repository).

No memory and no task id. In every linear layer ``y = W x + b`` of the model (``nn.Linear``, and
transformers' ``Conv1D``, whose weight is ``(in, out)``), a forward hook adds up the magnitude
of each output over the batch's positions,

    ``m_i = Σ_{positions n} |y_n,i|``,   normalised ``m̂_i = m_i / Σ_j m_j``  (L1),

and after ``backward()`` only the rows of ``W`` (one per output i) whose ``m̂_i`` is at or above
the ``1 − ratio`` quantile of the layer's ``m̂`` keep their gradient; every other row's gradient
is set to zero (``W.grad[i] = 0``), so the optimizer step leaves it where it was (with plain
SGD and Adam without weight decay; Adam's moments still carry earlier steps). The L1
normalisation does not change which rows a layer keeps: it makes the magnitudes of layers, and
of tasks, comparable, which is the observation the method rests on. Biases are not masked, as
in the authors' code.

As the authors' scripts run it, the first task trains unmasked (``first_task = False``), and
the magnitudes of the positions the model computes count, padding included (a batch is trimmed
to its longest sequence). ``magnitudes = "task"`` sums them over every batch of the task so far
instead of the current batch's only, which is what the authors' training loop does (its sums
are never reset within a task). See docs/strategies.md for what else differs from their code.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from clbench import hookimpl
from clbench.errors import UserError
from clbench.host import get_host
from clbench.params import require


def _linear_types() -> tuple[type, ...]:
    try:  # GPT-2's projections, when transformers is there (without it no model has them)
        from transformers.pytorch_utils import Conv1D
    except Exception:  # pragma: no cover - transformers not installed
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def row_mask(magnitudes: torch.Tensor, ratio: float) -> torch.Tensor:
    """``(out,)`` bool: the outputs whose L1-normalised magnitude is at or above the ``1 − ratio``
    quantile of the layer's (the authors' ``activation >= torch.quantile(activation, threshold)``)."""
    m = magnitudes.float()
    m = m / m.sum().clamp_min(torch.finfo(m.dtype).tiny)
    if ratio >= 1.0:
        return torch.ones_like(m, dtype=torch.bool)
    return m >= torch.quantile(m, 1.0 - ratio)


class MIGU:
    """MIGU: in every linear layer, only the rows with the largest output magnitudes on the
    batch receive their gradient.

    :param ratio: the share of each layer's rows that keep their gradient (the authors' scripts'
        ``ini_threshold`` 0.7 is the quantile, so 0.3 of the rows).
    :param first_task: mask on the first task too (the authors train it unmasked).
    :param magnitudes: ``"batch"`` (the current batch's outputs) or ``"task"`` (summed over the
        task's batches so far, as the authors' code does).
    :param exclude: layers left unmasked, by qualified name or its end (``"head"``: the
        classification head).
    """

    search_space = {"ratio": {"uniform": [0.05, 0.95]}}

    def __init__(
        self,
        ratio: float = 0.3,
        first_task: bool = False,
        magnitudes: Literal["batch", "task"] = "batch",
        exclude: list[str] = (),
    ):
        require(0.0 < ratio <= 1.0, "ratio", "in (0, 1]", ratio)
        self.ratio = ratio
        self.first_task = first_task
        self.magnitudes = magnitudes
        self.exclude = tuple(exclude)
        self.layers: dict[int, tuple[str, nn.Module]] | None = None  # id -> (name, layer)
        self.sums: dict[int, torch.Tensor] = {}
        self.masking = False

    @hookimpl
    def check_cell(self, config, stream):
        host = get_host()
        for name, _ in config.strategy.parts:
            try:
                cls = host.get("strategies", name).obj
            except Exception:  # a strategy the host does not know: its own refusal says so
                continue
            if getattr(cls, "changes_model", False):
                raise UserError(f"migu masks the gradients of the model's own linear layers, which '{name}' freezes "
                                "(it trains adapters): there would be nothing to mask; combine migu with strategies "
                                "that train the whole model")

    def _install(self, model: nn.Module) -> None:
        kinds = _linear_types()
        self.layers = {}
        for name, module in model.named_modules():
            if isinstance(module, kinds) and not any(name == e or name.endswith("." + e) for e in self.exclude):
                self.layers[id(module)] = (name, module)
                module.register_forward_hook(self._accumulate)
        if not self.layers:
            raise UserError("strategy 'migu': the model has no linear layer to mask")

    def _accumulate(self, module, args, out) -> None:
        key = id(module)
        if not self.masking or not module.training or not torch.is_grad_enabled() or key not in (self.layers or {}):
            return  # evaluation, an unmasked task, or a copy of the model another strategy made
        y = out[0] if isinstance(out, tuple) else out
        m = y.detach().abs().float().reshape(-1, y.shape[-1]).sum(0)  # (out,)
        self.sums[key] = m if key not in self.sums else self.sums[key] + m

    @hookimpl
    def before_task(self, cell, task):
        if self.layers is None:
            self._install(cell.model)
        self.sums = {}
        self.masking = self.first_task or cell.task_index > 0

    @hookimpl
    def after_backward(self, cell, batch):
        if not self.masking:
            return
        for key, (_, layer) in self.layers.items():
            w = layer.weight
            if key not in self.sums or w.grad is None:
                continue
            keep = row_mask(self.sums[key], self.ratio).to(w.grad.dtype)
            # an nn.Linear's row i is weight[i, :]; a Conv1D's output i is weight[:, i]
            w.grad.mul_(keep[None, :] if _is_conv1d(layer) else keep[:, None])
        if self.magnitudes == "batch":
            self.sums = {}


def _is_conv1d(layer: nn.Module) -> bool:
    return type(layer).__name__ == "Conv1D"


@hookimpl
def register_strategies(register):
    register("migu", MIGU, description="magnitude-based gradient updating: only the linear rows with the largest outputs train (Du et al. 2024)")
