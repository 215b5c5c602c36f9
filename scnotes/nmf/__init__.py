"""Poisson NMF, weighted NMF, NB matrix factorisation and the topic-model form.

- :class:`PoissonNMF` / :func:`poisson_nmf`: x ~ Poisson(L Fᵀ), optional weights/mask,
  ``method="mu"`` (multiplicative updates = EM) or ``"scd"`` (coordinate descent
  with extrapolation, much faster); sparse counts stay sparse.
- :class:`NBMF` / :func:`nbmf`: x ~ Poisson(u · L Fᵀ), u ~ Gamma(θ, θ) (Gouvert et al. 2018), by EM.
- :func:`poisson_to_topics` / :func:`topics_to_poisson`: L Fᵀ = diag(s) · P · Tᵀ.
- :func:`topic_lfc` / :func:`distinctive_genes`: genes ranked by distinctiveness
  (fastTopics' least-extreme log-fold change).

Every estimator follows the contract of ``DEVELOPING.md``: ``max_epochs`` (sweeps;
``max_iter`` is the older name), ``history_`` (one row per sweep), ``theta`` for the
NB inverse dispersion, ``progress``, ``seed`` (never the global random state),
``save(path)`` / ``Class.load(path)``.
"""
from ._poisson import PoissonNMF, poisson_loglik, poisson_nmf
from ._nb import NBMF, nb_loglik, nbmf
from ._topics import TopicModel, distinctive_genes, poisson_to_topics, topic_lfc, topics_to_poisson

__all__ = ["PoissonNMF", "poisson_nmf", "poisson_loglik", "NBMF", "nbmf", "nb_loglik",
           "TopicModel", "poisson_to_topics", "topics_to_poisson", "topic_lfc", "distinctive_genes"]
