"""The GPU smoke script's utilisation arithmetic: FLOPs per token and the device peak table."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from training.gpu_smoke import ARCHITECTURES, peak_flops, training_flops_per_token


def _matmul_weights(config: LlamaConfig) -> int:
    """Elements of every Linear weight of the real module (the LM head included, tied or not)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_flops_per_token_counts_every_matmul_of_the_real_architecture(name):
    config = LlamaConfig(vocab_size=49152, tie_word_embeddings=True, **ARCHITECTURES[name])
    seq = 256
    attention = 12 * config.num_hidden_layers * config.hidden_size * seq
    assert training_flops_per_token(config, seq) == 6 * _matmul_weights(config) + attention


def test_the_default_gpu_architecture_has_at_least_half_a_billion_parameters():
    config = LlamaConfig(
        vocab_size=49152, tie_word_embeddings=True, **ARCHITECTURES["smollm2-1.7b"]
    )
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert 1.6e9 < params < 1.8e9


def test_peak_flops_by_device_name():
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None
