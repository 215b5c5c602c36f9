"""Fit several independent estimators at once, one worker process per core."""
from __future__ import annotations

import copy

__all__ = ["fit_many"]


def _fit_copy(model, x, n_threads, kwargs):
    """Fit a copy of ``model`` (run in a worker process); the caller's object stays unfitted."""
    if n_threads is not None:
        import torch

        torch.set_num_threads(int(n_threads))
    return copy.deepcopy(model).fit(x, **kwargs)


def fit_many(models, x, *, fit_kwargs=None, n_jobs: int | None = None, n_threads: int | None = None,
             **kwargs) -> list:
    """Fit independent estimators in parallel worker processes; return the fitted ones in order.

    A comparison over sizes, seeds, likelihoods or training lengths fits many small
    models that do not depend on each other. Their networks and matrices are too small
    for threads within one fit to pay off (see :func:`scnotes.pp.configure_threads`),
    so one fit per core finishes sooner. This is scikit-learn's own pattern for
    independent fits (``joblib.Parallel`` over ``fit``, as in
    ``sklearn.multioutput.MultiOutputRegressor``).

    Each fit draws its random numbers from its own ``seed`` (the estimators' contract),
    so the fitted models are the ones a loop of ``model.fit(x, ...)`` gives, in any
    worker and any order. The models passed in are not changed: each worker fits a
    copy and the copies are returned.

    Parameters
    ----------
    models : sequence of unfitted estimators
        Anything whose ``fit(x, **kwargs)`` returns the fitted estimator (every scnotes
        VAE and NMF). Their hyperparameters (``n_latent``, ``n_components``, ``seed``)
        are set when they are built.
    x : array or scipy.sparse matrix, n_cells × n_genes
        Raw counts, passed to every ``fit``.
    fit_kwargs : sequence of dict, optional
        One dict per model of the ``fit`` arguments that differ between models
        (e.g. ``max_epochs`` of a VAE); they override ``kwargs``.
    n_jobs : int, optional
        Worker processes (None: ``min(number of CPUs, len(models))``; 1: fit in this
        process, one after another).
    n_threads : int, optional
        torch intra-op threads in each worker (a chapter's ``n_threads``; None: leave
        the worker's setting).
    **kwargs
        ``fit`` arguments shared by every model (``w``, ``s``, ``lr``, ``max_epochs``, …).

    Returns
    -------
    list
        The fitted estimators, in the order of ``models``.

    Raises
    ------
    ValueError
        ``fit_kwargs`` is not one dict per model, ``n_jobs`` or ``n_threads`` is not a
        positive integer, or a model has no ``fit`` method.
    """
    from joblib import Parallel, cpu_count, delayed

    models = list(models)
    bad = [i for i, m in enumerate(models) if not callable(getattr(m, "fit", None))]
    if bad:
        raise ValueError(f"models {bad} have no fit method (pass unfitted estimators, e.g. PVAE(...))")
    per_model = [{}] * len(models) if fit_kwargs is None else list(fit_kwargs)
    if len(per_model) != len(models) or not all(isinstance(d, dict) for d in per_model):
        raise ValueError(f"fit_kwargs must be one dict per model: {len(models)} models, "
                         f"got {len(per_model)} entries")
    for name, v in (("n_jobs", n_jobs), ("n_threads", n_threads)):
        if v is not None and (int(v) != v or v < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
    if not models:
        return []
    n_jobs = min(cpu_count(), len(models)) if n_jobs is None else int(n_jobs)
    return Parallel(n_jobs=n_jobs)(delayed(_fit_copy)(m, x, n_threads, {**kwargs, **own})
                                   for m, own in zip(models, per_model))
