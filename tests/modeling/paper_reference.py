"""A plain-torch reference of one row's adapted backbone, written from the papers' equations.

Independent of `modeling.kernels` and `modeling.hooks`: one row at a time, no stacking, no
gathering, no padding of ranks or prefixes. It reads the frozen weights and one adapter
set (`AdapterSet`) and computes:

- LoRA (Hu et al.):                 h = W0 x + b + s * B A x
- bottleneck adapters (the PEFT study, Eqs. 5-8; VL-Adapter Sec. 3.1), at the sublayer
  output before the block's skip connection ("+ x" of Eq. 8 is that skip connection):
      serial:    out = f(x) + s * (act(f(x) Wd^T + bd) Wu^T + bu)
      parallel:  out = f(x) + s * (act(x Wd^T + bd) Wu^T + bu)       x = the sublayer input
- prefix tuning (study Eq. 3): per attention, keys/values [P_k ; K], [P_v ; V]; the prefix
  is visible to every query and carries no T5 relative-position bias;
- prompt tuning (study Eq. 2): encoder input [p ; text ; visual];
- overrides: a set's copies of LayerNorms, biases, the visual projection, the LM head;
- the whole encoder of one row (`encoder`), with VL-T5 / VL-BART's semantics when the
  backbone has them (j-min/VL-T5 `JointEncoder`): T5's relative bias between text (and
  prompt) tokens only, zero for every pair with a visual token; BART's learned positions
  on text tokens only (0, 1, ... from the first text token) and its embedding LayerNorm
  on prompt and text only; each visual token adds E[vocab - 1 - j] (object j of its image).

The frozen sublayers (attention, FFN, LayerNorm, the visual projection of VL-T5) are
written out from the T5 / BART / VL-T5 definitions; only T5's relative-position buckets
come from the Hugging Face module (`compute_bias`), which no adapter touches.
"""

from __future__ import annotations

import math

import torch

from modeling.serve_forms import AdapterSet

ACTIVATION = {
    "relu": lambda x: torch.clamp(x, min=0),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),  # exact (erf) GELU
    "silu": lambda x: x * torch.sigmoid(x),
    "tanh": torch.tanh,
}

# Attention projection names per family: query, key, value, output.
PROJECTIONS = {"t5": ("q", "k", "v", "o"), "bart": ("q_proj", "k_proj", "v_proj", "out_proj")}


