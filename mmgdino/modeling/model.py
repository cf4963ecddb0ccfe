"""MM Grounding DINO (and LLMDet, Grounding DINO) for inference: image + prompt -> features -> encoder ->
two-stage proposals -> decoder -> boxes and phrase logits.

Same config and state-dict keys as transformers' `MMGroundingDinoForObjectDetection` /
`GroundingDinoForObjectDetection`; the Swin backbone, the BERT text encoder and the processor are transformers'
own. What we skip on the way: the loss-only encoder logits, the class and box heads of the intermediate decoder
layers, the box head over every pixel (only the top-k proposals need boxes), per-layer mask and position
recomputation, and the (B, pixels, 256) padded logits before the top-k (the reduced `contrastive_max` form).
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import weights
from .features import Context, ImageFeatures, LevelTable, PromptFeatures, phrase_attention, valid_ratios_of
from .layers import ContrastiveHead, Decoder, Encoder, MLPHead, sine_embedding

SPECIAL_TOKENS = (101, 102, 1012, 1029)  # [CLS], [SEP], ".", "?" in BERT's vocabulary: phrase boundaries


class GroundingDinoCore(nn.Module):
    """transformers' `MMGroundingDinoModel` / `GroundingDinoModel` parameters (the `model.` prefix)."""

    def __init__(self, config, family):
        super().__init__()
        from transformers import AutoModel
        from transformers.models.mm_grounding_dino import modeling_mm_grounding_dino as reference

        if not config.two_stage:
            raise NotImplementedError("mmgdino implements the two-stage models (every released checkpoint is)")
        d = config.d_model
        conv_encoder = reference.MMGroundingDinoConvEncoder(config)
        self.backbone = reference.MMGroundingDinoConvModel(conv_encoder, reference.build_position_encoding(config))
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
        self.encoder_output_class_embed = ContrastiveHead(config, with_bias=family == "mm-grounding-dino")
        self.register_buffer("special_tokens", torch.tensor(SPECIAL_TOKENS), persistent=False)


class _FamilyAttribute:
    """A class attribute read from transformers' class of the model family (its config class, tied-weight keys),
    imported only when asked; on an instance, the instance's family."""

    def __init__(self, name):
        self.name = name

    def __get__(self, instance, owner):
        family = instance.family if instance is not None else owner.FAMILY
        return getattr(weights.transformers_class_of(family), self.name)


