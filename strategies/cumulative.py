"""``cumulative``: at task k, train on the union of tasks 0..k.

The reference for intransigence (Chaudhry et al. 2018): ``R*[k, k]`` is this strategy's accuracy
on task k after training on it.
"""

from clbench import hookimpl


class Cumulative:
    """Train on everything seen so far at each task."""

    @hookimpl
    def train_data(self, cell, task):
        return cell.stream.union(cell.task_index)


@hookimpl
def register_strategies(register):
    register("cumulative", Cumulative, description="train on tasks 0..k at task k (intransigence reference)")
