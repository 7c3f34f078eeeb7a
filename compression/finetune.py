"""Recovering accuracy after compression: batch-norm recalibration and (short or full) fine-tuning.

Fine-tuning reuses the base-model training loop (SGD, cosine schedule, progress) with a loss that
can distil from the uncompressed model (Hinton et al., 2015): alpha x T^2 x KL(teacher_T || student_T)
+ (1 - alpha) x cross-entropy. With simulated quantization attached, gradients flow through the
fake quantizers to the float weights (straight-through).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch
from torch import nn

from workloads.datasets import DataSplits
from workloads.training import LossFn, Recipe, TrainResult, train_model

log = logging.getLogger(__name__)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int = 10) -> int:
    """Re-estimate every BatchNorm's running statistics from up to ``max_batches`` batches; returns batches used.

    After pruning, the kept channels' statistics are still right, but a changed upstream (fewer
    channels summed, quantization noise) shifts them; a cumulative average over a few training
    batches fixes that at no training cost.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    used = 0
    try:
        for x, _ in batches:
            if used >= max_batches:
                break
            model(x)
            used += 1
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return used


def distillation_loss(teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> LossFn:
    """Knowledge distillation from a frozen teacher, mixed with cross-entropy on the labels."""
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = torch.softmax(teacher(x) / temperature, dim=1)
        kd = nn.functional.kl_div(torch.log_softmax(logits / temperature, dim=1), target, reduction="batchmean")
        return alpha * temperature**2 * kd + (1 - alpha) * nn.functional.cross_entropy(logits, y)

    return loss


def finetune(
    model: nn.Module,
    data: DataSplits,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 128,
    steps: int | None = None,
    teacher: nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` in place: ``epochs`` with a cosine schedule, or only ``steps`` batches (short recovery).

    The validation split is scored after each epoch only with ``progress`` (its log line is the only reader): an
    episode's recovery and the fixed fine-tune score their own images, and the 5,000 validation images took 2.4 s of a
    5-step ResNet-20 recovery's 4.4 s."""
    recipe = Recipe(
        epochs=1 if steps else epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=0,
        val_size=len(data.val),
        train_limit=steps * batch_size if steps else None,
    )

    def report(record: dict[str, float]) -> None:  # a line per epoch, also where no bar shows (a job log)
        what = f"{steps} steps" if steps else f"epoch {record['epoch']}/{recipe.epochs}"
        log.info(
            "fine-tune %s: train loss %.3f, validation accuracy %.4f (%.0f s)",
            what,
            record["train_loss"],
            record.get("val_acc", float("nan")),
            record["seconds"],
        )

    loss_fn = distillation_loss(teacher) if teacher is not None else None
    on_epoch = report if progress else None
    return train_model(model, data, recipe, seed, progress=progress, loss_fn=loss_fn, on_epoch=on_epoch, validate=progress)
