"""The text side of a training sample, and how samples become a batch.

Prompts are `mmgdino eval`'s: cleaned class names joined as "a. b. c. " (`mmgdino.evaluation.class_prompts`,
mmdetection's tokenization), so the model is trained on the prompts it is evaluated with. A box's class label is
its class's phrase index in its image's prompt, which is how transformers' loss reads labels (it cuts the prompt
into phrases at [CLS], [SEP], ".", "?" and padding).

- The vocabulary fits the model's prompt (`max_text_len` tokens, 256 in released checkpoints): every image gets
  the whole vocabulary in the file's order (mmdetection's COCO fine-tune).
- It does not (LVIS, Objects365, ...): mmdetection's RandomSamplingNegPos, per batch (Collator says why): the
  classes present in the batch's images, plus up to `negatives` (85) random absent ones, shuffled, cut at the
  token limit (the present classes go first, so a box loses its class only when the present classes alone
  overflow the prompt; mmdetection may drop present classes too).
"""

import numpy as np
import torch

from ..errors import UsageError
from ..evaluation import class_prompts, clean_class_name

MMDET_NEGATIVES = 85


def _phrase_breaks(tokenizer):
    """Token ids at which transformers' loss ends a phrase (its SPECIAL_TOKENS and padding), for this tokenizer."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    ids |= {vocab[t] for t in (".", "?") if t in vocab}
    return {i for i in ids if i is not None}


class PromptSampler:
    """Per image: (input_ids, {category index: phrase index}) for the image's prompt."""

    def __init__(self, names, tokenizer, max_text_len, negatives=MMDET_NEGATIVES):
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
            raise UsageError(f"negatives must be a whole number >= 0, got {negatives!r}")
        self.names, self.tokenizer, self.max_text_len, self.negatives = list(names), tokenizer, max_text_len, negatives
        singles = class_prompts(self.names, tokenizer, 1, None)  # one class each: [CLS] name . [SEP]
        self.lengths = [len(p.input_ids) - 3 for p in singles]
        breaks = _phrase_breaks(tokenizer)
        for name, prompt in zip(self.names, singles):
            if any(t in breaks for t in prompt.input_ids[1:-2]):
                raise UsageError(f"category {name!r} contains a token that ends a phrase ('.', '?' or a special "
                                 "token), so the loss would read it as two classes; rename it")  # fmt: skip
            if len(prompt.input_ids) > max_text_len:
                raise UsageError(f"category {name!r} alone is longer than the model's {max_text_len}-token prompt")
        self.fits = 2 + sum(n + 1 for n in self.lengths) <= max_text_len
        if self.fits:
            (whole,) = class_prompts(self.names, tokenizer, None, max_text_len)
            self.whole = (whole.input_ids, {c: c for c in range(len(self.names))})

    def __call__(self, present, rng):
        if self.fits:
            return self.whole
        present = [int(c) for c in np.unique(np.asarray(present, dtype=np.int64))]
        rng.shuffle(present)
        absent = np.setdiff1d(np.arange(len(self.names)), present)
        negatives = rng.choice(absent, min(self.negatives, len(absent)), replace=False).tolist() if len(absent) else []
        chosen, used = [], 2
        for c in present + negatives:
            if used + self.lengths[c] + 1 <= self.max_text_len:
                chosen.append(c)
                used += self.lengths[c] + 1
        order = rng.permutation(len(chosen))
        chosen = [chosen[i] for i in order]
        (prompt,) = class_prompts([self.names[c] for c in chosen], self.tokenizer, None, self.max_text_len)
        return prompt.input_ids, {c: k for k, c in enumerate(chosen)}

    def describe(self):
        cleaned = ". ".join(clean_class_name(n).strip() for n in self.names[:5])
        sampled = f"per image: its classes and up to {self.negatives} others, within {self.max_text_len} tokens"
        how = "the whole vocabulary in every prompt" if self.fits else sampled
        return f"prompt: {cleaned}{'. ...' if len(self.names) > 5 else '.'} ({how})"


def targets(boxes, labels, phrase_of, width, height):
    """transformers' labels for one image: class_labels (phrase indices) and boxes as normalized (cx, cy, w, h)
    of the image before padding (as the model's proposals are normalized). Boxes whose class did not fit the
    prompt are dropped."""
    keep = [i for i, c in enumerate(labels) if int(c) in phrase_of]
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float64)[keep].reshape(-1, 4), dtype=torch.float32)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    centred = torch.cat([b[:, :2] + b[:, 2:] / 2, b[:, 2:]], -1) / scale
    class_labels = torch.tensor([phrase_of[int(labels[i])] for i in keep], dtype=torch.long)
    return {"class_labels": class_labels, "boxes": centred.clamp(0, 1)}


class Collator:
    """Samples -> a batch of the model's inputs: images padded with zeros to the largest (pixel_mask marks the
    real pixels), one prompt for the whole batch, and `labels` one dict per image.

    One prompt per batch, not per image as in mmdetection: transformers' loss offsets an image's phrase indices by
    that image's own phrase count where it needs the count of all images before it, which is right only when
    every image of the batch has the same prompt. The batch's prompt holds the classes of all its images (plus
    sampled negatives when the vocabulary exceeds the prompt), drawn from a generator seeded by the samples' keys."""

    def __init__(self, prompts):
        self.prompts = prompts

    def __call__(self, samples):
        rng = np.random.default_rng([v for s in samples for v in s["key"]])
        input_ids, phrase_of = self.prompts(np.concatenate([s["classes"] for s in samples]), rng)
        height = max(s["pixel_values"].shape[1] for s in samples)
        width = max(s["pixel_values"].shape[2] for s in samples)
        pixel_values = torch.zeros(len(samples), 3, height, width)
        pixel_mask = torch.zeros(len(samples), height, width, dtype=torch.long)
        labels = []
        for i, s in enumerate(samples):
            _, h, w = s["pixel_values"].shape
            pixel_values[i, :, :h, :w] = s["pixel_values"]
            pixel_mask[i, :h, :w] = 1
            labels.append(targets(s["boxes"], s["classes"], phrase_of, w, h))
        ids = torch.tensor([input_ids] * len(samples))
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "input_ids": ids,
                "attention_mask": torch.ones_like(ids), "labels": labels}  # fmt: skip
