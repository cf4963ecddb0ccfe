"""The base model (transformers' `MMGroundingDinoModel` / `GroundingDinoModel`, the `model.` prefix): image + prompt
-> features -> fusion encoder -> two-stage proposals -> decoder, without the detection heads.

Same config and state-dict keys as transformers'; the Swin backbone, the BERT text encoder and the position
embeddings are transformers' own modules. What the fast path skips: the per-pixel class logits and boxes before the
top-k (the reduced `contrastive_max` form ranks the pixels, and only the top-k proposals get boxes; ask with
`output_proposal_logits=True`), per-layer mask and position recomputation.
"""

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GroundingDinoConfig
from transformers.models.mm_grounding_dino import modeling_mm_grounding_dino as mm_reference

from . import weights
from .features import Context, ImageFeatures, LevelTable, PromptFeatures, phrase_attention, valid_ratios_of
from .layers import ContrastiveHead, Decoder, Encoder, MLPHead, box_dtype, sine_embedding
from .pretrained import GroundingDinoPreTrainedModel


@dataclasses.dataclass
class Pass:
    """Everything one forward computes up to the detection heads, by name."""

    prompt: PromptFeatures  # expanded to the image batch
    ctx: Context
    memory: torch.Tensor  # (B, S, C) the encoder's vision output
    text_memory: torch.Tensor  # (B, T, C) the encoder's text output
    vision_states: list
    text_states: list
    reference_points: torch.Tensor  # (B, Q, 4) float32 at least (box_dtype), the proposals' boxes (detached)
    encoder_logits: torch.Tensor  # (B, Q, max_text_len) the proposals' phrase logits (the encoder loss's)
    proposal_outputs: dict  # enc_outputs_class / enc_outputs_coord_logits when asked
    normed: torch.Tensor  # (B, layers, Q, C) every decoder layer's normed output
    references: torch.Tensor  # (B, layers, Q, 4) the boxes every layer refined (box_dtype)
    decoder_states: list

    def fields(self, output_hidden_states):
        """The base model's output fields (transformers' names)."""
        last = self.normed[:, -1]
        return dict(
            last_hidden_state=last,
            init_reference_points=self.reference_points.to(last.dtype),
            intermediate_hidden_states=self.normed,
            intermediate_reference_points=self.references.to(last.dtype),
            decoder_hidden_states=tuple(self.decoder_states) if output_hidden_states else None,
            encoder_last_hidden_state_vision=self.memory,
            encoder_last_hidden_state_text=self.text_memory,
            encoder_vision_hidden_states=tuple(self.vision_states) if output_hidden_states else None,
            encoder_text_hidden_states=tuple(self.text_states) if output_hidden_states else None,
            encoder_logits=self.encoder_logits,
            encoder_pred_boxes=self.reference_points.to(last.dtype),
            **self.proposal_outputs,
        )


