"""Tiny random causal LMs built from configs (no downloads), one per architecture family."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    Qwen2Config,
)

VOCAB = 128

CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256),
    # grouped-query attention, and head_dim (16) != hidden / heads (48 / 4 = 12)
    "llama_gqa": lambda: LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
    ),
    "bloom": lambda: BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
        max_position_embeddings=256, word_embed_proj_dim=32,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256,
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    ),
}
ARCHITECTURES = list(CONFIGS)


def tiny_model(architecture: str, seed: int = 0):
    torch.manual_seed(seed)
    config = CONFIGS[architecture]()
    config.pad_token_id = 0
    config.eos_token_id = 1
    config.bos_token_id = 2
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model
