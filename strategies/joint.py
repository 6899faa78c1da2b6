"""``joint``: one model trained on the union of all tasks (the upper bound).

It trains once, at the first task, on every task's training data, and not again; the later
evaluations measure that same model, so its BWT and forgetting are 0 by construction and its ACC
is the stream's upper bound. ``repeat`` presents the union several times per epoch (default: as
many times as there are tasks, so joint makes as many passes over each example as a sequential
strategy makes over its tasks in total, and stays an upper bound rather than an under-trained
model).
"""

from clbench import hookimpl
from clbench.errors import UserError
from clbench.tasks import Examples


class Joint:
    """Train once on the union of all tasks."""

    def __init__(self, repeat: int = 0):
        if repeat < 0:
            raise UserError(f"joint: repeat must be >= 0 (0 = the number of tasks), got {repeat}")
        self.repeat = repeat

    @hookimpl
    def train_data(self, cell, task):
        if cell.task_index == 0:
            union = cell.stream.union()
            return Examples.cat([union] * (self.repeat or cell.stream.n_tasks))
        return cell.stream.tasks[0].train.empty()


@hookimpl
def register_strategies(register):
    register("joint", Joint, description="one model on the union of all tasks (upper bound)")
