"""Import a released VL-T5 / VL-BART checkpoint (`.pth`, j-min/VL-T5, ylsung/VL_adapter).

Those files are `torch.save(model.state_dict())` of the papers' `VLT5` / `VLBart` models:
the Hugging Face T5 / BART weights under their usual names, plus the visual embedding
under `encoder.visual_embedding.` (VL-T5) or `model.encoder.visual_embedding.` (VL-BART),
sometimes behind `module.` (DistributedDataParallel) or with `vis_encoder.` for `encoder.`.
They are read with `torch.load(weights_only=True)` only: a file that needs a full unpickle
is refused, never unpickled (DESIGN.md: nothing is unpickled from a user's file).

Key map of the visual embedding (with their defaults `individual_vis_layer_norm`,
`use_vis_layer_norm`, `use_vis_order_embedding`) onto our `VisualProjection`:

    feat_embedding.0 (Linear)               -> feat_linear
    feat_embedding.1 (T5LayerNorm / LN)     -> feat_norm
    absolute_vis_pos_embedding.0 (Linear)   -> box_linear
    absolute_vis_pos_embedding.1            -> box_norm
    img_order_embedding                     -> image_order
    obj_order_embedding                     -> (the LM's shared embedding: checked equal)

The LM's architecture and tokenizer come from a Hugging Face folder of the model the paper
started from (t5-base, bart-base); its vocabulary is resized to the checkpoint's, and the
tokenizer gets the papers' added tokens (`<extra_id_99..0>`, `<vis_extra_id_99..0>`, as
VL-BART adds them; T5 has the first hundred already), so that `<vis_extra_id_j>` is id
vocab - 1 - j, the object-order row of object j.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    BartForConditionalGeneration,
    PreTrainedTokenizerBase,
    T5ForConditionalGeneration,
)

from modeling.backbone import VLBackbone
from modeling.config import BackboneConfig
from modeling.families.folders import TOKENIZER_FILES, first_line, load_tokenizer, model_type

# Where each family keeps the LM's shared embedding and the visual embedding.
SHARED = {"t5": "shared.weight", "bart": "model.shared.weight"}
VISUAL_PREFIX = {"t5": "encoder.visual_embedding.", "bart": "model.encoder.visual_embedding."}
VISUAL_KEYS = {
    "feat_embedding.0.weight": "feat_linear.weight",
    "feat_embedding.0.bias": "feat_linear.bias",
    "feat_embedding.1.weight": "feat_norm.weight",
    "feat_embedding.1.bias": "feat_norm.bias",
    "absolute_vis_pos_embedding.0.weight": "box_linear.weight",
    "absolute_vis_pos_embedding.0.bias": "box_linear.bias",
    "absolute_vis_pos_embedding.1.weight": "box_norm.weight",
    "absolute_vis_pos_embedding.1.bias": "box_norm.bias",
    "img_order_embedding.weight": "image_order.weight",
}
OBJECT_ORDER = "obj_order_embedding.weight"
# Renames the papers' own loaders apply (`utils.load_state_dict`, `load_checkpoint`).
RENAMES = (("module.", ""), ("vis_encoder.", "encoder."), ("model.vis_encoder.", "model.encoder."))
# Keys of a Hugging Face config.json that say where it came from, not what it builds.
_CONFIG_META = ("_name_or_path", "architectures", "transformers_version", "model_type", "dtype",
                "torch_dtype", "id2label", "label2id")
# torch.load(weights_only=True) names what it refused after this line of its message.
_WEIGHTS_ONLY_REASON = "WeightsUnpickler error:"
# The tokens VL-T5 / VL-BART add, in the order VL-BART adds them.
PAPER_TOKENS = [f"<extra_id_{i}>" for i in range(99, -1, -1)] + \
    [f"<vis_extra_id_{i}>" for i in range(99, -1, -1)]


@dataclass
class ImportReport:
    """What an import used: tensors mapped, checkpoint keys left unused, tokens added."""

    mapped: int = 0
    unmapped: list[str] = field(default_factory=list)
    added_tokens: int = 0
    tokenizer: bool = False


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`, keys renamed as the papers' loaders rename them.

    Loaded with `weights_only=True`; anything but a dict of tensors is refused (ValueError).
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: refused: not a plain state dict of tensors "
                         f"({_weights_only_reason(err)}); a file that needs a full unpickle "
                         f"is never unpickled: save model.state_dict() instead") from None
    except (RuntimeError, KeyError, EOFError, ValueError, OSError) as err:
        raise ValueError(f"{path}: not a torch checkpoint ({first_line(err)})") from None
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got "
                         f"{type(data).__name__}")
    out = {}
    for key, tensor in data.items():
        for old, new in RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = tensor
    return out


def _weights_only_reason(err: pickle.UnpicklingError) -> str:
    """What `torch.load(weights_only=True)` refused, its first sentence (e.g. "Unsupported
    global: GLOBAL getattr was not an allowed global by default")."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if _WEIGHTS_ONLY_REASON in line:
            reason = line.split(_WEIGHTS_ONLY_REASON, 1)[1].strip()
            if not reason and i + 1 < len(lines):
                reason = lines[i + 1]
            return reason.split(". ", 1)[0]
    return "torch.load with weights_only=True fails"


def _lm_type(state: dict[str, torch.Tensor], path: Path, lm_dir: Path) -> str:
    """t5 / bart from the checkpoint's names, checked against the LM folder's model_type."""
    found = [kind for kind, key in SHARED.items() if key in state]
    if len(found) != 1:
        raise ValueError(f"{path}: neither VL-T5 ({SHARED['t5']}) nor VL-BART "
                         f"({SHARED['bart']}) weights")
    folder = model_type(lm_dir)
    if folder != found[0]:
        raise ValueError(f"{path} holds {'VL-T5' if found[0] == 't5' else 'VL-BART'} weights "
                         f"but --lm {lm_dir} is {'a ' + folder if folder else 'no'} model "
                         f"folder; give the {found[0]} folder the paper started from")
    return found[0]


def _build_lm(lm_type: str, lm_dir: Path, vocab: int) -> tuple[torch.nn.Module, dict]:
    """The LM of `lm_dir`'s config with `vocab` embedding rows -> (module, config kwargs)."""
    try:
        hf_config = AutoConfig.from_pretrained(lm_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{lm_dir}: config.json does not load: {first_line(err)}") from None
    hf_config.vocab_size = vocab
    kwargs = {k: v for k, v in hf_config.to_dict().items() if k not in _CONFIG_META}
    cls = T5ForConditionalGeneration if lm_type == "t5" else BartForConditionalGeneration
    return cls(hf_config), kwargs


def _load_lm(lm: torch.nn.Module, state: dict[str, torch.Tensor], path: Path,
             report: ImportReport) -> None:
    """Copy the checkpoint's LM tensors into `lm`; every LM tensor must be given (tied
    names count once) with its shape, and tied names must agree."""
    own = lm.state_dict(keep_vars=True)
    given: dict[int, tuple[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key not in own:
            report.unmapped.append(key)
            continue
        target = own[key]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}; the LM folder's "
                             f"config gives {tuple(target.shape)}")
        seen = given.get(id(target))
        if seen is not None and not torch.equal(seen[1], tensor):
            raise ValueError(f"{path}: {seen[0]} and {key} differ, but the LM folder's config "
                             f"ties them")
        given[id(target)] = (key, tensor)
    missing = sorted(k for k, t in own.items() if id(t) not in given)
    if missing:
        raise ValueError(f"{path}: {len(missing)} LM tensor(s) missing, e.g. {missing[0]}")
    with torch.no_grad():
        for key, tensor in given.values():
            own[key].copy_(tensor)
    report.mapped += len(given)


def _visual_state(state: dict[str, torch.Tensor], lm_type: str, path: Path,
                  report: ImportReport) -> dict[str, torch.Tensor]:
    """Our VisualProjection's tensors from the checkpoint's visual embedding; unknown
    visual keys go to `report.unmapped`, the object-order table is checked against the
    shared embedding."""
    prefix, shared = VISUAL_PREFIX[lm_type], state[SHARED[lm_type]]
    visual = {}
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix):]
        tensor = state.pop(key)
        if name == OBJECT_ORDER:
            if not torch.equal(tensor, shared):
                raise ValueError(f"{path}: {key} differs from {SHARED[lm_type]}; VL-T5 reads "
                                 f"object order from the shared token embedding")
        elif name in VISUAL_KEYS:
            visual[VISUAL_KEYS[name]] = tensor
            report.mapped += 1
        else:
            report.unmapped.append(key)
    needed = [k for k in ("feat_linear.weight", "box_linear.weight", "image_order.weight",
                          "feat_norm.weight") if k not in visual]
    if needed:
        raise ValueError(f"{path}: no visual embedding tensor for our {needed[0]} (expected "
                         f"{prefix}{next(k for k, v in VISUAL_KEYS.items() if v == needed[0])})")
    return visual


