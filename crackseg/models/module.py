"""LightningModule: an injected segmentation net (wrapped in ``CrackSegNet``, what prediction
runs), a loss, Dice/IoU/precision/recall metrics.

Training runs on tiles; validation predicts each whole photo with the sliding-window tiler,
so ``val/dice`` is the pooled pixel Dice a user sees on full photos.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall

from crackseg.metrics import Counts
from crackseg.tiling import sliding_window
from crackseg.models.nets import IMAGENET_MEAN, IMAGENET_STD, CrackSegNet


def segmentation_metrics(threshold: float, prefix: str) -> MetricCollection:
    """Pooled pixel metrics of the crack class; Dice is the binary F1 score. Their inputs are the
    module's own (probabilities, 0/1 masks): torchmetrics' input checks would cost 3x the update."""
    options = {"threshold": threshold, "validate_args": False}
    return MetricCollection(
        {
            "dice": BinaryF1Score(**options),
            "iou": BinaryJaccardIndex(**options),
            "precision": BinaryPrecision(**options),
            "recall": BinaryRecall(**options),
        },
        prefix=prefix,
    )


class CrackSegModule(pl.LightningModule):
    """Trains ``self.net``, the :class:`CrackSegNet` around the injected ``net``: ``forward``
    takes RGB pixel values in [0, 255] ``(B, 3, H, W)`` and returns logits ``(B, 1, H, W)``."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        threshold: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        val_tile: int = 256,
        val_overlap: float = 0.25,
        val_batch_size: int = 8,
        log_images: int = 3,
        channels_last: bool = True,
        net_config: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.net = CrackSegNet(net, mean, std, channels_last, threshold, val_tile, net_config)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_metrics = segmentation_metrics(threshold, "train/")
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.val_dice_best = MaxMetric()
        self.val_dice_best.persistent(True)  # in the checkpoint's state_dict: a resumed run keeps its best

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits(x)

    def predict_photo(self, image: torch.Tensor) -> torch.Tensor:
        """Crack probability ``(1, H, W)`` of a whole ``(3, H, W)`` photo, by the tiler."""
        hp = self.hparams
        return sliding_window(image, self.net, hp.val_tile, hp.val_overlap, hp.val_batch_size,
                              full_batches=image.device.type == "cuda")

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss, and per tile the background pixels taken for crack (for hard-negative mining)."""
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"])
        probs = torch.sigmoid(logits.detach())
        self.train_loss(loss)
        self.train_metrics.update(probs, batch["mask"].long())  # computed once per epoch, when logged
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        false_crack = (probs >= self.hparams.threshold) & (batch["mask"] < 0.5)
        return {"loss": loss, "false_crack_px": false_crack.flatten(1).sum(1)}

    def _source_names(self) -> list[str]:
        return list(getattr(self.trainer.datamodule, "source_names", None) or ["data"])

    def on_validation_epoch_start(self) -> None:
        # tp, fp, fn per dataset: val/dice and the others are pooled from them (one pass over each photo)
        self.val_counts = torch.zeros(len(self._source_names()), 3, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        mask = batch["mask"][0]
        prob = self.predict_photo(batch["image"][0])
        self.val_loss(self.loss(torch.logit(prob, eps=1e-6)[None], mask[None]))
        crack, truth = prob >= self.hparams.threshold, mask >= 0.5
        source = int(batch["source"][0]) if "source" in batch else 0
        self.val_counts[source] += torch.stack([(crack & truth).sum(), (crack & ~truth).sum(), (~crack & truth).sum()])
        if batch_idx < self.hparams.log_images:
            self._log_panel(batch_idx, batch["image"][0], mask, prob)

    def on_validation_epoch_end(self) -> None:
        # the counts are summed over all ranks, so every value is the same on every rank;
        # sync_dist=True (a mean of equal values) tells Lightning it is global
        counts = self.trainer.strategy.reduce(self.val_counts, reduce_op="sum")
        pooled = Counts(*counts.sum(0).tolist())  # evaluate.py's metrics, from the same counts
        self.log_dict({f"val/{name}": getattr(pooled, name) for name in ("dice", "iou", "precision", "recall")},
                      prog_bar=True, sync_dist=True)
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)
        self.val_loss.reset()
        names = self._source_names()
        if len(names) > 1:  # one dataset's Dice each, from its pooled counts over all ranks
            for name, source_counts in zip(names, counts):
                self.log(f"val/{name}/dice", Counts(*source_counts.tolist()).dice, sync_dist=True)
        if not self.trainer.sanity_checking:  # the sanity check's score on a few photos is no best
            self.val_dice_best(pooled.dice)
            self.log("val/dice_best", self.val_dice_best.compute(), prog_bar=True, sync_dist=True)

    def _log_panel(self, index: int, image: torch.Tensor, mask: torch.Tensor, prob: torch.Tensor) -> None:
        """Photo | truth | prediction, on a window around the photo's cracks, to TensorBoard."""
        logger = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            return
        size = min(512, *image.shape[-2:])
        ys, xs = torch.nonzero(mask[0], as_tuple=True)
        cy, cx = (int(ys.float().median()), int(xs.float().median())) if len(ys) else (image.shape[1] // 2, image.shape[2] // 2)
        y = min(max(cy - size // 2, 0), image.shape[1] - size)
        x = min(max(cx - size // 2, 0), image.shape[2] - size)
        window = (slice(None), slice(y, y + size), slice(x, x + size))
        photo = image[window].float() / 255
        panel = torch.cat([photo, mask[window].expand(3, -1, -1), prob[window].expand(3, -1, -1)], dim=2)
        logger.experiment.add_image(f"val/photo_{index}", panel.clamp(0, 1).cpu(), self.global_step)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):  # stepped on val/dice, after each validation
            config.update(monitor="val/dice", frequency=self.trainer.check_val_every_n_epoch or 1, strict=False)
        return {"optimizer": optimizer, "lr_scheduler": config}
