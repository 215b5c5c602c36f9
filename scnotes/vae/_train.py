"""Training loop for :class:`~scnotes.vae._module.CountVAEModule`.

Loss scaling: each step minimises −(N / B) Σ_{i ∈ batch} bound_i, an unbiased
estimate of the full-data negative bound −Σ_i bound_i. With ``batch_size=None``
this is exactly the seed's full-batch loss (one step per epoch).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["train", "make_optimizer"]


def make_optimizer(name: str, params, lr: float):
    """RMSprop (the seed's choice, default) or Adam."""
    name = name.lower()
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"optimizer must be 'rmsprop' or 'adam', got {name!r}")


def train(module, data, *, lr: float, n_samples: int, max_epochs: int, batch_size,
          objective: str, optimizer: str, generator: torch.Generator,
          rng: np.random.Generator, trace: bool, progress: bool, desc: str = "fit"):
    """Fit ``module`` in place; return the per-epoch negative bound (list) or None.

    The recorded value of an epoch is Σ over its minibatches of −Σ_i bound_i,
    i.e. the negative ELBO (or negative IWAE bound for ``objective="iwae"``)
    summed over all cells at full-data scale, evaluated in training mode at
    the parameters current when each minibatch was seen.

    Raises
    ------
    RuntimeError
        If the loss becomes NaN or infinite (the epoch is named).
    """
    if progress:
        # Imported only when asked for: tqdm.auto warns in notebooks without ipywidgets.
        from tqdm.auto import tqdm
    opt = make_optimizer(optimizer, module.parameters(), lr)
    module.train()
    history = [] if trace else None
    n = data.n
    bar = tqdm(range(max_epochs), desc=desc, leave=False) if progress else range(max_epochs)
    for epoch in bar:
        total = None
        for idx, (x, w, s, c) in data.batches(batch_size, rng):
            bound = module.objective(x, w, s, c, n_samples, generator, kind=objective)
            batch_sum = bound.sum()
            opt.zero_grad(set_to_none=True)
            (-(n / len(idx)) * batch_sum).backward()
            opt.step()
            step_loss = -batch_sum.detach()
            total = step_loss if total is None else total + step_loss
        # One host sync per epoch: the trace value doubles as the NaN check.
        value = float(total)
        if not np.isfinite(value):
            raise RuntimeError(f"loss became {value} at epoch {epoch}; try a smaller lr")
        if history is not None:
            history.append(value)
        if progress and epoch % 10 == 0:
            bar.set_postfix(loss=f"{value:.4g}")
    if progress:
        bar.close()
    return history
