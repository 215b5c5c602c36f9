"""Training loop shared by every VAE of the package (count VAEs, LDVAE, GMVAE).

A module plugs in through one method, ``training_terms(x, w, s, c, n_samples,
generator, objective=..., kl_weight=...)``, returning per-cell tensors: the
``objective`` to maximise, the ``elbo`` (or ``iwae``) to log, and any named
loss terms (``reconstruction``, ``kl_z``, …) to log.

Loss scaling: each step minimises −(N / B) Σ_{i ∈ batch} objective_i, an
estimate of the full-data negative bound −Σ_i objective_i that is unbiased up
to the dependence that BatchNorm in training mode creates between a cell's
bound and its batch-mates. With ``batch_size=None`` this is exactly the seed's
full-batch loss (one step per epoch).

Training record: one row per epoch, nats per cell (the mean over the cells of
the epoch's minibatches, in training mode at the parameters current when each
minibatch was seen): ``loss`` (−objective), ``elbo``, every loss term, and with
a validation set the same quantities prefixed ``validation_``, evaluated in
eval mode at the end of the epoch with the KL weight 1 (one posterior draw,
the same seeded draws every epoch so epochs are comparable).
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch

__all__ = ["train", "make_optimizer"]


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0):
    """RMSprop (the seed's choice) or Adam (scvi-tools' choice)."""
    name = name.lower()
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=0.01 if weight_decay else 1e-8)
    raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {name!r}")


def _epoch_means(sums: dict, n: int) -> dict:
    return {k: float(v) / n for k, v in sums.items()}


def _validate(module, data, idx, batch_size, n_samples, objective, seed):
    """Validation terms (nats per cell) in eval mode, with fixed draws."""
    gen = torch.Generator(device=data.device)
    gen.manual_seed(seed)
    was = module.training
    module.eval()
    sums = {}
    try:
        with torch.no_grad():
            for b in data.index_batches(idx, batch_size):
                t = module.training_terms(*data.get(b), n_samples, gen, objective=objective, kl_weight=1.0)
                for k, v in t.items():
                    sums[k] = sums.get(k, 0.0) + v.sum()
    finally:
        module.train(was)
    return _epoch_means(sums, len(idx))


def train(module, data, *, lr: float, n_samples: int, max_epochs: int, batch_size,
          objective: str, optimizer: str, generator: torch.Generator,
          rng: np.random.Generator, progress: bool, desc: str = "fit",
          train_idx=None, validation_idx=None, early_stopping: bool = False,
          patience: int = 45, min_delta: float = 0.0, kl_warmup_epochs: int = 0,
          weight_decay: float = 0.0, eval_batch_size: int = 2048):
    """Fit ``module`` in place; return ``(history, best_epoch)``.

    ``history`` is a DataFrame, one row per epoch (see the module docstring).
    With ``early_stopping`` (needs ``validation_idx``) training stops when
    ``validation_loss`` has not improved by more than ``min_delta`` nats per
    cell for ``patience`` epochs, and the weights of the best epoch are
    restored; ``best_epoch`` is that epoch (else the last one). During a KL
    warm-up the validation loss rises with the KL weight, so early stopping
    only counts epochs after the warm-up.

    Raises
    ------
    ValueError
        ``early_stopping`` without a validation set.
    RuntimeError
        If the loss becomes NaN or infinite (the epoch is named).
    """
    if early_stopping and (validation_idx is None or len(validation_idx) == 0):
        raise ValueError("early_stopping needs a validation set: pass train_size < 1")
    if progress:
        # Imported only when asked for: tqdm.auto warns in notebooks without ipywidgets.
        from tqdm.auto import tqdm
    opt = make_optimizer(optimizer, module.parameters(), lr, weight_decay)
    module.train()
    train_idx = np.arange(data.n) if train_idx is None else np.asarray(train_idx)
    n = len(train_idx)
    rows = []
    best, best_epoch, best_state, wait = np.inf, None, None, 0
    bar = tqdm(range(max_epochs), desc=desc, leave=False) if progress else range(max_epochs)
    has_val = validation_idx is not None and len(validation_idx) > 0
    # Drawn only with a validation set, so fits without one shuffle exactly as before.
    val_seed = int(rng.integers(2**31)) if has_val else 0
    for epoch in bar:
        beta = min(1.0, (epoch + 1) / kl_warmup_epochs) if kl_warmup_epochs else 1.0
        sums = {}
        for idx in data.index_batches(train_idx, batch_size, rng):
            terms = module.training_terms(*data.get(idx), n_samples, generator,
                                          objective=objective, kl_weight=beta)
            batch_sum = terms["objective"].sum()
            opt.zero_grad(set_to_none=True)
            (-(n / len(idx)) * batch_sum).backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().sum()
        # One host sync per epoch: the record doubles as the NaN check.
        row = _epoch_means(sums, n)
        row["loss"] = -row.pop("objective")
        if not np.isfinite(row["loss"]):
            raise RuntimeError(f"loss became {row['loss']} at epoch {epoch}; try a smaller lr")
        row = {"epoch": epoch, "kl_weight": beta, **row}
        if has_val:
            val = _validate(module, data, validation_idx, eval_batch_size, 1, objective, val_seed)
            val["loss"] = -val.pop("objective")
            row.update({f"validation_{k}": v for k, v in val.items()})
        rows.append(row)
        if progress and epoch % 10 == 0:
            bar.set_postfix(loss=f"{row['loss']:.4g}")
        if early_stopping and beta == 1.0:
            v = row["validation_loss"]
            if v < best - min_delta:
                best, best_epoch, wait = v, epoch, 0
                best_state = copy.deepcopy(module.state_dict())
            else:
                wait += 1
                if wait >= patience:
                    break
    if progress:
        bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    history = pd.DataFrame(rows)
    if best_epoch is None:
        best_epoch = len(rows) - 1
    return history, best_epoch
