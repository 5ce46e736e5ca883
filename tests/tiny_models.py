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

from softprompt import (
    CPTConfig,
    DePTConfig,
    MultitaskPromptTuningConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    ResidualPromptTuningConfig,
    ULPTConfig,
)

VOCAB = 128

CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256),
    # grouped-query attention, and head_dim (16) != hidden / heads (48 / 4 = 12)
    "llama_gqa": lambda: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
    ),
    "bloom": lambda: BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
    "opt": lambda: OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=256,
        word_embed_proj_dim=32,
    ),
    "gpt_neox": lambda: GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
    ),
    "qwen2": lambda: Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
}
ARCHITECTURES = list(CONFIGS)


def tiny_model(architecture: str, seed: int = 0):
    """A 2-layer random model. Weights are drawn wider than usual so that greedy choices are not near-ties."""
    torch.manual_seed(seed)
    config = CONFIGS[architecture]()
    config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 1, 2
    config.initializer_range = 0.2
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return model


# Every method variant the tests cover; each call builds a fresh config.
METHOD_CONFIGS = {
    "prompt_tuning": lambda: PromptTuningConfig(num_virtual_tokens=4),
    "p_tuning_mlp": lambda: PromptEncoderConfig(num_virtual_tokens=4, encoder_hidden_size=16),
    "p_tuning_lstm": lambda: PromptEncoderConfig(
        num_virtual_tokens=4, encoder_hidden_size=16, encoder_reparameterization_type="LSTM"
    ),
    "prefix_tuning": lambda: PrefixTuningConfig(num_virtual_tokens=4),
    "prefix_projection": lambda: PrefixTuningConfig(
        num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=16
    ),
    "multitask": lambda: MultitaskPromptTuningConfig(num_virtual_tokens=4, num_tasks=1, num_ranks=2),
    # an in-context example: template, input, output template, label (CPT keeps the label token fixed)
    "cpt": lambda: CPTConfig(cpt_token_ids=[40, 41, 42, 43, 44], cpt_tokens_type_mask=[1, 2, 2, 3, 4]),
    # the authors' LayerNorm start, so every MLP weight takes a gradient from the first step
    "residual": lambda: ResidualPromptTuningConfig(num_virtual_tokens=4, bottleneck_size=8, residual_init="layer_norm"),
    "ulpt": lambda: ULPTConfig(num_virtual_tokens=4, low_rank=2),
    # offsets that start non-zero (so every comparison sees them) and stop before the longest rows end
    "dept": lambda: DePTConfig(num_virtual_tokens=3, offset_length=5, offset_rank=2, offset_init_std=0.05),
}
METHODS = list(METHOD_CONFIGS)
OWN_LOSS = {"cpt"}  # methods whose training loss is their own (CPT also scores the prompt's labels)


def without_dropout(model):
    """The model with every dropout off (train mode then runs the same network twice); returned for chaining."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def trainable(model):
    """The prompt's trainable parameters (CPT keeps its example embeddings frozen)."""
    return [p for p in model.prompt_source.parameters() if p.requires_grad]


def left_padded_batch(seed: int = 0, lengths=(7, 4, 2)):
    """Random token ids, left padded with 0: (input_ids [B, T], attention_mask [B, T], rows unpadded)."""
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, VOCAB, (n,), generator=generator) for n in lengths]
    width = max(lengths)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = row
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask, rows
