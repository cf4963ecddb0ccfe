"""How close two outputs are: the relative error (the one definition the benchmarks and the tests use), and for
detection outputs, matched queries and top-k agreement (bf16 against float32, a runtime against PyTorch)."""

import numpy as np
import torch


def rel_err(out, ref, finite_only=False):
    """||out - ref|| / ||ref|| in float64 (the absolute error ||out - ref|| where ref is all zeros), of torch tensors
    or arrays. finite_only: over the positions where ref is finite (masked logits are -inf in both)."""
    out, ref = torch.as_tensor(out).double(), torch.as_tensor(ref).double()
    if finite_only:
        keep = torch.isfinite(ref)
        out, ref = out[keep], ref[keep]
    diff, norm = (out - ref).norm(), ref.norm()
    return (diff / norm).item() if norm > 0 else diff.item()


def agreement(outputs, reference, tol=1e-3):
    """Query by query and as a set. With random weights many proposals tie exactly (padded pixels all score the
    head's bias), and which tied proposals top-k keeps is the runtime's choice, so queries are also matched as a
    set: a reference query is matched by an output query with the same box (within tol) and the same best token.
    Returns {"order": (logits, boxes rel err), "matched": fraction, "matched_err": rel err over matched pairs}."""
    logits, boxes = (np.asarray(x, dtype=np.float64) for x in outputs)
    ref_logits, ref_boxes = (np.asarray(x, dtype=np.float64) for x in reference)
    finite = np.isfinite(ref_logits)
    order = (rel_err(logits[finite], ref_logits[finite]), rel_err(boxes, ref_boxes))
    pairs_out, pairs_ref, matched, total = [], [], 0, 0
    for b in range(ref_boxes.shape[0]):
        distance = np.abs(boxes[b][:, None, :] - ref_boxes[b][None, :, :]).max(-1)  # (out, ref)
        nearest = distance.argmin(0)
        for r, o in enumerate(nearest):
            total += 1
            same_token = np.nanargmax(np.where(finite[b, r], logits[b, o], -np.inf)) == np.nanargmax(
                np.where(finite[b, r], ref_logits[b, r], -np.inf))  # fmt: skip
            if distance[o, r] < tol and same_token:
                matched += 1
                pairs_out.append(np.concatenate([logits[b, o][finite[b, r]], boxes[b, o]]))
                pairs_ref.append(np.concatenate([ref_logits[b, r][finite[b, r]], ref_boxes[b, r]]))
    matched_err = rel_err(np.concatenate(pairs_out), np.concatenate(pairs_ref)) if pairs_out else None
    return {"order": order, "matched": matched / total, "matched_err": matched_err}


def box_iou(a, b):
    """IoU of (N, 4) and (M, 4) (cx, cy, w, h) boxes, (N, M)."""

    def corners(x):
        return np.concatenate([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], 1)

    a, b = corners(np.asarray(a, dtype=np.float64)), corners(np.asarray(b, dtype=np.float64))
    low, high = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def topk_agreement(outputs, reference, k=100, iou=0.9):
    """The fraction of the reference's k best queries (by best phrase logit) that the outputs also detect: some
    output query with IoU >= iou and the same best token (the issue's measure of bf16 against float32)."""
    logits, boxes = (np.asarray(x, dtype=np.float64) for x in outputs)
    ref_logits, ref_boxes = (np.asarray(x, dtype=np.float64) for x in reference)
    found = total = 0
    for b in range(ref_boxes.shape[0]):
        best = ref_logits[b].max(-1)
        top = np.argsort(-best)[:k]
        overlaps = box_iou(ref_boxes[b][top], boxes[b])  # (k, out)
        tokens_ref, tokens_out = ref_logits[b][top].argmax(-1), logits[b].argmax(-1)
        same = (overlaps >= iou) & (tokens_ref[:, None] == tokens_out[None, :])
        found += int(same.any(1).sum())
        total += len(top)
    return found / total
