"""The Lightning ``TrainingPlan`` of every VAE, and the two callbacks of early stopping.

scvi-tools' split (``scvi/train/_trainingplans.py``): a pure ``nn.Module`` computes
the terms of one minibatch (``training_terms`` → :class:`~scnotes.vae._train.LossTerms`),
the plan turns them into a loss and a training record, the estimator owns the data.
This module imports ``lightning`` at its top, so it is itself imported lazily, by
:func:`scnotes.vae._lightning.fit_lightning` (``import scnotes.vae`` does not load
Lightning). Record columns and units: :mod:`scnotes.vae._train`.
"""
from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping

from . import _lightning
from ._train import make_optimizer

__all__ = ["TrainingPlan", "BestWeights", "WarmupAwareEarlyStopping"]


class TrainingPlan(pl.LightningModule):
    """Wraps ``module.training_terms``: each step minimises (N/B) Σ_batch loss; one record row per epoch.

    Parameters
    ----------
    module : ``nn.Module`` with ``training_terms`` (the contract in :mod:`scnotes.vae._train`)
    n_train : int, N, training cells (the loss's full-data scale)
    lr, optimizer, weight_decay : the optimiser (:func:`~scnotes.vae._train.make_optimizer`)
    n_samples : int, Monte Carlo draws per step
    objective : "elbo" or "iwae", passed to ``training_terms``
    kl_warmup_epochs : int, the KL weight is min(1, (epoch + 1) / ``kl_warmup_epochs``) (0: 1)
    generator : ``torch.Generator`` of the training draws
    val_seed : int, seeds the validation draws, the same every epoch

    ``rows`` holds the record: one dict per epoch (``epoch``, ``kl_weight``, the
    ``LossTerms`` columns as means per cell, and ``validation_*`` with a validation set).
    """

    def __init__(self, module, *, n_train, lr, optimizer, weight_decay, n_samples, objective,
                 kl_warmup_epochs, generator, val_seed):
        super().__init__()
        self.module = module
        self.n_train, self.lr, self.optimizer_name = n_train, lr, optimizer
        self.weight_decay, self.n_samples, self.objective = weight_decay, n_samples, objective
        self.kl_warmup_epochs, self.generator, self.val_seed = kl_warmup_epochs, generator, val_seed
        self.rows, self._sums, self._val, self._n_seen = [], {}, {}, 0
        self._log_loss = True

    def on_fit_start(self):
        # One stream of Monte Carlo draws per rank, on the rank's own device
        # (the estimator's generator lives on the model's device, rank 0's).
        rank, world = _lightning._world()
        if world > 1 or self.generator.device != self.device:
            seed = self.generator.initial_seed() + rank
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(seed)

    def kl_weight(self):
        e = self.current_epoch
        return min(1.0, (e + 1) / self.kl_warmup_epochs) if self.kl_warmup_epochs else 1.0

    @staticmethod
    def _accumulate(sums, terms):
        for k, v in terms.columns().items():
            sums[k] = sums.get(k, 0.0) + v.detach().sum()

    def training_step(self, batch, batch_idx):
        x, w, s, c = batch
        terms = self.module.training_terms(x, w, s, c, self.n_samples, self.generator,
                                           objective=self.objective, kl_weight=self.kl_weight())
        self._accumulate(self._sums, terms)
        self._n_seen += x.shape[0]
        return (self.n_train / x.shape[0]) * terms.loss.sum()

    def on_train_epoch_start(self):
        self._sums, self._n_seen = {}, 0

    def on_validation_epoch_start(self):
        # The same draws every epoch, so validation losses are comparable.
        self._val_gen = torch.Generator(device=self.device)
        self._val_gen.manual_seed(self.val_seed)
        self._val, self._val_n = {}, 0

    def validation_step(self, batch, batch_idx):
        x, w, s, c = batch
        terms = self.module.training_terms(x, w, s, c, 1, self._val_gen,
                                           objective=self.objective, kl_weight=1.0)
        self._accumulate(self._val, terms)
        self._val_n += x.shape[0]

    def on_validation_epoch_end(self):
        if not self._val_n:
            return
        val = self._reduce(self._val, self._val_n)
        self._last_val = {f"validation_{k}": v for k, v in val.items()}
        # Logged for EarlyStopping; the record itself is kept in self.rows.
        self.log("validation_loss", val["loss"], prog_bar=True, logger=False)

    def _reduce(self, sums, n):
        """Means per cell over every rank's cells, in the order of ``sums`` (the record's)."""
        keys = list(sums)
        t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=self.device)
                         for k in keys] + [torch.tensor(float(n), dtype=torch.float64, device=self.device)])
        if _lightning._world()[1] > 1:
            torch.distributed.all_reduce(t)
        return {k: float(v) / float(t[-1]) for k, v in zip(keys, t[:-1])}

    def on_train_epoch_end(self):
        # Cells seen this epoch, over all ranks (all of them in one process).
        row = self._reduce(self._sums, self._n_seen)
        if not np.isfinite(row["loss"]):
            raise RuntimeError(f"loss became {row['loss']} at epoch {self.current_epoch}; "
                               "try a smaller lr")
        self._sums = {}
        row = {"epoch": self.current_epoch, "kl_weight": self.kl_weight(), **row}
        row.update(getattr(self, "_last_val", {}))
        self.rows.append(row)
        if self._log_loss:
            # Lightning's logging costs ~0.2 ms a call, a tenth of a small full-batch
            # epoch; the record is self.rows, so log only for a bar or user callbacks.
            self.log("loss", row["loss"], prog_bar=True, logger=False)

    def configure_optimizers(self):
        return make_optimizer(self.optimizer_name, self.module.parameters(), self.lr, self.weight_decay)


class BestWeights(pl.Callback):
    """Keep (in memory) the weights of the epoch with the lowest validation loss
    once the KL warm-up is over, and restore them when training ends."""

    def __init__(self):
        self.best, self.state, self.epoch = math.inf, None, None

    def on_validation_end(self, trainer, plan):
        # After the plan's on_validation_epoch_end, so this epoch's value is there.
        v = getattr(plan, "_last_val", {}).get("validation_loss")
        if v is not None and plan.kl_weight() == 1.0 and v < self.best:
            self.best, self.epoch = v, plan.current_epoch
            self.state = copy.deepcopy(plan.module.state_dict())

    def on_train_end(self, trainer, plan):
        if self.state is not None:
            plan.module.load_state_dict(self.state)


class WarmupAwareEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping``, counting only from the end of a KL warm-up of
    ``warmup`` epochs (during it the validation loss rises with the KL weight)."""

    def __init__(self, warmup: int, **kwargs):
        super().__init__(**kwargs)
        self.warmup = warmup

    def _run_early_stopping_check(self, trainer):
        if trainer.current_epoch + 1 < self.warmup:
            return
        super()._run_early_stopping_check(trainer)
