"""Mutual nearest neighbours (MNN) and MNN batch correction.

- :func:`find_mutual_nn`, :func:`knn_query`, :func:`pair_recall`: MNN pairs with
  an exact or an approximate neighbour search (pynndescent, or FAISS's
  inverted-file index, ``backend="faiss"``: the one for embeddings of 10^5-10^6
  cells, which keeps the recall of exact pairs across a strong batch shift;
  ``n_candidates`` trades recall for time).
- :func:`mnn_correct`: batchelor's ``mnnCorrect`` on (log-)expression values,
  step by step (:func:`cosine_normalize`, :func:`average_pair_vectors`,
  :func:`smooth_gaussian_kernel`, :func:`shift_variance_scaling`).
- :func:`fastmnn_correct`: fastMNN-style correction of an embedding (PCs,
  topic proportions, a VAE latent): :func:`center_along_batch_vector`,
  :func:`tricube_weighted_correction`.
- :class:`MNNResult`: what a correction returns; stored in an AnnData by
  :func:`scnotes.tl.mnn` and read back with :meth:`MNNResult.from_adata`.
- :func:`pair_summary`, :func:`score_methods`, :func:`compare_backends`: checks
  of the pairs, integration scores, exact vs approximate search.
- :func:`load_data`: deprecated, the older name of ``scnotes.datasets.load(name, curated=True)``
  (the curated sets of the chapter ``mnn_topics`` are in :data:`scnotes.datasets.CURATED`).
- :func:`harmony_embedding`, :func:`bbknn_graph`, :func:`method_story`, :func:`discussion_numbers`: that chapter's baselines and the numbers and words of its discussion.

Names follow DEVELOPING.md: the neighbour count is ``n_neighbors`` (``k``,
batchelor's name, is accepted as an alias); ``seed`` seeds every draw (only the
approximate search draws anything) and the caller's global random state is
never touched.

Reference: Haghverdi, Lun, Morgan & Marioni (2018) Nat Biotechnol 36:421.
"""
from ._neighbors import BACKENDS, find_mutual_nn, knn_query, pair_recall, resolve_n_neighbors
from ._merge import MergeStep
from ._correct import (MNNResult, average_pair_vectors, compute_correction_vectors,
                       cosine_normalize, mnn_correct, shift_variance_scaling,
                       smooth_gaussian_kernel)
from ._embedding import (center_along_batch_vector, fastmnn_correct, tricube_weighted_correction,
                         tricube_weights)
from ._evaluate import compare_backends, pair_summary, score_methods
from ._data import BOOK_DATASETS, PBMC_LABELS, load_data
from ._study import STORY_WORDS, bbknn_graph, discussion_numbers, harmony_embedding, method_story

__all__ = [
    "BACKENDS", "find_mutual_nn", "knn_query", "pair_recall", "resolve_n_neighbors", "MergeStep",
    "MNNResult", "average_pair_vectors", "compute_correction_vectors", "cosine_normalize",
    "mnn_correct", "shift_variance_scaling", "smooth_gaussian_kernel", "center_along_batch_vector",
    "fastmnn_correct", "tricube_weighted_correction", "tricube_weights", "pair_summary",
    "score_methods", "compare_backends", "load_data", "BOOK_DATASETS", "PBMC_LABELS",
]
__all__ += ["harmony_embedding", "bbknn_graph", "method_story", "discussion_numbers", "STORY_WORDS"]