class MMGroundingDinoModel(GroundingDinoPreTrainedModel):
    """mmgdino's base model: transformers' `MMGroundingDinoModel` (also LLMDet and Grounding DINO checkpoints),
    the same outputs, on mmgdino's layers and operators. Attention maps (`output_attentions=True`) come from the
    slower path of `attentions.py`."""

    def __init__(self, config):
        super().__init__(config)
        d = config.d_model
        conv_encoder = mm_reference.MMGroundingDinoConvEncoder(config)
        self.backbone = mm_reference.MMGroundingDinoConvModel(
            conv_encoder, mm_reference.build_position_encoding(config)
        )
        channels = list(conv_encoder.intermediate_channel_sizes)
        projections = [nn.Sequential(nn.Conv2d(c, d, kernel_size=1), nn.GroupNorm(32, d)) for c in channels]
        in_channels = channels[-1]
        for _ in range(config.num_feature_levels - len(channels)):
            projections.append(
                nn.Sequential(nn.Conv2d(in_channels, d, kernel_size=3, stride=2, padding=1), nn.GroupNorm(32, d))
            )
            in_channels = d
        self.input_proj_vision = nn.ModuleList(projections)
        self.text_backbone = AutoModel.from_config(config.text_config, add_pooling_layer=False)
        self.text_projection = nn.Linear(config.text_config.hidden_size, d)
        if config.embedding_init_target:
            self.query_position_embeddings = nn.Embedding(config.num_queries, d)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.level_embed = nn.Parameter(torch.zeros(config.num_feature_levels, d))
        self.enc_output = nn.Linear(d, d)
        self.enc_output_norm = nn.LayerNorm(d, config.layer_norm_eps)
        self.encoder_output_bbox_embed = MLPHead(d, d, 4, 3)
        self.encoder_output_class_embed = ContrastiveHead(config, with_bias=self.family == "mm-grounding-dino")
        self.register_buffer("special_tokens", torch.tensor(weights.SPECIAL_TOKENS), persistent=False)
        self.post_init()

    def freeze_backbone(self):
        for param in self.backbone.conv_encoder.model.parameters():
            param.requires_grad_(False)

    def unfreeze_backbone(self):
        for param in self.backbone.conv_encoder.model.parameters():
            param.requires_grad_(True)

    # ------------------------------------------------------------------ forward: the data path

    def forward(self, pixel_values=None, input_ids=None, token_type_ids=None, attention_mask=None, pixel_mask=None,
                encoder_outputs=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                output_proposal_logits=False, prompt_features=None, image_features=None, **unused):  # fmt: skip
        """transformers' arguments (unset flags read the config, as there), plus `prompt_features` /
        `image_features` (from `encode_prompt` / `encode_image`) in place of the text and image inputs, and
        `output_proposal_logits` (the all-pixel `enc_outputs_class` / `enc_outputs_coord_logits`)."""
        output_attentions, output_hidden_states, return_dict = self.resolve_flags(
            output_attentions, output_hidden_states, return_dict, encoder_outputs
        )
        if output_attentions:
            from .attentions import run_base_model

            output = run_base_model(self, pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask,
                                    output_hidden_states, prompt_features, image_features)  # fmt: skip
        else:
            run = self.run(pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask, output_hidden_states,
                           output_proposal_logits, prompt_features, image_features)  # fmt: skip
            output = output_class(self.family, base=True)(**run.fields(output_hidden_states))
        return output if return_dict else output.to_tuple()

    def run(self, pixel_values, input_ids, token_type_ids=None, attention_mask=None, pixel_mask=None,
            output_hidden_states=False, output_proposal_logits=False, prompt_features=None,
            image_features=None):  # fmt: skip
        """One pass up to the detection heads: a `Pass`."""
        if prompt_features is None:
            prompt_features = self.encode_prompt(input_ids, token_type_ids, attention_mask)
        if image_features is None:
            image_features = self.encode_image(pixel_values, pixel_mask)
        prompt = prompt_features.expand(image_features.batch)
        ctx = Context.of(image_features, prompt)
        memory, text_memory, vision_states, text_states = self.encoder(
            image_features.vision, prompt.text, ctx, output_hidden_states
        )
        queries, reference_points, encoder_logits, proposal_outputs = self.propose(
            memory, text_memory, prompt.text, ctx, output_proposal_logits
        )
        normed, references, decoder_states = self.decoder(
            queries, reference_points, memory, text_memory, ctx, output_hidden_states
        )
        return Pass(prompt, ctx, memory, text_memory, vision_states, text_states, reference_points, encoder_logits,
                    proposal_outputs, normed, references, decoder_states)  # fmt: skip

    def encode_prompt(self, input_ids, token_type_ids=None, attention_mask=None):
        """The text backbone over a batch of prompts: `PromptFeatures`."""
        max_len = self.config.max_text_len
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        input_ids, token_type_ids = input_ids[:, :max_len], token_type_ids[:, :max_len]
        text_keep = attention_mask[:, :max_len].bool()
        phrase_keep, position_ids = phrase_attention(input_ids, self.special_tokens)
        text = self.text_backbone(
            input_ids, phrase_keep[:, None], token_type_ids, position_ids, return_dict=True
        ).last_hidden_state
        text = self.text_projection(text)
        text_pos = sine_embedding(position_ids[..., None].to(text.dtype), self.config.d_model)
        return PromptFeatures(text, text_keep, text_pos, phrase_keep[:, None], input_ids)

    def encode_image(self, pixel_values, pixel_mask=None):
        """Backbone features of every level, projected to d_model and flattened into one pixel sequence:
        `ImageFeatures`."""
        config = self.config
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones((batch, height, width), dtype=torch.long, device=pixel_values.device)
        features, positions = self.backbone(pixel_values, pixel_mask)
        maps = [proj(f) for proj, (f, _) in zip(self.input_proj_vision, features)]
        masks = [m for _, m in features]
        for level in range(len(maps), config.num_feature_levels):
            source = self.input_proj_vision[level](features[-1][0] if level == len(features) else maps[-1])
            mask = F.interpolate(pixel_mask[None].float(), size=source.shape[-2:]).to(torch.bool)[0]
            maps.append(source)
            masks.append(mask)
            positions.append(self.backbone.position_embedding(source, mask).to(source.dtype))
        shapes = [tuple(m.shape[-2:]) for m in maps]
        vision = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        vision_keep = torch.cat([m.flatten(1) for m in masks], 1)
        vision_pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1) for i, p in enumerate(positions)], 1
        )
        levels = LevelTable.build(shapes, vision.device, vision.dtype)
        valid_ratios = torch.stack([valid_ratios_of(m, vision.dtype) for m in masks], 1)
        return ImageFeatures(vision, vision_keep, vision_pos, levels, valid_ratios)

    def pixel_proposals(self, memory, ctx):
        """Every pixel's proposal box (inverse-sigmoid, in box_dtype; inf where padded or too near the border) and
        its normalized query feature."""
        boxes, start, dtype = [], 0, box_dtype(memory.dtype)
        for level, (height, width) in enumerate(ctx.levels.shapes):
            keep = ctx.vision_keep[:, start : start + height * width].view(-1, height, width)
            start += height * width
            valid_h = keep[:, :, 0].sum(1)
            valid_w = keep[:, 0, :].sum(1)
            ys, xs = torch.meshgrid(
                torch.arange(height, dtype=dtype, device=memory.device),
                torch.arange(width, dtype=dtype, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack([xs, ys], -1)[None] + 0.5
            grid = grid / torch.stack([valid_w, valid_h], -1).view(-1, 1, 1, 2)
            size = torch.full_like(grid, 0.05 * 2.0**level)
            boxes.append(torch.cat([grid, size], -1).flatten(1, 2))
        boxes = torch.cat(boxes, 1)
        usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True) & ctx.vision_keep[..., None]
        box_logits = torch.log(boxes / (1 - boxes)).masked_fill(~usable, float("inf"))
        object_query = self.enc_output_norm(self.enc_output(memory.masked_fill(~usable, 0.0)))
        return object_query, box_logits

    def propose(self, memory, text_memory, prompt_text, ctx, output_proposal_logits=False):
        """Two-stage query selection: the top num_queries pixels by their best phrase logit. Returns the decoder's
        queries, their boxes (box_dtype, detached as in transformers: the decoder's gradients stop there), the
        proposals' phrase logits against the prompt before the encoder (what transformers' encoder loss scores),
        and the all-pixel outputs when asked."""
        config = self.config
        object_query, box_logits = self.pixel_proposals(memory, ctx)
        head = self.encoder_output_class_embed
        top = torch.topk(head.best(object_query, text_memory, ctx.text_keep), config.num_queries, dim=1).indices
        chosen = torch.gather(object_query, 1, top[..., None].expand(-1, -1, object_query.shape[-1])).detach()
        chosen_boxes = torch.gather(box_logits, 1, top[..., None].expand(-1, -1, 4))
        reference_points = (self.encoder_output_bbox_embed(chosen).to(chosen_boxes) + chosen_boxes).sigmoid().detach()
        if config.embedding_init_target:
            queries = self.query_position_embeddings.weight[None].expand(memory.shape[0], -1, -1)
        else:
            queries = chosen
        encoder_logits = head(queries, prompt_text, ctx.text_keep)
        extra = {}
        if output_proposal_logits:
            extra["enc_outputs_class"] = head(object_query, text_memory, ctx.text_keep)
            extra["enc_outputs_coord_logits"] = (self.encoder_output_bbox_embed(object_query) + box_logits).to(
                object_query.dtype
            )
        return queries, reference_points, encoder_logits, extra


class GroundingDinoModel(MMGroundingDinoModel):
    """The same base model under transformers' Grounding DINO class name and config class."""

    config_class = GroundingDinoConfig


def reference_module(family):
    """transformers' modeling module of a family (its output classes, label maps, modules)."""
    if family == "grounding-dino":
        from transformers.models.grounding_dino import modeling_grounding_dino

        return modeling_grounding_dino
    return mm_reference


def output_class(family, base=False):
    """transformers' output class of a family: the detection output, or the base model's (base=True)."""
    prefix = "MMGroundingDino" if family == "mm-grounding-dino" else "GroundingDino"
    return getattr(reference_module(family), f"{prefix}{'ModelOutput' if base else 'ObjectDetectionOutput'}")
