"""The transformer layers of MM Grounding DINO / Grounding DINO, written around `mmgdino.ops`.

Attribute names follow transformers' modules one to one, so a transformers state dict loads unchanged; the
forward passes are ours: masks arrive once in the form each attention wants (boolean, True = attend), SDPA
replaces the explicit score matrices, and the multi-scale deformable attention runs on our operator. In training
mode the layers apply transformers' dropouts (config.dropout, attention_dropout, activation_dropout,
fusion_dropout, fusion_droppath, text_enhancer_dropout) where transformers applies them; the encoder and decoder
layers are `GradientCheckpointingLayer`s, so `gradient_checkpointing_enable()` recomputes them in the backward.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .. import ops


def box_dtype(dtype):
    """Boxes and angles are computed in float32 at least (float64 in a float64 model): bfloat16 rounding of an
    inverse sigmoid would add up over the decoder's refinements."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dropout(x, p, training):
    """F.dropout, and nothing at all (not even a dispatched no-op) outside training: the inference path as lean
    as before dropout existed here."""
    return F.dropout(x, p, True) if training and p > 0 else x


def sine_embedding(coords, num_feats, temperature=10000):
    """Sinusoidal embedding of normalized coordinates (..., n) -> (..., n * num_feats), x and y swapped, as DETR
    orders them (y first). Computed in float32 at least, returned in the input's dtype."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    angles = coords.to(box_dtype(coords.dtype))[..., None] * (2 * math.pi) / dim_t  # (..., n, num_feats)
    emb = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    if coords.shape[-1] >= 2:
        emb = torch.cat([emb[..., 1:2, :], emb[..., 0:1, :], emb[..., 2:, :]], dim=-2)
    return emb.flatten(-2).to(coords.dtype)


def _heads(x, num_heads):
    """(B, L, E) -> (B, H, L, E/H) as a view: SDPA takes the strides as they are."""
    b, length, e = x.shape
    return x.view(b, length, num_heads, e // num_heads).transpose(1, 2)


def _merge_heads(x):
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class MLPHead(nn.Module):
    """Linear layers with ReLU between them (box heads, the decoder's reference-point head)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.relu_(layer(x))
        return self.layers[-1](x)


class ContrastiveHead(nn.Module):
    """Phrase logits (vision . text) * scale + bias. MM Grounding DINO and LLMDet learn a bias per head and scale
    by 1/sqrt(C); Grounding DINO has neither (scale 1, no parameter)."""

    def __init__(self, config, with_bias):
        super().__init__()
        self.max_text_len = config.max_text_len
        self.scale = (1.0 / config.d_model**0.5) if with_bias else 1.0
        if with_bias:
            self.bias = nn.Parameter(torch.tensor(0.0))
        else:
            self.bias = None

    def _bias(self):
        return 0.0 if self.bias is None else self.bias

    def forward(self, vision, text, text_keep):
        # Under autocast the two sides may arrive in different dtypes (a LayerNorm's float32, a Linear's bf16).
        return ops.contrastive_logits(
            vision, text.to(vision.dtype), text_keep, bias=self._bias(), scale=self.scale,
            max_text_len=self.max_text_len,
        )  # fmt: skip

    def best(self, vision, text, text_keep):
        return ops.contrastive_max(vision, text.to(vision.dtype), text_keep, bias=self._bias(), scale=self.scale)


class MultiheadAttention(nn.Module):
    """Projections named as transformers' MMGroundingDinoMultiheadAttention; attention through SDPA (its dropout
    on the attention probabilities is transformers' `attention_dropout`)."""

    def __init__(self, dim, num_heads, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, queries, keys, values, keep=None):
        """keep: bool, broadcastable to (B, H, Lq, Lk), True where a query may attend a key."""
        q, k, v = (
            _heads(proj(x), self.num_heads)
            for proj, x in ((self.query, queries), (self.key, keys), (self.value, values))
        )
        dropout = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout)
        return self.out_proj(_merge_heads(attended))


