"""The optional sampling mode of ``generate`` (clbench's decoder and Hugging Face models): the
distribution it draws from (top-k, top-p, temperature), its seeded generator, and greedy decoding
left as it was."""

from __future__ import annotations

import numpy as np
import torch

from clbench.models import ModelConfig, Transformer
from clbench.models.sampling import Sampling


def _decoder(vocab: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, causal=True, max_len=32)
    return Transformer(cfg, input_kind="tokens", input_dim=vocab, n_classes=0, lm_head=True).eval()


def test_sampling_draws_from_the_filtered_distribution_with_a_seeded_generator():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    freq = np.bincount(Sampling().pick(logits, g).numpy(), minlength=4) / 20000
    assert np.allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    top2 = np.bincount(Sampling(top_k=2).pick(logits, g).numpy(), minlength=4) / 20000
    assert top2[2:].sum() == 0 and abs(top2[0] - 0.5 / 0.8) < 0.015  # renormalised over the two kept
    nucleus = np.bincount(Sampling(top_p=0.7).pick(logits, g).numpy(), minlength=4) / 20000
    assert nucleus[2:].sum() == 0  # 0.5 + 0.3 reaches 0.7: the fewest tokens that do
    cold = np.bincount(Sampling(temperature=0.1).pick(logits, g).numpy(), minlength=4) / 20000
    assert cold[0] > 0.99
    a = Sampling().pick(logits[:50], torch.Generator().manual_seed(7))
    b = Sampling().pick(logits[:50], torch.Generator().manual_seed(7))
    c = Sampling().pick(logits[:50], torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generate_samples_with_a_generator_and_its_greedy_decoding_is_unchanged():
    model = _decoder(vocab=12, seed=1)
    x = torch.tensor([[3, 4, 5, 6, 7], [3, 9, 0, 0, 0], [8, 8, 8, 0, 0]])
    lengths = torch.tensor([5, 2, 3])
    greedy = model.generate(x, lengths, 6, 0)
    assert torch.equal(model.generate(x, lengths, 6, 0, sampling=Sampling(top_k=1), generator=torch.Generator()), greedy)
    hot = Sampling(temperature=3.0)
    s1 = model.generate(x, lengths, 6, 0, sampling=hot, generator=torch.Generator().manual_seed(0))
    s2 = model.generate(x, lengths, 6, 0, sampling=hot, generator=torch.Generator().manual_seed(0))
    s3 = model.generate(x, lengths, 6, 0, sampling=hot, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    for row in s1.tolist():  # a sequence that ended stays ended
        if 0 in row:
            assert set(row[row.index(0):]) == {0}


def test_a_hugging_face_model_samples_the_same_way(tiny_causal_lm):
    from clbench.models.backbones import resolve
    from clbench.models.hf import load_causal_lm

    model = load_causal_lm(resolve(str(tiny_causal_lm("llama")))).eval()
    x = torch.tensor([[2, 40, 41, 42], [2, 43, 0, 0]])
    lengths = torch.tensor([4, 2])
    greedy = model.generate(x, lengths, 8, 1)
    assert torch.equal(model.generate(x, lengths, 8, 1, sampling=Sampling(top_k=1), generator=torch.Generator()), greedy)
    hot = Sampling(temperature=5.0)
    s1 = model.generate(x, lengths, 8, 1, sampling=hot, generator=torch.Generator().manual_seed(0))
    s2 = model.generate(x, lengths, 8, 1, sampling=hot, generator=torch.Generator().manual_seed(0))
    s3 = model.generate(x, lengths, 8, 1, sampling=hot, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)
    assert torch.equal(model.generate(x, lengths, 8, 1), greedy)  # the global RNG was not needed
