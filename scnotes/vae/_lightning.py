"""The training engine of every VAE: PyTorch Lightning.

:class:`scnotes.vae._plan.TrainingPlan` is a ``LightningModule`` that wraps a pure
``nn.Module``'s ``training_terms`` (see :mod:`scnotes.vae._train` for the contract and
the units of the training record); :func:`fit_lightning` runs a ``Trainer`` over it
and returns the same ``(history, best_epoch)`` as the loop it replaces. The
validation split, early stopping (Lightning's ``EarlyStopping`` plus an
in-memory best-weights callback), the progress bar and the per-epoch record come
from Lightning's callbacks and hooks.

Minibatches: :class:`IndexBatches` yields index arrays (the same seeded shuffle
as before, one ``numpy.random.Generator``); the data object turns an index
array into tensors (rows densified one minibatch at a time, from memory or from
a backed file). Under data-parallel training (``strategy="ddp"``) every rank
draws the same permutation (same seed) and takes a disjoint share of its
minibatches, so an epoch still visits each training cell once; the loss keeps
its full-data scale (each rank's −(N/B) Σ bound, averaged over ranks by DDP, is
the full-data estimate with an effective batch size of B × world size).
BatchNorm: on GPUs its batch statistics are synchronised across ranks
(``sync_batchnorm``); torch's SyncBatchNorm does not run on CPU, where each
rank normalises within its own minibatch of B cells — exactly what one process
with batch size B does — and DDP broadcasts rank 0's running statistics every
step, so all ranks evaluate alike (tests/test_ddp.py: the two-process fit
reaches the one-process held-out ELBO).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import torch


__all__ = ["IndexBatches", "fit_lightning"]


def _world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class IndexBatches(torch.utils.data.Sampler):
    """Minibatch index arrays over ``subset`` of ``data``, reshuffled every epoch with ``rng``.

    With several ranks, rank r takes minibatches r, r + W, r + 2W, … of the
    common permutation (W = world size), cut to a multiple of W so every rank
    runs the same number of steps (DDP needs that); the cells of the cut
    remainder differ from epoch to epoch.
    """

    def __init__(self, data, subset, batch_size, rng):
        self.data, self.subset, self.batch_size, self.rng = data, np.asarray(subset), batch_size, rng

    def __iter__(self):
        pieces = self.data.index_batches(self.subset, self.batch_size, self.rng)
        rank, world = _world()
        if world > 1 and len(pieces) >= world:
            pieces = pieces[rank:(len(pieces) // world) * world:world]
        return iter(pieces)

    def __len__(self):
        # Counted, not built: building the pieces allocated two index arrays of the
        # whole subset each time Lightning asked (16 MB at 1M cells).
        m, b = len(self.subset), self.batch_size
        n = 1 if b is None or b >= m else -(-m // b) - (m % b == 1)
        world = _world()[1]
        return n // world if n >= world else n


class _Rows(torch.utils.data.Dataset):
    """Index array → the ``(x, w, s, c)`` tensors of those rows."""

    def __init__(self, data):
        self.data = data

    def __getitem__(self, idx):
        return self.data.get(idx)

    def __len__(self):
        return self.data.n


def _identity(batch):
    return batch


def fit_lightning(module, data, *, lr, n_samples, max_epochs, batch_size, objective, optimizer,
                  generator, rng, progress, desc="fit", train_idx=None, validation_idx=None,
                  early_stopping=False, patience=45, min_delta=0.0, kl_warmup_epochs=0,
                  weight_decay=0.0, eval_batch_size=2048, accelerator=None, devices=None,
                  strategy=None, sync_batchnorm=None, **trainer_kwargs):
    """Fit ``module`` in place with a Lightning ``Trainer``; return ``(history, best_epoch)``.

    ``module`` has ``training_terms`` (the contract in :mod:`scnotes.vae._train`); ``data`` is a
    :class:`scnotes.vae._data.CountData`. Each epoch shuffles ``train_idx`` with ``rng`` into
    minibatches of ``batch_size`` (None: full batch) and minimises −(N/B) Σ objective with
    ``optimizer`` ("rmsprop"/"adam", ``lr``, ``weight_decay``), ``n_samples`` Monte Carlo draws
    from ``generator`` per step and the KL weight min(1, epoch/``kl_warmup_epochs``). With
    ``validation_idx`` the record gains ``validation_*`` columns (eval mode, fixed draws);
    ``early_stopping`` stops after ``patience`` epochs without a gain of ``min_delta`` nats per
    cell in ``validation_loss`` (counted after the warm-up) and restores the best weights.
    Also ``accelerator``, ``devices``, ``strategy`` (passed to ``lightning.pytorch.Trainer``; ``"ddp"`` becomes a DDP
    strategy that tolerates parameters without gradients) and ``sync_batchnorm``
    (default: on when several processes train on GPUs; SyncBatchNorm is GPU-only).

    Raises
    ------
    ValueError : early stopping without a validation set.
    RuntimeError : the loss became NaN or infinite.
    """
    import lightning.pytorch as pl

    from .._settings import resolve_progress
    # The plan imports lightning at its top: loaded here, so `import scnotes.vae` stays light.
    from ._plan import BestWeights, TrainingPlan, WarmupAwareEarlyStopping

    progress = resolve_progress(progress)  # None: scnotes.settings.progress

    has_val = validation_idx is not None and len(validation_idx) > 0
    if early_stopping and not has_val:
        raise ValueError("early_stopping needs a validation set: pass train_size < 1")
    train_idx = np.arange(data.n) if train_idx is None else np.asarray(train_idx)
    # Drawn only with a validation set, so fits without one shuffle as they always did.
    val_seed = int(rng.integers(2**31)) if has_val else 0
    plan = TrainingPlan(module, n_train=len(train_idx), lr=lr, optimizer=optimizer,
                        weight_decay=weight_decay, n_samples=n_samples, objective=objective,
                        kl_warmup_epochs=kl_warmup_epochs, generator=generator, val_seed=val_seed)
    rows = _Rows(data)
    # Own generators: a DataLoader otherwise draws a base seed from torch's global
    # RNG every epoch, which would shift the dropout draws.
    loader = torch.utils.data.DataLoader(rows, sampler=IndexBatches(data, train_idx, batch_size, rng),
                                         batch_size=None, collate_fn=_identity,
                                         generator=torch.Generator().manual_seed(0))
    val_loader = (torch.utils.data.DataLoader(
        rows, sampler=IndexBatches(data, np.asarray(validation_idx), eval_batch_size, None),
        batch_size=None, collate_fn=_identity, generator=torch.Generator().manual_seed(0))
        if has_val else None)
    callbacks = []
    best = None
    if early_stopping:
        # Lightning's EarlyStopping counts epochs without improvement; during a KL
        # warm-up the validation loss rises with the KL weight, so it starts after it.
        callbacks.append(WarmupAwareEarlyStopping(kl_warmup_epochs, monitor="validation_loss",
                                                  patience=patience, min_delta=min_delta, mode="min",
                                                  check_on_train_epoch_end=False))
        best = BestWeights()
        callbacks.append(best)
    if accelerator is None:
        accelerator = "gpu" if data.device.type == "cuda" else "cpu"
    if isinstance(strategy, str) and strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=True)
    multi = strategy not in (None, "auto") or (isinstance(devices, int) and devices > 1)
    kw = dict(max_epochs=max_epochs, accelerator=accelerator, devices=devices or 1,
              strategy=strategy or "auto",
              sync_batchnorm=(multi and accelerator == "gpu") if sync_batchnorm is None else sync_batchnorm,
              logger=False, enable_checkpointing=False, enable_model_summary=False,
              enable_progress_bar=bool(progress), num_sanity_val_steps=0,
              limit_val_batches=1.0 if has_val else 0, callbacks=callbacks,
              use_distributed_sampler=False)
    kw.update(trainer_kwargs)
    plan._log_loss = bool(progress) or "callbacks" in trainer_kwargs
    if max_epochs == 0:
        return pd.DataFrame(columns=["epoch", "loss"]), -1
    quiet = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer = pl.Trainer(**kw)
            trainer.fit(plan, loader, val_loader)
    finally:
        for q, lv in zip(quiet, levels):
            q.setLevel(lv)
        # Lightning's teardown moves the LightningModule (and so this module) back to the CPU;
        # the estimator's weights belong on its own device, where latent/elbo/predict run.
        module.to(data.device)
        _revert_sync_batchnorm(module)
    history = pd.DataFrame(plan.rows)
    best_epoch = best.epoch if best is not None and best.epoch is not None else len(plan.rows) - 1
    return history, best_epoch


def _revert_sync_batchnorm(module):
    """Turn the SyncBatchNorm layers that ``sync_batchnorm`` put into ``module`` back
    into BatchNorm1d (same weights and running statistics), so the fitted model
    evaluates and refits in a single process."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.SyncBatchNorm):
            bn = torch.nn.BatchNorm1d(child.num_features, eps=child.eps, momentum=child.momentum,
                                      affine=child.affine, track_running_stats=child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn.to(next(child.buffers()).device))
        else:
            _revert_sync_batchnorm(child)
