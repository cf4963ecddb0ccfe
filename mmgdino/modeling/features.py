"""What flows between the model's stages, by name: a prompt encoded by the text backbone (`PromptFeatures`), a
batch of images encoded by the vision backbone (`ImageFeatures`), and what the encoder and decoder layers share
for one pairing of the two (`Context`). Each carries the operations its callers need (expanding one prompt over
a batch of images, batching distinct prompts, picking images out of a batch), so no caller unpacks a tuple.
"""

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class LevelTable:
    """Where each feature level lives in the flattened pixel sequence."""

    shapes: list  # [(height, width)] as Python ints
    spatial_shapes: torch.Tensor  # (L, 2) int64
    level_start_index: torch.Tensor  # (L,) int64
    offset_normalizer: torch.Tensor  # (1, 1, 1, L, 1, 2): (width, height), divides encoder sampling offsets

    @classmethod
    def build(cls, shapes, device, dtype):
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
        sizes = spatial_shapes.prod(1)
        starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        normalizer = spatial_shapes.flip(-1).to(dtype).view(1, 1, 1, len(shapes), 1, 2)
        return cls(list(shapes), spatial_shapes, starts, normalizer)


@dataclasses.dataclass
class PromptFeatures:
    """A batch of prompts after the text backbone and its projection to d_model."""

    text: torch.Tensor  # (B, T, C)
    keep: torch.Tensor  # (B, T) bool, True on real tokens
    position: torch.Tensor  # (B, T, C) sine embedding of the position inside each phrase
    phrase_keep: torch.Tensor  # (B, 1, T, T) bool, tokens attend within their own phrase
    input_ids: torch.Tensor  # (B, T)

    @property
    def batch(self):
        return self.text.shape[0]

    @property
    def length(self):
        return self.text.shape[1]

    def expand(self, batch):
        """One prompt for `batch` images (views, no copies); a prompt batch of that size as it is."""
        if self.batch == batch:
            return self
        return PromptFeatures(*(getattr(self, f.name).expand(batch, *getattr(self, f.name).shape[1:])
                                for f in dataclasses.fields(self)))  # fmt: skip

    def padded(self, length):
        """The same prompts padded to `length` tokens: a padded token is masked out (keep False) and attends
        only to itself, so the real tokens' features do not change."""
        pad = length - self.length
        if pad == 0:
            return self
        phrase_keep = F.pad(self.phrase_keep, (0, pad, 0, pad), value=False)
        tail = torch.arange(self.length, length, device=phrase_keep.device)
        phrase_keep[..., tail, tail] = True
        return PromptFeatures(F.pad(self.text, (0, 0, 0, pad)), F.pad(self.keep, (0, pad)),
                              F.pad(self.position, (0, 0, 0, pad)), phrase_keep,
                              F.pad(self.input_ids, (0, pad)))  # fmt: skip

    @classmethod
    def stack(cls, prompts):
        """Distinct prompts as one batch, padded to the longest."""
        length = max(p.length for p in prompts)
        padded = [p.padded(length) for p in prompts]
        return cls(*(torch.cat([getattr(p, f.name) for p in padded]) for f in dataclasses.fields(cls)))


@dataclasses.dataclass
class ImageFeatures:
    """A batch of images after the backbone: every level projected to d_model and flattened into one pixel
    sequence."""

    vision: torch.Tensor  # (B, S, C)
    keep: torch.Tensor  # (B, S) bool, True on real (unpadded) pixels
    position: torch.Tensor  # (B, S, C) sine position + level embedding
    levels: LevelTable
    valid_ratios: torch.Tensor  # (B, L, 2) (width, height) fraction of each level that is not padding

    @property
    def batch(self):
        return self.vision.shape[0]

    def select(self, index):
        """The images at `index` (a list or a tensor of batch positions); the level table is shared."""
        index = torch.as_tensor(index, device=self.vision.device)
        return ImageFeatures(self.vision[index], self.keep[index], self.position[index], self.levels,
                             self.valid_ratios[index])  # fmt: skip


@dataclasses.dataclass
class Context:
    """Everything the encoder and decoder layers share, computed once per forward."""

    levels: LevelTable
    vision_keep: torch.Tensor  # (B, S) bool, True on real (unpadded) pixels
    vision_pos: torch.Tensor  # (B, S, C) sine position + level embedding
    valid_ratios: torch.Tensor  # (B, L, 2) (width, height) fraction of each level that is not padding
    encoder_reference_points: torch.Tensor  # (B, S, L, 2)
    text_keep: torch.Tensor  # (B, T) bool, True on real tokens
    text_pos: torch.Tensor  # (B, T, C) sine embedding of the position inside each phrase
    phrase_keep: torch.Tensor  # (B, 1, T, T) bool, tokens attend within their own phrase

    @classmethod
    def of(cls, image, prompt):
        """The context of images paired with prompts of the same batch size (see `PromptFeatures.expand`)."""
        return cls(image.levels, image.keep, image.position, image.valid_ratios,
                   encoder_reference_points(image.levels.shapes, image.valid_ratios), prompt.keep, prompt.position,
                   prompt.phrase_keep)  # fmt: skip


def phrase_attention(input_ids, special_tokens):
    """Tokens attend to the tokens of their own phrase (phrases end at a special token) and to themselves; the
    position ids restart at every phrase. Returns (keep (B, T, T) bool, position_ids (B, T)).

    Written with (T, T) comparisons instead of cumulative max/min and isin, which ONNX lacks; T <= 256."""
    batch, length = input_ids.shape
    idx = torch.arange(length, device=input_ids.device)
    special = (input_ids[..., None] == special_tokens).any(-1)  # (B, T)
    later = idx[None, :] >= idx[:, None]  # [i, j]: j at or after i
    # The phrase of token i is named by the first special token at or after i (length: none).
    ends = torch.where(special[:, None, :] & later[None], idx[None, None, :], length)
    phrase_end = ends.amin(-1)
    # The previous phrase ended at the last special token strictly before i (-1: none).
    starts = torch.where(special[:, None, :] & ~later[None], idx[None, None, :], -1)
    previous_end = starts.amax(-1)
    in_phrase = (phrase_end != 0) & (phrase_end != length - 1) & (phrase_end != length)
    keep = (phrase_end[:, :, None] == phrase_end[:, None, :]) & in_phrase[:, None, :]
    keep |= torch.eye(length, dtype=torch.bool, device=input_ids.device)
    position_ids = torch.where(in_phrase, idx - previous_end - 1, torch.zeros_like(previous_end)).clamp_min(0)
    return keep, position_ids


def valid_ratios_of(mask, dtype):
    """(B, H, W) bool (True = real pixel) -> (B, 2): the unpadded fraction of width and of height."""
    height, width = mask.shape[-2:]
    valid_h = mask[:, :, 0].sum(1, dtype=dtype) / height
    valid_w = mask[:, 0, :].sum(1, dtype=dtype) / width
    return torch.stack([valid_w, valid_h], -1)


def encoder_reference_points(shapes, valid_ratios):
    """Pixel centers of every level, normalized by the unpadded extent, then scaled back per level."""
    points = []
    for level, (height, width) in enumerate(shapes):
        ys, xs = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, dtype=valid_ratios.dtype, device=valid_ratios.device),
            torch.linspace(0.5, width - 0.5, width, dtype=valid_ratios.dtype, device=valid_ratios.device),
            indexing="ij",
        )
        ys = ys.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        xs = xs.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((xs, ys), -1))
    return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]