class MultiscaleDeformableAttention(nn.Module):
    def __init__(self, dim, num_heads, num_levels, num_points):
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, queries, values, value_keep, reference_points, levels):
        """queries (B, Q, C) with position embedding added; values (B, S, C); value_keep (B, S) bool;
        reference_points (B, Q, L, 2) normalized centers or (B, Q, L, 4) boxes; levels: a `LevelTable`."""
        b, q, _ = queries.shape
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(values).masked_fill_(~value_keep[..., None], 0.0)
        value = value.view(b, values.shape[1], h, -1)
        offsets = self.sampling_offsets(queries).view(b, q, h, lv, p, 2)
        weights = self.attention_weights(queries).view(b, q, h, lv * p).softmax(-1).view(b, q, h, lv, p)
        if reference_points.shape[-1] == 2:
            locations = reference_points[:, :, None, :, None, :] + offsets / levels.offset_normalizer
        else:
            centers, sizes = reference_points[:, :, None, :, None, :2], reference_points[:, :, None, :, None, 2:]
            locations = centers + offsets / p * sizes * 0.5
        # Under autocast the softmax and the float32 reference points come back float32; the operator takes one
        # dtype, value's.
        dtype = value.dtype
        out = ops.ms_deform_attn(value, levels.spatial_shapes, levels.level_start_index, locations.to(dtype),
                                 weights.to(dtype), level_shapes=levels.shapes)  # fmt: skip
        return self.output_proj(out)


