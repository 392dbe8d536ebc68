"""On-the-fly augmentation of training images, in the trial: the prepared uint8 arrays are never changed.

``data.augment`` (torchvision ``transforms.v2``, drawn per image): ``flip`` (horizontal, half the time),
``crop_flip`` (a random resized crop of 8-100% of the area back to the input size, then the flip, as timm's and
torchvision's ImageNet recipes do) and ``trivial`` (TrivialAugment's one random operation, then crop and flip).
``data.mixup`` / ``data.cutmix``: batch-level MixUp / CutMix with Beta(alpha, alpha); with both, each batch takes
one of the two at random. They turn the labels into class probabilities, which the loss takes as they are.
Validation and test batches are never augmented: only the training loader applies a ``TrainTransform``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional

from finesweep.config import Augment, DataConfig

if TYPE_CHECKING:
    import torch

    from finesweep.tasks.task import Batch

CROP_SCALE = (0.08, 1.0)
"""Share of the image's area a random resized crop keeps."""


class TrainTransform:
    """Augments a training batch of uint8 images ``(B, 3, S, S)``; picklable (a DataLoader may copy it).

    Args:
        data: ``data.augment``, ``data.mixup`` and ``data.cutmix``.
        classes: the number of classes (MixUp and CutMix mix one-hot labels).
        size: pixels per side of the prepared images.
    """

    def __init__(self, data: DataConfig, classes: int, size: int) -> None:
        self.augment = data.augment
        self.mixup = data.mixup
        self.cutmix = data.cutmix
        self.classes = classes
        self.size = size
        self._per_image: Optional[Any] = None
        self._per_batch: Optional[Any] = None

    @staticmethod
    def wanted(data: DataConfig) -> bool:
        """Whether ``data`` asks for any augmentation."""
        return data.augment is not Augment.none or data.mixup > 0 or data.cutmix > 0

    def __call__(self, batch: Batch) -> Batch:
        import torch

        images: torch.Tensor = batch["features"]["pixel_values"]
        labels: torch.Tensor = batch["labels"]
        if self.augment is not Augment.none:
            per_image = self._image_transform()
            images = torch.stack([per_image(image) for image in images])
        if self.mixup > 0 or self.cutmix > 0:
            images, labels = self._batch_transform()(images.float().div_(255.0), labels)
        return {"features": {**batch["features"], "pixel_values": images}, "labels": labels}

    def _image_transform(self) -> Any:
        if self._per_image is None:
            from torchvision.transforms import v2

            steps: List[Any] = []
            if self.augment is Augment.trivial:
                steps.append(v2.TrivialAugmentWide())
            if self.augment in (Augment.crop_flip, Augment.trivial):
                steps.append(v2.RandomResizedCrop(self.size, scale=CROP_SCALE, antialias=True))
            steps.append(v2.RandomHorizontalFlip())
            self._per_image = v2.Compose(steps)
        return self._per_image

    def _batch_transform(self) -> Any:
        if self._per_batch is None:
            from torchvision.transforms import v2

            choices = ([v2.MixUp(alpha=self.mixup, num_classes=self.classes)] if self.mixup > 0 else []) + (
                [v2.CutMix(alpha=self.cutmix, num_classes=self.classes)] if self.cutmix > 0 else [])
            self._per_batch = choices[0] if len(choices) == 1 else v2.RandomChoice(choices)
        return self._per_batch

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_per_image": None, "_per_batch": None}
