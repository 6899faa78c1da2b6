"""The Transformer and the attention dispatch."""

import pytest
import torch

from clbench.models.attention import attention, reference_attention, sdpa_attention
from clbench.models import ModelConfig, Transformer


def test_padding_as_lengths_gives_the_same_features_as_the_unpadded_sequence():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, n_heads=4, n_layers=2), input_kind="tokens", input_dim=50, n_classes=3).eval()
    a = torch.randint(1, 50, (7,))
    b = torch.randint(1, 50, (12,))
    batch = torch.zeros(2, 12, dtype=torch.long)
    batch[0, :7], batch[1] = a, b
    lengths = torch.tensor([7, 12])
    with torch.no_grad():
        padded = model.features(batch, lengths)
        alone = torch.cat([model.features(a[None]), model.features(b[None])])
        # garbage in the padding does not leak into the features
        batch[0, 7:] = 49
        garbage = model.features(batch, lengths)
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(garbage, padded)


def test_patches_and_heads():
    model = Transformer(ModelConfig(d_model=16, n_heads=2, n_layers=1), input_kind="patches", input_dim=4, n_classes=10)
    x = torch.randn(5, 16, 4)
    assert model(x).shape == (5, 10)
    mask = torch.zeros(5, 10, dtype=torch.bool)
    mask[:, 3] = True
    assert (model(x, None, mask).argmax(1) == 3).all()
    with pytest.raises(ValueError, match="exceeds max_len"):
        model(torch.randn(1, 600, 4))


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_and_reference_agree_with_lengths(causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 9, 8) for _ in range(3))
    lengths = torch.tensor([9, 4, 1])
    ref = reference_attention(q, k, v, lengths, causal)
    out = sdpa_attention(q, k, v, lengths, causal)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_a_query_row_with_no_valid_key_gives_zeros():
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    out = sdpa_attention(q, k, v, torch.tensor([0]))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(reference_attention(q, k, v, torch.tensor([0])), torch.zeros_like(out))


def test_attention_can_be_forced_to_the_reference(monkeypatch):
    q, k, v = (torch.randn(1, 1, 4, 8) for _ in range(3))
    monkeypatch.setenv("CLBENCH_ATTENTION", "reference")
    torch.testing.assert_close(attention(q, k, v), reference_attention(q, k, v))
