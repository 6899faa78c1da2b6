"""Where clbench caches what it derives once and reuses: tokenizers trained on a stream, the
standard CL benchmark's built folders, GGUF files de-quantized into Hugging Face folders."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where clbench caches things: ``$CLBENCH_CACHE``, else ``$XDG_CACHE_HOME/clbench``."""
    if os.environ.get("CLBENCH_CACHE"):
        return Path(os.environ["CLBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clbench"
