"""Poisson NMF, weighted NMF, NB matrix factorisation and the topic-model form.

- :class:`PoissonNMF` / :func:`poisson_nmf`: x ~ Poisson(L Fᵀ), optional weights/mask,
  ``method="mu"`` (multiplicative updates = EM) or ``"scd"`` (coordinate descent
  with extrapolation, much faster); sparse counts stay sparse.
- :class:`NBMF` / :func:`nbmf`: x ~ Poisson(u · L Fᵀ), u ~ Gamma(θ, θ) (Gouvert et al. 2018), by EM.
- :func:`poisson_to_topics` / :func:`topics_to_poisson`: L Fᵀ = diag(s) · P · Tᵀ.
"""
from ._poisson import PoissonNMF, poisson_loglik, poisson_nmf
from ._nb import NBMF, nb_loglik, nbmf
from ._topics import TopicModel, poisson_to_topics, topics_to_poisson

__all__ = ["PoissonNMF", "poisson_nmf", "poisson_loglik", "NBMF", "nbmf", "nb_loglik",
           "TopicModel", "poisson_to_topics", "topics_to_poisson"]
