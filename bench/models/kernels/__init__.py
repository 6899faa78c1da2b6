"""clbench's own GPU kernels, in Triton: FlashAttention-2 forward and backward (:mod:`.flash`).

Importing this package imports Triton, and Triton decides when a kernel is defined whether it
will be compiled for the GPU or run by its CPU interpreter (``TRITON_INTERPRET=1``). So set
``TRITON_INTERPRET`` before this package is first imported; :data:`INTERPRET` says which it was.
:func:`clbench.models.attention.attention` imports it only when it takes the Triton path.
"""

from .flash import INTERPRET, INTERPRET_BLOCKS, FlashAttention, flash_attention, unsupported

__all__ = ["INTERPRET", "INTERPRET_BLOCKS", "FlashAttention", "flash_attention", "unsupported"]