class RowReference:
    """One row with one adapter set (None: the bare backbone). Inputs are one row: [n, d]."""

    def __init__(self, backbone, adapter_set: AdapterSet | None):
        self.backbone = backbone
        self.lm_type = backbone.config.lm_type
        self.frozen = backbone.frozen_tensors()
        self.weights = adapter_set if adapter_set is not None else AdapterSet()
        config = backbone.lm.config
        self.heads = config.num_heads if self.lm_type == "t5" else config.encoder_attention_heads
        self.head_dim = config.d_kv if self.lm_type == "t5" else config.d_model // self.heads
        self.papers = backbone.config.visual_semantics == "vlt5"

    # --- single modules ----------------------------------------------------------------
    def tensor(self, name: str) -> torch.Tensor | None:
        """The row's value of a backbone tensor: its set's override, else the frozen one."""
        return self.weights.overrides.get(name, self.frozen.get(name))

    def linear(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out]: W0 x + b + s * B A x (LoRA) with the row's W0, b."""
        y = x @ self.tensor(f"{path}.weight").T
        bias = self.tensor(f"{path}.bias")
        if bias is not None:
            y = y + bias
        delta = self.weights.lora.get(path)
        if delta is not None:
            y = y + delta.scale * (x @ delta.lora_a.T) @ delta.lora_b.T
        return y

    def layer_norm(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm (mean and variance) or T5's RMS norm (no mean, no bias), row's affine."""
        module = self.backbone.get_submodule(path)
        weight, bias = self.tensor(f"{path}.weight"), self.tensor(f"{path}.bias")
        if type(module).__name__ == "T5LayerNorm":
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon) \
                * weight
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(variance + module.eps) * weight + bias

    def embedding(self, path: str, ids: torch.Tensor) -> torch.Tensor:
        return self.tensor(f"{path}.weight")[ids]

    def adapter(self, position: str, sub_in: torch.Tensor, sub_out: torch.Tensor
                ) -> torch.Tensor:
        """The sublayer output with the row's bottleneck at `position` (Eqs. 5-8)."""
        b = self.weights.bottleneck.get(position)
        if b is None:
            return sub_out
        z = sub_in if b.parallel else sub_out
        hidden = ACTIVATION[b.activation](z @ b.down_weight.T + b.down_bias)
        return sub_out + b.scale * (hidden @ b.up_weight.T + b.up_bias)

    def attention(self, path: str, site: str, queries: torch.Tensor, keys: torch.Tensor,
                  causal: bool, position_bias: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention with the row's key/value prefix at `site`.

        queries [n, d], keys [m, d] (the key/value input), position_bias [heads, n, m] or
        None -> [n, d]. T5 does not scale scores; BART scales by head_dim ** -0.5.
        """
        q_name, k_name, v_name, o_name = PROJECTIONS[self.lm_type]

        def split(x: torch.Tensor) -> torch.Tensor:  # [n, heads*hd] -> [heads, n, hd]
            return x.view(x.shape[0], self.heads, self.head_dim).transpose(0, 1)

        q = split(self.linear(f"{path}.{q_name}", queries))
        k = split(self.linear(f"{path}.{k_name}", keys))
        v = split(self.linear(f"{path}.{v_name}", keys))
        scale = 1.0 if self.lm_type == "t5" else self.head_dim ** -0.5
        scores = q @ k.transpose(1, 2) * scale
        if position_bias is not None:
            scores = scores + position_bias
        if causal:
            n, m = scores.shape[1:]
            scores = scores.masked_fill(~torch.ones(n, m, dtype=torch.bool).tril(m - n),
                                        float("-inf"))
        prefix = self.weights.prefix.get(site)
        if prefix is not None:
            scores = torch.cat([q @ prefix.key.transpose(1, 2) * scale, scores], dim=-1)
            v = torch.cat([prefix.value, v], dim=1)
        out = torch.softmax(scores, dim=-1) @ v  # [heads, n, hd]
        return self.linear(f"{path}.{o_name}", out.transpose(0, 1).reshape(queries.shape[0], -1))

    # --- whole layers --------------------------------------------------------------------
    def layer(self, stack: str, i: int, x: torch.Tensor,
              encoder: torch.Tensor | None = None, positional: int | None = None
              ) -> torch.Tensor:
        """Layer `i` of `stack` on one row: x [n, d] (encoder [m, d] for the decoder).

        positional: how many leading tokens of an encoder row are prompt or text (VL-T5
        semantics: only they carry relative positions); None: all of them.
        """
        if self.lm_type == "t5":
            return self._t5_block(stack, i, x, encoder, positional)
        return self._bart_layer(stack, i, x, encoder)

    def _t5_bias(self, stack: str, n: int, m: int, positional: int | None = None
                 ) -> torch.Tensor:
        """[heads, n, m]; with `positional` = p and VL-T5 semantics: compute_bias(p, p) in
        the top-left corner and zeros elsewhere (VL-T5's `text_position_bias`)."""
        first = getattr(self.backbone.lm, stack).block[0].layer[0].SelfAttention
        if positional is None or not self.papers or stack != "encoder":
            return first.compute_bias(n, m)[0]
        bias = torch.zeros(self.heads, n, m)
        bias[:, :positional, :positional] = first.compute_bias(positional, positional)[0]
        return bias

    def _t5_block(self, stack: str, i: int, x: torch.Tensor, encoder: torch.Tensor | None,
                  positional: int | None = None) -> torch.Tensor:
        """Pre-LN: h = x + A(MHA(LN x)); h = h + A(MHA(LN h, enc)); h + A(FFN(LN h))."""
        pre, pos = f"lm.{stack}.block.{i}.layer", f"{stack}.{i}"
        decoder = stack == "decoder"
        normed = self.layer_norm(f"{pre}.0.layer_norm", x)
        attended = self.attention(f"{pre}.0.SelfAttention", f"{pos}.self_attn", normed, normed,
                                  decoder, self._t5_bias(stack, len(x), len(x), positional))
        h = x + self.adapter(f"{pos}.self_attn", normed, attended)
        if decoder:
            normed = self.layer_norm(f"{pre}.1.layer_norm", h)
            attended = self.attention(f"{pre}.1.EncDecAttention", f"{pos}.cross_attn", normed,
                                      encoder, False, None)
            h = h + self.adapter(f"{pos}.cross_attn", normed, attended)
        ffn = f"{pre}.{2 if decoder else 1}"
        normed = self.layer_norm(f"{ffn}.layer_norm", h)
        act = ACTIVATION[self.backbone.lm.config.feed_forward_proj]
        out = self.linear(f"{ffn}.DenseReluDense.wo",
                          act(self.linear(f"{ffn}.DenseReluDense.wi", normed)))
        return h + self.adapter(f"{pos}.ffn", normed, out)

    def _bart_layer(self, stack: str, i: int, x: torch.Tensor, encoder: torch.Tensor | None
                    ) -> torch.Tensor:
        """Post-LN: h = LN(x + A(MHA(x))); h = LN(h + A(MHA(h, enc))); LN(h + A(FFN(h)))."""
        pre, pos = f"lm.model.{stack}.layers.{i}", f"{stack}.{i}"
        decoder = stack == "decoder"
        attended = self.attention(f"{pre}.self_attn", f"{pos}.self_attn", x, x, decoder, None)
        h = self.layer_norm(f"{pre}.self_attn_layer_norm",
                            x + self.adapter(f"{pos}.self_attn", x, attended))
        if decoder:
            attended = self.attention(f"{pre}.encoder_attn", f"{pos}.cross_attn", h, encoder,
                                      False, None)
            h = self.layer_norm(f"{pre}.encoder_attn_layer_norm",
                                h + self.adapter(f"{pos}.cross_attn", h, attended))
        act = ACTIVATION[self.backbone.lm.config.activation_function]
        out = self.linear(f"{pre}.fc2", act(self.linear(f"{pre}.fc1", h)))
        return self.layer_norm(f"{pre}.final_layer_norm",
                               h + self.adapter(f"{pos}.ffn", h, out))

    # --- encoder input -----------------------------------------------------------------
    def visual(self, features: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """VL-T5's projection, no boxes: LN(feat W^T + b) + LN(0 W^T + b) + order_emb[order]
        (+ E[vocab - 1 - j] for the j-th token of its image, VL-T5 semantics); Florence-2's
        identity (its projector is part of the tower): the features as given."""
        if self.backbone.config.visual == "identity":
            return features
        boxes = features.new_zeros(features.shape[0], self.backbone.visual.box_dim)
        feat = self.layer_norm("visual.feat_norm", self.linear("visual.feat_linear", features))
        box = self.layer_norm("visual.box_norm", self.linear("visual.box_linear", boxes))
        out = feat + box + self.embedding("visual.image_order", order)
        if self.papers:
            table = self.backbone.lm.get_input_embeddings().weight
            seen: dict[int, int] = {}
            for t, image in enumerate(order.tolist()):
                j = seen.get(image, 0)
                seen[image] = j + 1
                out[t] = out[t] + table[table.shape[0] - 1 - j]
        return out

    def encoder_input(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """[prompt ; text ; visual] (study Eq. 2; VL-T5: visual tokens follow the text), or
        [prompt ; visual ; text] on Florence-2 (its processor puts the image tokens first)."""
        prompt = self.weights.prompt
        pieces = [visual, text] if self.backbone.config.visual_position == "before_text" \
            else [text, visual]
        return torch.cat(pieces if prompt is None else [prompt, *pieces])

    def encoder(self, text_ids: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """The encoder's output [n, d] for one row: text_ids [t] long, visual [v, d] (the
        projected visual tokens), the set's prompt before the text (the text-first layout:
        T5 / BART, plain or the papers' semantics)."""
        embedding = self.backbone.lm.get_input_embeddings()
        text = embedding.weight[text_ids] * getattr(embedding, "embed_scale", 1.0)
        prompt = self.weights.prompt if self.weights.prompt is not None else text[:0]
        x = torch.cat([prompt, text, visual])
        positional = len(prompt) + len(text)
        if self.lm_type == "t5":
            for i in range(self.backbone.lm.config.num_layers):
                x = self._t5_block("encoder", i, x, None, positional)
            return self.layer_norm("lm.encoder.final_layer_norm", x)
        x = self._bart_embed(prompt, text, visual)
        for i in range(self.backbone.lm.config.encoder_layers):
            x = self._bart_layer("encoder", i, x, None)
        return x

    def _bart_embed(self, prompt: torch.Tensor, text: torch.Tensor, visual: torch.Tensor
                    ) -> torch.Tensor:
        """BART's encoder embedding: LN_emb(x + P[position + 2]); VL-BART: text positions
        0.. from the first text token, prompt and visual tokens without one, visual tokens
        not normalised."""
        table = self.tensor("lm.model.encoder.embed_positions.weight")
        norm = "lm.model.encoder.layernorm_embedding"
        if not self.papers:
            x = torch.cat([prompt, text, visual])
            return self.layer_norm(norm, x + table[torch.arange(len(x)) + 2])
        text = text + table[torch.arange(len(text)) + 2]
        return torch.cat([self.layer_norm(norm, torch.cat([prompt, text])), visual])
