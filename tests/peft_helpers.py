"""PEFT's own models for the interop tests."""

from __future__ import annotations

from torch import nn


def plain_lm(backbone: nn.Module) -> nn.Module:
    """A separate Hugging Face LM with the backbone LM's weights and none of our hooks: the
    model PEFT's own code wraps (the PEFT baseline benchmark wraps a whole backbone copy
    instead)."""
    config = backbone.lm.config.__class__.from_dict(backbone.lm.config.to_dict())
    config._attn_implementation = "sdpa"
    lm = type(backbone.lm)(config)
    lm.load_state_dict(backbone.lm.state_dict())
    return lm.eval()
