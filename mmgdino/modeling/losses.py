"""Training losses: transformers' own, fed what transformers' detection forward feeds it.

`detection_loss` calls the model's `loss_function` (transformers' `GroundingDinoForObjectDetectionLoss`: its
Hungarian matcher, focal, L1 and GIoU terms, the auxiliary losses of every decoder layer with
`config.auxiliary_loss`, the encoder's proposals' losses, the config's weights) with transformers' label maps and
text mask, so the numbers are the ones users compare against. Only the labels are checked here first, so that a
malformed target is one clear error instead of a failure deep inside the matcher.
"""

from collections.abc import Mapping, Sequence

import torch


def detection_loss(model, layer_logits, layer_boxes, labels, input_ids, attention_mask, encoder_logits,
                   encoder_pred_boxes):  # fmt: skip
    """(loss, loss_dict, auxiliary_outputs) as transformers computes them. layer_logits / layer_boxes: every decoder
    layer's phrase logits and boxes, the last layer's last."""
    from transformers.utils import is_scipy_available

    from .base import reference_module

    if not is_scipy_available():
        raise ImportError("labels= needs scipy for the Hungarian matcher of the loss: pip install scipy")
    logits, pred_boxes = layer_logits[-1], layer_boxes[-1]
    labels = check_labels(labels, logits.shape[0], logits.device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    reference = reference_module(model.family)
    label_maps = reference.build_label_maps(logits, input_ids)
    for index, (label_map, target) in enumerate(zip(label_maps, labels)):
        if len(target["class_labels"]) and int(target["class_labels"].max()) >= label_map.shape[0]:
            raise ValueError(
                f"labels[{index}]['class_labels'] holds phrase index {int(target['class_labels'].max())}, but that "
                f"image's prompt has {label_map.shape[0]} phrases (class_labels index the prompt's phrases from 0)"
            )
    text_mask = reference.build_text_mask(logits, attention_mask)
    return model.loss_function(
        logits, labels, model.device, pred_boxes, model.config, label_maps, text_mask,
        outputs_class=torch.stack(layer_logits), outputs_coord=torch.stack(layer_boxes),
        encoder_logits=encoder_logits, encoder_pred_boxes=encoder_pred_boxes,
    )  # fmt: skip


def check_labels(labels, batch, device):
    """transformers' target format, one dict per image: `class_labels` (N,) integers and `boxes` (N, 4) normalized
    (cx, cy, w, h). Returns the targets with those two tensors on `device` (other keys kept as they are)."""
    if not isinstance(labels, Sequence) or isinstance(labels, (str, bytes)) or len(labels) != batch:
        got = f"{type(labels).__name__} of length {len(labels)}" if isinstance(labels, Sequence) else type(labels)
        raise ValueError(f"labels must be a list of {batch} dicts (one per image), got {got}")
    checked = []
    for index, target in enumerate(labels):
        if not isinstance(target, Mapping) or "class_labels" not in target or "boxes" not in target:
            raise ValueError(f"labels[{index}] must be a dict with 'class_labels' and 'boxes', got {_describe(target)}")
        classes, boxes = target["class_labels"], target["boxes"]
        if not isinstance(classes, torch.Tensor) or classes.dim() != 1 or classes.is_floating_point():
            raise ValueError(f"labels[{index}]['class_labels'] must be a 1-D integer tensor, got {_describe(classes)}")
        if not isinstance(boxes, torch.Tensor) or boxes.shape != (len(classes), 4) or not boxes.is_floating_point():
            raise ValueError(
                f"labels[{index}]['boxes'] must be a float tensor of shape ({len(classes)}, 4) (one normalized "
                f"cx, cy, w, h per class label), got {_describe(boxes)}"
            )
        if len(classes) and (
            int(classes.min()) < 0 or not bool(torch.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all())
        ):
            raise ValueError(
                f"labels[{index}]: class_labels must be >= 0 and boxes finite with width and height >= 0 "
                "(normalized cx, cy, w, h)"
            )
        checked.append({**target, "class_labels": classes.to(device), "boxes": boxes.to(device)})
    return checked


def _describe(value):
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))}"
    return type(value).__name__
