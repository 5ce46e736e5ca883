"""The shape a prompt must fit, read off a base model by running one token through it."""

from __future__ import annotations

import torch
from torch import nn

from ..compat import PrefixCall, layer_states, output_cache, prefix_attention_context, use_prefix_attention
from ..methods.base import ModelShape


@torch.no_grad()
def probe_shape(model: nn.Module) -> ModelShape:
    """Run one token through the model and read layer count, KV heads and head_dim off its cache.

    This is exact for grouped-query attention and for models whose head_dim is not hidden/heads.
    """
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    device = model.get_input_embeddings().weight.device
    one_token = torch.zeros(1, 1, dtype=torch.long, device=device)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    extra = {"decoder_input_ids": one_token} if encoder_decoder else {}
    was_training = model.training
    model.eval()
    cache = output_cache(model(input_ids=one_token, use_cache=True, **extra))
    backbone = getattr(model, "base_model", model)
    if cache is None and backbone is not model:  # a head that returns no cache (token classification)
        cache = output_cache(backbone(input_ids=one_token, use_cache=True, **extra))
    model.train(was_training)
    if cache is None:
        return probe_encoder_shape(model, config)
    layers = layer_states(getattr(cache, "self_attention_cache", cache))  # a seq2seq model: the decoder's
    keys = layers[0][0]  # [1, kv_heads, 1, head_dim]
    return ModelShape(
        hidden_size=model.get_input_embeddings().embedding_dim,
        num_layers=len(layers),
        num_heads=getattr(config, "num_attention_heads", None) or config.num_heads,
        num_kv_heads=keys.shape[1],
        head_dim=keys.shape[-1],
        encoder_decoder=encoder_decoder,
        encoder_layers=getattr(config, "num_hidden_layers", 0) if encoder_decoder else 0,
    )


@torch.no_grad()
def probe_encoder_shape(model: nn.Module, config) -> ModelShape:
    """A model that keeps no cache (an encoder): route its attention through ours and record the key shapes."""
    if not use_prefix_attention(model):
        raise ValueError(
            f"{type(model).__name__} keeps no key/value cache and its attention cannot be routed through "
            "transformers' attention interface, so no prompt can reach its layers."
        )
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    with prefix_attention_context(PrefixCall()) as call:
        model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device))
    model.train(was_training)
    keys = call.key_shapes  # one [1, kv_heads, 1, head_dim] per layer
    return ModelShape(
        hidden_size=model.get_input_embeddings().embedding_dim,
        num_layers=len(keys),
        num_heads=getattr(config, "num_attention_heads", None) or config.n_heads,
        num_kv_heads=keys[0][1],
        head_dim=keys[0][-1],
        bidirectional=True,
    )