class BiAttention(nn.Module):
    """Vision-to-text and text-to-vision cross attention of the fusion layer.

    The prompt has a handful of tokens and the image tens of thousands of pixels, so we fold the text side into
    the weights instead of projecting every pixel: the scores are vision @ (W_q^T K^T) per head, the vision
    output is P @ (V_text W_out^T), and the text side pools the normed pixels before their value projection
    (softmax rows sum to one, so the bias passes through). The same products, reassociated: three skinny matrix
    products over the pixels instead of three (pixels x 256 x 1024) projections.
    """

    def __init__(self, dim, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout  # on both attention probabilities, as transformers' fusion_dropout
        self.vision_proj = nn.Linear(dim, embed_dim)
        self.text_proj = nn.Linear(dim, embed_dim)
        self.values_vision_proj = nn.Linear(dim, embed_dim)
        self.values_text_proj = nn.Linear(dim, embed_dim)
        self.out_vision_proj = nn.Linear(embed_dim, dim)
        self.out_text_proj = nn.Linear(embed_dim, dim)

    def forward(self, vision, text, vision_keep, text_keep):
        b, n, c = vision.shape
        t, h = text.shape[1], self.num_heads
        hd = self.vision_proj.out_features // h
        scale = hd**-0.5
        text_keys = self.text_proj(text).view(b, t, h, hd)
        text_values = self.values_text_proj(text).view(b, t, h, hd)

        # scores[b, n, h, t] = (vision W_q,h^T + b_q,h) . key[b, t, h] * scale
        fold_w = torch.einsum("hdc,bthd->bcht", self.vision_proj.weight.view(h, hd, c), text_keys) * scale
        fold_b = torch.einsum("hd,bthd->bht", self.vision_proj.bias.view(h, hd), text_keys) * scale
        scores = torch.baddbmm(fold_b.reshape(b, 1, h * t), vision, fold_w.reshape(b, c, h * t)).view(b, n, h, t)

        to_text = scores.masked_fill(~text_keep[:, None, None, :], float("-inf")).softmax(-1)
        to_text = dropout(to_text, self.dropout, self.training)
        fold_out = torch.einsum("bthd,chd->bhtc", text_values, self.out_vision_proj.weight.view(c, h, hd))
        vision_out = torch.baddbmm(self.out_vision_proj.bias, to_text.view(b, n, h * t), fold_out.reshape(b, h * t, c))

        to_vision = scores.masked_fill(~vision_keep[:, :, None, None], float("-inf")).softmax(1)
        to_vision = dropout(to_vision, self.dropout, self.training)
        pooled = torch.bmm(to_vision.view(b, n, h * t).transpose(1, 2), vision).view(b, h, t, c)
        text_context = torch.einsum("bhtc,hdc->bthd", pooled, self.values_vision_proj.weight.view(h, hd, c))
        text_context = text_context + self.values_vision_proj.bias.view(h, hd)
        return vision_out, self.out_text_proj(text_context.reshape(b, t, h * hd))


def drop_path(x, p, training):
    """Stochastic depth: each sample's branch dropped with probability p (kept ones scaled by 1 / (1 - p))."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).add_(1 - p).floor_()
    return x / (1 - p) * keep


class FusionLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.layer_norm_vision = nn.LayerNorm(d, config.layer_norm_eps)
        self.layer_norm_text = nn.LayerNorm(d, config.layer_norm_eps)
        self.attn = BiAttention(d, config.encoder_ffn_dim // 2, config.encoder_attention_heads // 2,
                                config.fusion_dropout)  # fmt: skip
        self.vision_param = nn.Parameter(torch.full((d,), 1e-4))
        self.text_param = nn.Parameter(torch.full((d,), 1e-4))
        self.drop_path = config.fusion_droppath

    def forward(self, vision, text, vision_keep, text_keep):
        # The residual is taken after the layer norms, as in the original.
        vision = self.layer_norm_vision(vision)
        text = self.layer_norm_text(text)
        delta_vision, delta_text = self.attn(vision, text, vision_keep, text_keep)
        if self.training and self.drop_path > 0:
            return (vision + drop_path(self.vision_param * delta_vision, self.drop_path, True),
                    text + drop_path(self.text_param * delta_text, self.drop_path, True))  # fmt: skip
        return torch.addcmul(vision, self.vision_param, delta_vision), torch.addcmul(text, self.text_param, delta_text)


def feed_forward(x, fc1, fc2, norm, activation, chunk_rows=1024, dropouts=(0.0, 0.0), training=False):
    """norm(x + fc2(act(fc1(x)))), with dropout after the activation and after fc2 (dropouts) in training. On the
    CPU without autograd in row chunks: the (rows, ffn_dim) intermediate (8 MB for 1024 x 2048) stays in the
    last-level cache instead of being a fresh multi-hundred-megabyte buffer per layer (page faults and DRAM
    traffic): about 10% faster than 4096-row chunks, which were no faster than none (encoder FFN at 800x1333 on a
    2-core EPYC, 32 MB L3). A GPU prefers the one large product."""
    flat = x.reshape(-1, x.shape[-1])
    # Traced (compile, export) the one product: a row test on a symbolic size would become a guard on it.
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    # The chunks write into one output buffer (out=), which autograd cannot record.
    recording = torch.is_grad_enabled() and (x.requires_grad or fc1.weight.requires_grad)
    if training or recording or tracing or x.device.type != "cpu" or flat.shape[0] <= chunk_rows:
        hidden = dropout(activation(fc1(x)), dropouts[0], training)
        return norm(x + dropout(fc2(hidden), dropouts[1], training))
    out = torch.empty_like(flat)
    for start in range(0, flat.shape[0], chunk_rows):
        rows = flat[start : start + chunk_rows]
        torch.add(rows, fc2(activation(fc1(rows))), out=out[start : start + chunk_rows])
    return norm(out.view_as(x))


class FeedForwardSublayer:
    """For a layer that ends in the feed-forward sublayer: its fc1, fc2 (transformers' names, so checkpoints load)
    and activation, applied with the layer's norm and dropouts."""

    def add_feed_forward(self, d_model, ffn_dim, activation):
        self.fc1 = nn.Linear(d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d_model)
        self.activation = _activation(activation)

    def feed_forward(self, x, norm, dropouts):
        return feed_forward(x, self.fc1, self.fc2, norm, self.activation, dropouts=dropouts, training=self.training)


def _activation(name):
    if name == "relu":
        return torch.relu_
    return {"gelu": F.gelu, "silu": F.silu}[name]


class TextEnhancerLayer(FeedForwardSublayer, nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.self_attn = MultiheadAttention(d, config.encoder_attention_heads // 2, config.attention_dropout)
        self.add_feed_forward(d, config.encoder_ffn_dim // 2, config.activation_function)
        self.layer_norm_before = nn.LayerNorm(d, config.layer_norm_eps)
        self.layer_norm_after = nn.LayerNorm(d, config.layer_norm_eps)
        self.dropout = config.text_enhancer_dropout

    def forward(self, text, text_pos, phrase_keep):
        with_pos = text + text_pos
        attended = dropout(self.self_attn(with_pos, with_pos, text, phrase_keep), self.dropout, self.training)
        text = self.layer_norm_before(text + attended)
        return self.feed_forward(text, self.layer_norm_after, (self.dropout, self.dropout))


class DeformableLayer(FeedForwardSublayer, nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.self_attn = MultiscaleDeformableAttention(
            d, config.encoder_attention_heads, config.num_feature_levels, config.encoder_n_points
        )
        self.self_attn_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.add_feed_forward(d, config.encoder_ffn_dim, config.activation_function)
        self.final_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def forward(self, vision, vision_pos, vision_keep, reference_points, levels):
        attended = self.self_attn(vision + vision_pos, vision, vision_keep, reference_points, levels)
        vision = self.self_attn_layer_norm(vision + dropout(attended, self.dropout, self.training))
        vision = self.feed_forward(vision, self.final_layer_norm, (self.activation_dropout, self.dropout))
        if self.training and not torch.isfinite(vision).all():  # as transformers: overflow clamped, not propagated
            bound = torch.finfo(vision.dtype).max - 1000
            vision = vision.clamp(-bound, bound)
        return vision


class EncoderLayer(GradientCheckpointingLayer):
    def __init__(self, config):
        super().__init__()
        self.text_enhancer_layer = TextEnhancerLayer(config)
        self.fusion_layer = FusionLayer(config)
        self.deformable_layer = DeformableLayer(config)

    def forward(self, vision, text, vision_pos, ctx):
        """vision_pos (it carries the level embedding's gradient) is an argument of its own, not read from ctx:
        a checkpoint recomputes the layer from its tensor arguments."""
        vision, text = self.fusion_layer(vision, text, ctx.vision_keep, ctx.text_keep)
        text = self.text_enhancer_layer(text, ctx.text_pos, ctx.phrase_keep)
        vision = self.deformable_layer(vision, vision_pos, ctx.vision_keep, ctx.encoder_reference_points, ctx.levels)
        return vision, text


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, vision, text, ctx, collect_hidden_states=False):
        vision_states, text_states = [], []
        for layer in self.layers:
            if collect_hidden_states:
                vision_states.append(vision)
                text_states.append(text)
            vision, text = layer(vision, text, ctx.vision_pos, ctx)
        if collect_hidden_states:
            vision_states.append(vision)
            text_states.append(text)
        return vision, text, vision_states, text_states


class DecoderLayer(FeedForwardSublayer, GradientCheckpointingLayer):
    def __init__(self, config):
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = MultiheadAttention(d, heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.encoder_attn_text = MultiheadAttention(d, heads, config.attention_dropout)
        self.encoder_attn_text_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.encoder_attn = MultiscaleDeformableAttention(d, heads, config.num_feature_levels, config.decoder_n_points)
        self.encoder_attn_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.add_feed_forward(d, config.decoder_ffn_dim, config.activation_function)
        self.final_layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def forward(self, queries, query_pos, reference_points, memory, text_memory, ctx):
        def drop(x):
            return dropout(x, self.dropout, self.training)

        with_pos = queries + query_pos
        queries = self.self_attn_layer_norm(queries + drop(self.self_attn(with_pos, with_pos, queries)))
        attended = self.encoder_attn_text(queries + query_pos, text_memory, text_memory, ctx.text_keep[:, None, None])
        queries = self.encoder_attn_text_layer_norm(queries + drop(attended))
        attended = self.encoder_attn(queries + query_pos, memory, ctx.vision_keep, reference_points, ctx.levels)
        queries = self.encoder_attn_layer_norm(queries + drop(attended))
        return self.feed_forward(queries, self.final_layer_norm, (self.activation_dropout, self.dropout))


class Decoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.d_model
        self.layer_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.decoder_layers))
        self.reference_points_head = MLPHead(config.query_dim // 2 * d, d, d, 2)
        self.bbox_embed = None  # the detection heads' box MLPs, shared (tied), set by the detection model
        self.class_embed = None  # its phrase heads (MM Grounding DINO), kept here as transformers keeps them
        self.d_model = d

    def forward(self, queries, reference_points, memory, text_memory, ctx, collect_hidden_states=False):
        """reference_points: (B, Q, 4) boxes in [0, 1], refined after every layer. Returns the normed hidden
        states of every layer (B, layers, Q, C) and the reference points each layer produced.

        The boxes stay float32 (at least) through the refinement whatever the model's dtype: in bfloat16 every
        layer's rounding of the inverse sigmoid would add up over the layers (the layers see them in their dtype). Each
        refined box is detached, as in transformers: a layer's box gradient stops at its own head."""
        dtype = queries.dtype
        boxes = box_dtype(dtype)
        box_scale = torch.cat([ctx.valid_ratios, ctx.valid_ratios], -1)[:, None].to(boxes)  # (B, 1, L, 4)
        reference_points = reference_points.to(boxes)
        normed, references, hidden = [], [], []
        for idx, layer in enumerate(self.layers):
            per_level = reference_points[:, :, None] * box_scale
            query_pos = self.reference_points_head(sine_embedding(per_level[:, :, 0], self.d_model // 2).to(dtype))
            if collect_hidden_states:
                hidden.append(self.layer_norm(queries))
            queries = layer(queries, query_pos, per_level.to(dtype), memory, text_memory, ctx)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[idx](queries)
                refined = delta.to(boxes) + torch.special.logit(reference_points, eps=1e-5)
                reference_points = refined.sigmoid().detach()
            normed.append(self.layer_norm(queries))
            references.append(reference_points)
        if collect_hidden_states:
            hidden.append(normed[-1])
        return torch.stack(normed, 1), torch.stack(references, 1), hidden
