"""The training images as a torch Dataset, and the order they come in.

Item i of epoch e is image i, augmented with a generator seeded by (seed, epoch, i), so it is the same whichever
process, data-loader worker or resumed run draws it (its batch's prompt is drawn from the batch's keys, in
prompts.Collator). The order is `EpochOrder`: a permutation seeded by
(seed, epoch), the same for any number of processes, which accelerate then deals out batch by batch (process p
takes batches p, p + N, ...): N processes with batch b see, step by step, the images one process with batch N*b
sees. The Trainer sets the epoch on the sampler before each epoch's iterator starts; the sampler passes it on to
the data set."""

import sys

import numpy as np
import torch

from ..errors import ImageReadError
from ..images import load_image
from .augment import augment


class EpochOrder(torch.utils.data.Sampler):
    def __init__(self, dataset, seed):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch, 1 << 31]).permutation(len(self.dataset)).tolist())


class TrainingImages(torch.utils.data.Dataset):
    def __init__(self, training_set, augmentation, mean, std, seed=0, log=None):
        self.images = training_set.images
        self.augmentation = augmentation
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.seed = int(seed)
        self.epoch = 0
        self.log = log
        self.unreadable = set()  # per process (and data-loader worker): each reported once there

    def __len__(self):
        return len(self.images)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def generator(self, index):
        return np.random.default_rng([self.seed, self.epoch, index])

    def _load(self, index):
        """The image, or the next readable one: an image that fails to decode is reported once and replaced, so
        the epoch goes on (data.py checked every header at the start; this catches damage past the header)."""
        for offset in range(len(self.images)):
            entry = self.images[(index + offset) % len(self.images)]
            if entry.path in self.unreadable:
                continue
            try:
                return entry, load_image(entry.path)
            except ImageReadError as exc:
                self.unreadable.add(entry.path)
                message = f"mmgdino train: {exc}; replaced by the next image"
                (self.log or (lambda m: print(m, file=sys.stderr, flush=True)))(message)
        raise ImageReadError("no training image can be read any more")

    def __getitem__(self, index):
        """The augmented image, normalized, with its boxes (pixels, x y w h) and classes (category indices); the
        prompt is the batch's (prompts.Collator), drawn from `key`."""
        rng = self.generator(index)
        entry, image = self._load(index)
        image, boxes, classes = augment(image, entry.boxes, entry.labels, self.augmentation, rng)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return {"pixel_values": (pixels - self.mean) / self.std, "boxes": boxes, "classes": classes,
                "key": (self.seed, self.epoch, index)}  # fmt: skip
