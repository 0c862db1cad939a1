"""Every PEFT method, registered by importing its module."""

from modeling.methods import (  # noqa: F401  (imported for their register_method calls)
    adapter,
    compacter,
    full_finetuning,
    hyperformer,
    lora,
    prefix_tuning,
    prompt_tuning,
    trainable_tensors,
)
from modeling.methods.registry import METHODS, get_method, register_method

__all__ = ["METHODS", "get_method", "register_method"]
