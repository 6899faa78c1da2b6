"""``naive``: fine-tune on each task in turn, with nothing against forgetting (the lower bound)."""

from clbench import hookimpl


class Naive:
    """Fine-tune through the stream; implements no training-loop hook."""


@hookimpl
def register_strategies(register):
    register("naive", Naive, description="fine-tune through the stream (lower bound)")
