"""What attention's inputs become under autocast: shared by the dispatch
(:mod:`clbench.models.attention`) and our kernels (:mod:`clbench.models.kernels.flash`), which
cast as torch does for SDPA."""

from __future__ import annotations

import torch


def autocast_inputs(q, k, v):
    """q, k, v cast to autocast's dtype where autocast is on for their device and they are fp32."""
    if q.dtype == torch.float32 and torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v