class MMGroundingDinoForObjectDetection(nn.Module):
    """Inference-first MM Grounding DINO / LLMDet / Grounding DINO.

    Build it with `from_pretrained(hub id or local dir)`, `from_config(config)` or `from_transformers(model)`;
    call it like transformers' model (`pixel_values`, `input_ids`, `attention_mask`, `pixel_mask`, ...). The
    output is transformers' own output class, so `processor.post_process_grounded_object_detection` takes it.
    Not computed unless asked: `enc_outputs_class` / `enc_outputs_coord_logits` (pass
    `output_proposal_logits=True`), `encoder_logits` (loss only). Attentions and losses are not computed (asking
    raises): mmgdino's fused layers never form attention maps, and training goes through transformers' model
    (`mmgdino.patch(model)` speeds it up).

    It has the PreTrainedModel interface that transformers' tests, pipelines and Auto classes use (from_pretrained
    with transformers' arguments, save_pretrained, config flags, num_parameters, ...), without being a
    PreTrainedModel: loading and saving go through transformers' own class, so every argument means what it
    means there and the files are the ones transformers writes, while our module tree (heads shared by identity,
    fused layers) is not run through initialization and tying rules written for transformers' tree.
    """

    FAMILY = "mm-grounding-dino"
    main_input_name = "pixel_values"
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _keep_in_fp32_modules = None
    _no_split_modules = None
    config_class = _FamilyAttribute("config_class")
    _tied_weights_keys = _FamilyAttribute("_tied_weights_keys")

    def __init__(self, config):
        super().__init__()
        family = config.model_type
        if family not in ("mm-grounding-dino", "grounding-dino"):
            raise ValueError(f"expected an MM Grounding DINO or Grounding DINO config, got model_type={family!r}")
        self.config = config
        self.family = family
        self.name_or_path = ""
        with_bias = family == "mm-grounding-dino"
        self.model = GroundingDinoCore(config, family)
        layers = config.decoder_layers

        def heads(make, shared):
            # Shared heads are one module repeated: the tying transformers applies on load, kept by identity.
            if shared:
                head = make()
                return nn.ModuleList([head] * layers)
            return nn.ModuleList(make() for _ in range(layers))

        d = config.d_model
        self.class_embed = heads(
            lambda: ContrastiveHead(config, with_bias), with_bias and config.decoder_cls_embed_share
        )
        self.bbox_embed = heads(lambda: MLPHead(d, d, 4, 3), config.decoder_bbox_embed_share)
        self.model.decoder.bbox_embed = self.bbox_embed
        if with_bias:
            self.model.decoder.class_embed = self.class_embed

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config, dtype=None, torch_dtype=None, **unused):
        model = cls(config)
        weights.initialize(model)
        dtype = dtype or torch_dtype
        return (model.to(dtype) if isinstance(dtype, torch.dtype) else model).eval()

    _from_config = from_config  # the name transformers' Auto classes and tests call

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *model_args, dtype=None, torch_dtype=None,
                        device=None, **kwargs):  # fmt: skip
        """transformers' from_pretrained (config=, state_dict=, output_loading_info=, revision=, ...; `torch_dtype`
        is the old name of `dtype`), plus `device`. Errors are ModelLoadError with one line."""
        return weights.load_pretrained(
            cls, pretrained_model_name_or_path, *model_args, dtype=dtype or torch_dtype, device=device, **kwargs
        )

    @classmethod
    def from_transformers(cls, hf_model):
        param = next(hf_model.parameters())
        model = cls(hf_model.config)
        weights.load_state_dict(model, hf_model.state_dict())
        model.name_or_path = getattr(hf_model, "name_or_path", "")
        return model.to(device=param.device, dtype=param.dtype).eval()

    def save_pretrained(self, save_directory, **kwargs):
        weights.save_pretrained(self, save_directory, **kwargs)

    def init_weights(self):
        weights.initialize(self)

    post_init = init_weights

    def tie_weights(self, *args, **kwargs):
        """Shared heads are one module (see __init__): nothing to tie."""

    @classmethod
    def can_generate(cls):
        return False

    def get_input_embeddings(self):
        return self.model.text_backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.text_backbone.set_input_embeddings(value)

    def get_output_embeddings(self):
        return None

    def num_parameters(self, only_trainable=False, exclude_embeddings=False):
        embeddings = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for p in self.parameters()  # each shared parameter once
            if (p.requires_grad or not only_trainable) and not (exclude_embeddings and id(p) in embeddings)
        )

    def gradient_checkpointing_enable(self, *args, **kwargs):
        raise NotImplementedError(
            "mmgdino's model is for inference; train transformers' model (mmgdino.patch(model) speeds it up)"
        )

    @property
    def device(self):
        return self.model.level_embed.device

    @property
    def dtype(self):
        return self.model.level_embed.dtype

    # ------------------------------------------------------------------ forward: the data path

    def forward(
        self,
        pixel_values=None,
        input_ids=None,
        token_type_ids=None,
        attention_mask=None,
        pixel_mask=None,
        encoder_outputs=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        labels=None,
        output_proposal_logits=False,
        prompt_features=None,
        image_features=None,
        **unused,
    ):
        """transformers' arguments (unset flags read the config, as there), plus: `prompt_features` (from
        `encode_prompt`) and `image_features` (from `encode_image`) replace the text and image inputs when given:
        a prompt reused across images, or images reused across prompt chunks, is encoded once."""
        config = self.config
        if labels is not None:
            raise NotImplementedError(
                "labels: mmgdino's model is for inference (no losses); train transformers' model, which "
                "mmgdino.patch(model) speeds up"
            )
        if encoder_outputs is not None:
            raise NotImplementedError("encoder_outputs: pass image_features= / prompt_features= instead")
        if output_attentions if output_attentions is not None else config.output_attentions:
            raise NotImplementedError(
                "output_attentions: mmgdino's fused layers never form attention maps; use transformers' model "
                "(optionally mmgdino.patch(model)) to inspect them"
            )
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        return_dict = return_dict if return_dict is not None else config.return_dict
        if prompt_features is None:
            prompt_features = self.encode_prompt(input_ids, token_type_ids, attention_mask)
        if image_features is None:
            image_features = self.encode_image(pixel_values, pixel_mask)
        prompt = prompt_features.expand(image_features.batch)
        ctx = Context.of(image_features, prompt)
        memory, text_memory, vision_states, text_states = self.model.encoder(
            image_features.vision, prompt.text, ctx, output_hidden_states
        )
        queries, reference_points, proposal_outputs = self.propose(memory, text_memory, ctx, output_proposal_logits)
        logits, pred_boxes, normed, references, decoder_states = self.decode(
            queries, reference_points, memory, text_memory, ctx, output_hidden_states
        )
        last = normed[:, -1]
        fields = dict(
            logits=logits,
            pred_boxes=pred_boxes,
            last_hidden_state=last,
            init_reference_points=reference_points.to(last.dtype),
            intermediate_hidden_states=normed,
            intermediate_reference_points=references,
            decoder_hidden_states=tuple(decoder_states) if output_hidden_states else None,
            encoder_last_hidden_state_vision=memory,
            encoder_last_hidden_state_text=text_memory,
            encoder_vision_hidden_states=tuple(vision_states) if output_hidden_states else None,
            encoder_text_hidden_states=tuple(text_states) if output_hidden_states else None,
            encoder_pred_boxes=reference_points,
            input_ids=prompt.input_ids,
            **proposal_outputs,
        )
        output = self._output_class()(**fields)
        return output if return_dict else output.to_tuple()

    def encode_prompt(self, input_ids, token_type_ids=None, attention_mask=None):
        """The text backbone over a batch of prompts: `PromptFeatures`."""
        core, max_len = self.model, self.config.max_text_len
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        input_ids, token_type_ids = input_ids[:, :max_len], token_type_ids[:, :max_len]
        text_keep = attention_mask[:, :max_len].bool()
        phrase_keep, position_ids = phrase_attention(input_ids, core.special_tokens)
        text = core.text_backbone(
            input_ids, phrase_keep[:, None], token_type_ids, position_ids, return_dict=True
        ).last_hidden_state
        text = core.text_projection(text)
        text_pos = sine_embedding(position_ids[..., None].to(text.dtype), self.config.d_model)
        return PromptFeatures(text, text_keep, text_pos, phrase_keep[:, None], input_ids)

    def encode_image(self, pixel_values, pixel_mask=None):
        """Backbone features of every level, projected to d_model and flattened into one pixel sequence:
        `ImageFeatures`."""
        core, config = self.model, self.config
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones((batch, height, width), dtype=torch.long, device=pixel_values.device)
        features, positions = core.backbone(pixel_values, pixel_mask)
        maps = [proj(f) for proj, (f, _) in zip(core.input_proj_vision, features)]
        masks = [m for _, m in features]
        for level in range(len(maps), config.num_feature_levels):
            source = core.input_proj_vision[level](features[-1][0] if level == len(features) else maps[-1])
            mask = F.interpolate(pixel_mask[None].float(), size=source.shape[-2:]).to(torch.bool)[0]
            maps.append(source)
            masks.append(mask)
            positions.append(core.backbone.position_embedding(source, mask).to(source.dtype))
        shapes = [tuple(m.shape[-2:]) for m in maps]
        vision = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        vision_keep = torch.cat([m.flatten(1) for m in masks], 1)
        vision_pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + core.level_embed[i].view(1, 1, -1) for i, p in enumerate(positions)], 1
        )
        levels = LevelTable.build(shapes, vision.device, vision.dtype)
        valid_ratios = torch.stack([valid_ratios_of(m, vision.dtype) for m in masks], 1)
        return ImageFeatures(vision, vision_keep, vision_pos, levels, valid_ratios)

    def _pixel_proposals(self, memory, ctx):
        """Every pixel's proposal box (inverse-sigmoid, float32 in any model dtype; inf where padded or too near
        the border) and its normalized query feature."""
        boxes, start = [], 0
        for level, (height, width) in enumerate(ctx.levels.shapes):
            keep = ctx.vision_keep[:, start : start + height * width].view(-1, height, width)
            start += height * width
            valid_h = keep[:, :, 0].sum(1)
            valid_w = keep[:, 0, :].sum(1)
            ys, xs = torch.meshgrid(
                torch.arange(height, dtype=torch.float32, device=memory.device),
                torch.arange(width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack([xs, ys], -1)[None] + 0.5
            grid = grid / torch.stack([valid_w, valid_h], -1).view(-1, 1, 1, 2)
            size = torch.full_like(grid, 0.05 * 2.0**level)
            boxes.append(torch.cat([grid, size], -1).flatten(1, 2))
        boxes = torch.cat(boxes, 1)
        usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True) & ctx.vision_keep[..., None]
        box_logits = torch.log(boxes / (1 - boxes)).masked_fill(~usable, float("inf"))
        core = self.model
        object_query = core.enc_output_norm(core.enc_output(memory.masked_fill(~usable, 0.0)))
        return object_query, box_logits

    def propose(self, memory, text_memory, ctx, output_proposal_logits=False):
        """Two-stage query selection: the top num_queries pixels by their best phrase logit."""
        core, config = self.model, self.config
        object_query, box_logits = self._pixel_proposals(memory, ctx)
        head = core.encoder_output_class_embed
        best = head.best(object_query, text_memory, ctx.text_keep)
        top = torch.topk(best, config.num_queries, dim=1).indices
        chosen = torch.gather(object_query, 1, top[..., None].expand(-1, -1, object_query.shape[-1]))
        chosen_boxes = torch.gather(box_logits, 1, top[..., None].expand(-1, -1, 4))
        reference_points = (core.encoder_output_bbox_embed(chosen).float() + chosen_boxes).sigmoid()  # float32
        if config.embedding_init_target:
            queries = core.query_position_embeddings.weight[None].expand(memory.shape[0], -1, -1)
        else:
            queries = chosen
        extra = {}
        if output_proposal_logits:
            extra["enc_outputs_class"] = head(object_query, text_memory, ctx.text_keep)
            extra["enc_outputs_coord_logits"] = (core.encoder_output_bbox_embed(object_query) + box_logits).to(
                object_query.dtype
            )
        return queries, reference_points, extra

    def decode(self, queries, reference_points, memory, text_memory, ctx, output_hidden_states=False):
        """The decoder, then the last layer's phrase logits and boxes (the intermediate layers' heads are
        training-only)."""
        normed, references, decoder_states = self.model.decoder(
            queries, reference_points, memory, text_memory, ctx, output_hidden_states
        )
        last = normed[:, -1]
        before_last = references[:, -2] if references.shape[1] > 1 else reference_points
        logits = self.class_embed[-1](last, text_memory, ctx.text_keep)
        # float32 refinement (see Decoder), returned in the model's dtype as transformers returns boxes.
        pred_boxes = (self.bbox_embed[-1](last).float() + torch.special.logit(before_last.float(), eps=1e-5)).sigmoid()
        return logits, pred_boxes.to(last.dtype), normed, references.to(last.dtype), decoder_states

    def _output_class(self):
        if self.family == "mm-grounding-dino":
            from transformers.models.mm_grounding_dino.modeling_mm_grounding_dino import (
                MMGroundingDinoObjectDetectionOutput as Output,
            )
        else:
            from transformers.models.grounding_dino.modeling_grounding_dino import (
                GroundingDinoObjectDetectionOutput as Output,
            )
        return Output


class GroundingDinoForObjectDetection(MMGroundingDinoForObjectDetection):
    """The same model under transformers' Grounding DINO class name and class attributes (config class, tied
    keys), for code that swaps `transformers.GroundingDinoForObjectDetection` for it. Either class loads either
    family's checkpoints."""

    FAMILY = "grounding-dino"


def register_auto_classes():
    """Make transformers' AutoModelForZeroShotObjectDetection (and pipelines built from a model id) resolve MM
    Grounding DINO and Grounding DINO configs to mmgdino's classes, in this process, from now on."""
    from transformers import AutoModelForZeroShotObjectDetection

    for cls in (MMGroundingDinoForObjectDetection, GroundingDinoForObjectDetection):
        AutoModelForZeroShotObjectDetection.register(cls.config_class, cls, exist_ok=True)
