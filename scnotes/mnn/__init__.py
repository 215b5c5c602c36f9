"""Mutual nearest neighbours (MNN) and MNN batch correction.

- :func:`find_mutual_nn`, :func:`knn_query`, :func:`pair_recall`: MNN pairs with
  an exact or an approximate (pynndescent) neighbour search.
- :func:`mnn_correct`: batchelor's ``mnnCorrect`` on (log-)expression values,
  step by step (:func:`cosine_normalize`, :func:`average_pair_vectors`,
  :func:`smooth_gaussian_kernel`, :func:`shift_variance_scaling`).
- :func:`fastmnn_correct`: fastMNN-style correction of an embedding (PCs,
  topic proportions, a VAE latent): :func:`center_along_batch_vector`,
  :func:`tricube_weighted_correction`.

Reference: Haghverdi, Lun, Morgan & Marioni (2018) Nat Biotechnol 36:421.
"""
from ._neighbors import BACKENDS, find_mutual_nn, knn_query, pair_recall
from ._merge import MergeStep
from ._correct import (MNNResult, average_pair_vectors, compute_correction_vectors,
                       cosine_normalize, mnn_correct, shift_variance_scaling,
                       smooth_gaussian_kernel)
from ._embedding import (center_along_batch_vector, fastmnn_correct, tricube_weighted_correction,
                         tricube_weights)

__all__ = [
    "BACKENDS", "find_mutual_nn", "knn_query", "pair_recall", "MergeStep", "MNNResult",
    "average_pair_vectors", "compute_correction_vectors", "cosine_normalize", "mnn_correct",
    "shift_variance_scaling", "smooth_gaussian_kernel", "center_along_batch_vector",
    "fastmnn_correct", "tricube_weighted_correction", "tricube_weights",
]
