"""clbench.tasks: stream and task types, and the built-in streams."""

from .base import SCENARIOS, Batch, Examples, Stream, Task

__all__ = ["SCENARIOS", "Batch", "Examples", "Stream", "Task"]
