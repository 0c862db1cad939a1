"""How adapter tensors are named, in a train form's parameters and in an artifact's files.

Module paths become parameter keys with ``.`` written as ``__`` (torch forbids ``.`` in a
parameter name), e.g. site ``lm.encoder.block.0.layer.0.SelfAttention.q`` is the key
``lm__encoder__block__0__layer__0__SelfAttention__q``. A tensor shared by every task is
stored as ``<method id>.shared.<group>.<path in the group>``, e.g.
``lora.shared.lora_A.lm__encoder__block__0__layer__0__SelfAttention__q``: the name
`modeling.recipe.AdapterModel.split_state` gives it (`PeftMethod` keeps shared groups in
its ``shared`` module dict). Plain Python: the torch-free registry's PEFT import names the
tensors it writes here too.
"""

from __future__ import annotations


def param_key(site: str) -> str:
    """A module path as a parameter-dict key (torch forbids '.' in parameter names)."""
    return site.replace(".", "__")


def site_of(key: str) -> str:
    """The module path of a parameter-dict key: the inverse of `param_key`."""
    return key.replace("__", ".")


def shared_tensor_name(method_id: str, group: str, path: str) -> str:
    """The artifact name of a tensor of ``group`` shared by every task.

    Args:
        method_id: the method's id in the recipe (``lora``, ``lora_2``, ``prompt_tuning``).
        group: the method's parameter group (``lora_A``, ``prompt``).
        path: the tensor's path inside the group: ``param_key(site)`` for a per-site
            tensor, ``embedding.weight`` for prompt tuning's vectors.
    """
    return f"{method_id}.shared.{group}.{path}"
