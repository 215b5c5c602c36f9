"""Poisson NMF, weighted NMF, NB matrix factorisation and the topic-model form.

- :class:`PoissonNMF` / :func:`poisson_nmf`: x ~ Poisson(L Fᵀ), optional weights/mask,
  ``method="mu"`` (multiplicative updates = EM) or ``"scd"`` (coordinate descent
  with extrapolation, much faster); sparse counts stay sparse.
- :class:`NBMF` / :func:`nbmf`: x ~ Poisson(u · L Fᵀ), u ~ Gamma(θ, θ) (Gouvert et al. 2018), by EM.
- :func:`poisson_nmf_loglik` / :func:`nbmf_loglik`: the weighted total log-likelihood (nats) of
  factors (L, F) (``poisson_loglik`` / ``nb_loglik``: older names, deprecated; held-out scores of
  predicted means are :func:`scnotes.metrics.poisson_loglik` / ``nb_loglik``).
- :func:`poisson_to_topics` / :func:`topics_to_poisson`: L Fᵀ = diag(s) · P · Tᵀ.
- :func:`topic_lfc` / :func:`distinctive_genes`: genes ranked by distinctiveness
  (fastTopics' least-extreme log-fold change).

Every estimator follows the contract of ``DEVELOPING.md``: ``max_epochs`` (sweeps;
``max_iter`` is the older name), ``history_`` (one row per sweep), ``theta`` for the
NB inverse dispersion, ``progress``, ``seed`` (never the global random state),
``save(path)`` / ``Class.load(path)``.
"""
import warnings

from ._poisson import PoissonNMF, poisson_nmf
from ._poisson import poisson_loglik as poisson_nmf_loglik
from ._nb import NBMF, nbmf
from ._nb import nb_loglik as nbmf_loglik
from ._topics import TopicModel, distinctive_genes, poisson_to_topics, topic_lfc, topics_to_poisson

__all__ = ["PoissonNMF", "poisson_nmf", "poisson_nmf_loglik", "NBMF", "nbmf", "nbmf_loglik",
           "TopicModel", "poisson_to_topics", "topics_to_poisson", "topic_lfc", "distinctive_genes"]

# Older names of the factorisations' log-likelihoods. They took the names of
# scnotes.metrics.poisson_loglik / nb_loglik, which score predicted means (mean per entry by
# default) where these take factors (L, F) and return the weighted total: one name, one meaning.
_OLDER = {"poisson_loglik": "poisson_nmf_loglik", "nb_loglik": "nbmf_loglik"}


def __getattr__(name):
    if name in _OLDER:
        # stacklevel=1: attributed to scnotes.nmf, not to the caller's __main__ (a chapter's
        # cells), so it never shows on an executed page; pytest and -W error see it
        # (the pattern of scnotes.tl._front._caller_stacklevel).
        warnings.warn(f"scnotes.nmf.{name} is the older name of scnotes.nmf.{_OLDER[name]} (the factors' "
                      f"total log-likelihood; scnotes.metrics.{name} scores predicted means); it goes "
                      "in the next release", DeprecationWarning, stacklevel=1)
        return globals()[_OLDER[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
