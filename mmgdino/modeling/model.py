"""MM Grounding DINO (and LLMDet, Grounding DINO) for detection: the base model (base.py), then the phrase logits
and boxes of the decoder layers, and transformers' own losses when `labels` are given.

Same config and state-dict keys as transformers' `MMGroundingDinoForObjectDetection` /
`GroundingDinoForObjectDetection`. Without labels only the last decoder layer's heads run (the intermediate
layers' heads serve the auxiliary losses); with labels every layer's, and the loss is transformers'
(`losses.py`). `output_attentions=True` runs the slower path of `attentions.py`, which forms the maps.
"""

import torch
import transformers
from torch import nn

from . import losses, weights
from .base import GroundingDinoModel, MMGroundingDinoModel, output_class
from .layers import ContrastiveHead, MLPHead, box_dtype
from .pretrained import GroundingDinoPreTrainedModel

_THEIRS = transformers.MMGroundingDinoForObjectDetection
BASE_MODELS = {"mm-grounding-dino": MMGroundingDinoModel, "grounding-dino": GroundingDinoModel}


class MMGroundingDinoForObjectDetection(GroundingDinoPreTrainedModel):
    """mmgdino's MM Grounding DINO / LLMDet / Grounding DINO detector, a drop-in for transformers' class.

    Build it with `from_pretrained(hub id or local dir)`, `from_config(config)` or `from_transformers(model)`;
    call it like transformers' model (`pixel_values`, `input_ids`, `attention_mask`, `pixel_mask`, `labels`, ...).
    The output is transformers' own output class, so `processor.post_process_grounded_object_detection` takes it.
    Not computed unless asked: `enc_outputs_class` / `enc_outputs_coord_logits` (pass
    `output_proposal_logits=True`), attention maps (`output_attentions=True`, a slower path).
    """

    _tied_weights_keys = transformers.MMGroundingDinoForObjectDetection._tied_weights_keys
    _keys_to_ignore_on_load_unexpected = (
        transformers.MMGroundingDinoForObjectDetection._keys_to_ignore_on_load_unexpected
    )
    _keys_to_ignore_on_load_missing = transformers.MMGroundingDinoForObjectDetection._keys_to_ignore_on_load_missing
    has_detection_heads = True

    def __init__(self, config):
        super().__init__(config)
        family = self.family
        self._tied_weights_keys = weights.tied_weights_keys(config)
        self.loss_type = "GroundingDinoForObjectDetection"  # transformers' loss, whatever a subclass is named
        with_bias = family == "mm-grounding-dino"
        self.model = BASE_MODELS[family](config)
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
        self.post_init()

    # ------------------------------------------------------------------ forward: the data path

    def forward(self, pixel_values=None, input_ids=None, token_type_ids=None, attention_mask=None, pixel_mask=None,
                encoder_outputs=None, output_attentions=None, output_hidden_states=None, return_dict=None, labels=None,
                output_proposal_logits=False, prompt_features=None, image_features=None, **unused):  # fmt: skip
        """transformers' arguments (unset flags read the config, as there), plus: `prompt_features` (from
        `encode_prompt`) and `image_features` (from `encode_image`) replace the text and image inputs when given:
        a prompt reused across images, or images reused across prompt chunks, is encoded once. `labels`
        (transformers' format: per image a dict of `class_labels`, the phrase index of each box, and `boxes`,
        normalized (cx, cy, w, h)) add `loss`, `loss_dict` and, with `config.auxiliary_loss`, `auxiliary_outputs`."""
        output_attentions, output_hidden_states, return_dict = self.resolve_flags(
            output_attentions, output_hidden_states, return_dict, encoder_outputs
        )
        if output_attentions:
            from .attentions import run_base_model

            base = run_base_model(self.model, pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask,
                                  output_hidden_states, prompt_features, image_features)  # fmt: skip
            fields = {name: value for name, value in base.items()}
            max_len = self.config.max_text_len
            mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            text_keep, prompt_ids = mask[:, :max_len].bool(), input_ids[:, :max_len]
            boxes = fields["intermediate_reference_points"], fields["init_reference_points"]
        else:
            run = self.model.run(pixel_values, input_ids, token_type_ids, attention_mask, pixel_mask,
                                 output_hidden_states, output_proposal_logits, prompt_features,
                                 image_features)  # fmt: skip
            fields = run.fields(output_hidden_states)
            text_keep, prompt_ids = run.ctx.text_keep, run.prompt.input_ids
            boxes = run.references, run.reference_points  # float32 in a bf16 model (see Decoder)
        layer_logits, layer_boxes = self.heads(
            fields["intermediate_hidden_states"], *boxes, fields["encoder_last_hidden_state_text"], text_keep,
            every_layer=labels is not None,
        )  # fmt: skip
        loss = loss_dict = auxiliary_outputs = None
        if labels is not None:
            loss, loss_dict, auxiliary_outputs = losses.detection_loss(
                self, layer_logits, layer_boxes, labels, input_ids if input_ids is not None else prompt_ids,
                attention_mask if input_ids is not None else text_keep.long(), fields["encoder_logits"],
                fields["encoder_pred_boxes"],
            )  # fmt: skip
        output = output_class(self.family)(loss=loss, loss_dict=loss_dict, logits=layer_logits[-1],
                                           pred_boxes=layer_boxes[-1], auxiliary_outputs=auxiliary_outputs,
                                           **fields, input_ids=prompt_ids)  # fmt: skip
        if return_dict:
            return output
        # transformers' tuple: the auxiliary outputs spread out after the boxes, the rest in field order.
        values = list(output.to_tuple())
        if auxiliary_outputs is not None:
            at = next(i for i, value in enumerate(values) if value is auxiliary_outputs)
            values[at : at + 1] = auxiliary_outputs
        return tuple(values)

    def heads(self, normed, references, init_reference_points, text_memory, text_keep, every_layer=False):
        """Phrase logits (float32, -inf outside the prompt) and boxes (the model's dtype) of the last decoder
        layer, or of every layer (for the losses): a layer's box refines the box the layer before it produced."""
        last = normed.shape[1] - 1
        layer_logits, layer_boxes = [], []
        for layer in range(last + 1) if every_layer else [last]:
            hidden = normed[:, layer]
            previous = init_reference_points if layer == 0 else references[:, layer - 1]
            layer_logits.append(self.class_embed[layer](hidden, text_memory, text_keep))
            # float32 refinement (see Decoder), returned in the model's dtype as transformers returns boxes.
            boxes = box_dtype(hidden.dtype)
            box = self.bbox_embed[layer](hidden).to(boxes) + torch.special.logit(previous.to(boxes), eps=1e-5)
            layer_boxes.append(box.sigmoid().to(hidden.dtype))
        return layer_logits, layer_boxes

    def encode_prompt(self, input_ids, token_type_ids=None, attention_mask=None):
        """The text backbone over a batch of prompts: `PromptFeatures` (see `MMGroundingDinoModel`)."""
        return self.model.encode_prompt(input_ids, token_type_ids, attention_mask)

    def encode_image(self, pixel_values, pixel_mask=None):
        """The vision backbone over a batch of images: `ImageFeatures` (see `MMGroundingDinoModel`)."""
        return self.model.encode_image(pixel_values, pixel_mask)

    def decode(self, queries, reference_points, memory, text_memory, ctx, output_hidden_states=False):
        """The decoder, then the last layer's phrase logits and boxes: (logits, pred_boxes, every layer's normed
        output, every layer's boxes, hidden states)."""
        normed, references, decoder_states = self.model.decoder(
            queries, reference_points, memory, text_memory, ctx, output_hidden_states
        )
        logits, boxes = self.heads(normed, references, reference_points, text_memory, ctx.text_keep)
        return logits[-1], boxes[-1], normed, references.to(normed.dtype), decoder_states


class GroundingDinoForObjectDetection(MMGroundingDinoForObjectDetection):
    """The same model under transformers' Grounding DINO class name and class attributes (config class, tied
    keys), for code that swaps `transformers.GroundingDinoForObjectDetection` for it. Either class loads either
    family's checkpoints."""

    config_class = transformers.GroundingDinoConfig
    _tied_weights_keys = transformers.GroundingDinoForObjectDetection._tied_weights_keys


def register_auto_classes():
    """Make transformers' AutoModelForZeroShotObjectDetection (and pipelines built from a model id) and AutoModel
    resolve MM Grounding DINO and Grounding DINO configs to mmgdino's classes, in this process, from now on."""
    from transformers import AutoModel, AutoModelForZeroShotObjectDetection

    for cls in (MMGroundingDinoForObjectDetection, GroundingDinoForObjectDetection):
        AutoModelForZeroShotObjectDetection.register(cls.config_class, cls, exist_ok=True)
    for cls in (MMGroundingDinoModel, GroundingDinoModel):
        AutoModel.register(cls.config_class, cls, exist_ok=True)