def _paper_tokenizer(lm_dir: Path, vocab: int, report: ImportReport
                     ) -> PreTrainedTokenizerBase | None:
    """The LM folder's tokenizer with the papers' added tokens (None: the folder has none)."""
    if not any((lm_dir / name).is_file() for name in TOKENIZER_FILES):
        return None
    tokenizer = load_tokenizer(lm_dir)
    missing = [t for t in PAPER_TOKENS if t not in tokenizer.get_vocab()]
    report.added_tokens = tokenizer.add_special_tokens(
        {"additional_special_tokens": missing}, replace_extra_special_tokens=False) \
        if missing else 0
    last = tokenizer.convert_tokens_to_ids("<vis_extra_id_0>")
    if len(tokenizer) != vocab or last != vocab - 1:
        raise ValueError(f"{lm_dir}: tokenizer has {len(tokenizer)} tokens with VL-T5's added "
                         f"ones (<vis_extra_id_0> = {last}); the checkpoint's vocabulary is "
                         f"{vocab} (<vis_extra_id_0> = {vocab - 1})")
    report.tokenizer = True
    return tokenizer


def import_vlt5(path: str | Path, lm_dir: str | Path) -> tuple[VLBackbone, ImportReport]:
    """A backbone (precomputed features, VL-T5 semantics) from a released checkpoint and
    the Hugging Face folder of its LM; ValueError of one line on anything unusable."""
    path, lm_dir = Path(path), Path(lm_dir)
    state = read_checkpoint(path)
    lm_type = _lm_type(state, path, lm_dir)
    report = ImportReport()
    visual = _visual_state(state, lm_type, path, report)
    vocab = state[SHARED[lm_type]].shape[0]
    lm, lm_kwargs = _build_lm(lm_type, lm_dir, vocab)
    _load_lm(lm, state, path, report)
    tokenizer = _paper_tokenizer(lm_dir, vocab, report)
    d_model, feat_dim = visual["feat_linear.weight"].shape
    config = BackboneConfig(
        lm_type=lm_type, lm=lm_kwargs, feat_dim=int(feat_dim), vision=None, image_grid=6,
        n_images=int(visual["image_order.weight"].shape[0]),
        box_dim=int(visual["box_linear.weight"].shape[1]), visual_semantics="vlt5")
    if int(d_model) != config.d_model:
        raise ValueError(f"{path}: visual embedding width {d_model} != the LM's d_model "
                         f"{config.d_model}")
    backbone = VLBackbone(config, lm=lm, tokenizer=tokenizer)
    expected = backbone.visual.state_dict()
    wrong = [k for k in expected if k not in visual or visual[k].shape != expected[k].shape]
    wrong += [k for k in visual if k not in expected]
    if wrong:
        raise ValueError(f"{path}: visual embedding does not fit ours at {wrong[0]} "
                         f"(VL-T5 with individual_vis_layer_norm and use_vis_layer_norm on)")
    backbone.visual.load_state_dict(visual)
    return backbone.eval(), report


__all__ = ["ImportReport", "import_vlt5", "read_checkpoint"]
