"""Architecture surgery for reference mapping (scArches; Lotfollahi et al. 2022,
Nat Biotechnol 40:121): a query model that is the reference model plus new
covariate columns, trained on the query with everything learnt from the
reference frozen.

Where the covariates enter. In every scnotes VAE (PVAE / NBVAE / ZINBVAE,
LDVAE, GMVAE) the encoder sees the counts only and the covariates (batch
one-hot first, then further categorical keys) are concatenated to the latent
at the decoder's input, so one ``nn.Linear`` takes [z, c]: the first hidden
layer of the MLP decoder, or the linear decoder's W itself. Surgery widens
that layer by one input column per new category, placed at the end of its
key's one-hot block (so the batch block stays the first ``n_batches``
columns), and trains only those columns. This is scArches' recipe for a model
whose encoder does not encode covariates (scvi-tools' default,
``encode_covariates=False``): the query latent is the frozen reference
encoder's, and the new columns give the decoder the query batch's offsets,
which is what the query's likelihood, ELBO and expected counts need.

Frozen means bit-identical: every reference parameter and buffer (BatchNorm
running statistics included, since BatchNorm layers run in eval mode during
query training, scArches' ``freeze_batchnorm``) keeps its value, and the
reference model object is never modified (its weights are copied). Optionally
(``train_encoder_first_layer``) the encoder's first linear layer is trained
too, the part of scArches' encoder surgery that exists here: it lets the
encoder adapt to a query whose counts differ in ways the reference never saw
(another chemistry), at the cost of that one layer no longer being the
reference's.

New columns start at the mean of their block's reference columns ("an average
reference batch"), not at random: the query's ELBO starts where the reference
decoder would put an unknown batch, and no random draw is needed.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._module import LinearDecoder, MLPDecoder

__all__ = ["extend_registry", "column_map", "covariate_linear", "query_model", "freeze_for_query",
           "unfreeze"]


def extend_registry(registry, query_categories):
    """The registry of the query model and the categories it adds.

    ``registry``: the reference's ``[(key, [categories…]), …]``; ``query_categories``:
    ``{key: [categories seen in the query, in order]}``. Returns ``(new_registry,
    new_categories)`` with each key's reference categories first (same order) and the
    query's unseen ones after them; ``new_categories`` is ``{key: [added…]}`` (keys
    with none added are left out).
    """
    new_reg, added = [], {}
    for key, cats in registry:
        cats = [str(c) for c in cats]
        extra = [str(c) for c in query_categories.get(key, []) if str(c) not in cats]
        extra = list(dict.fromkeys(extra))
        if extra:
            added[key] = extra
        new_reg.append((key, cats + extra))
    return new_reg, added


def column_map(registry, new_registry):
    """Covariate column positions: ``(old_to_new, new_columns, new_blocks)``.

    ``old_to_new[j]`` is where reference column j sits in the query layout;
    ``new_columns`` the query-only columns; ``new_blocks[m]`` the reference columns of
    the key block of ``new_columns[m]`` (whose mean initialises it).
    """
    old_to_new, new_cols, new_blocks = [], [], []
    o = n = 0
    for (key, cats), (key2, cats2) in zip(registry, new_registry):
        if key != key2 or list(cats2[:len(cats)]) != list(cats):
            raise ValueError(f"registry key {key!r}: the query layout must extend the reference's")
        old_to_new += [n + i for i in range(len(cats))]
        block = list(range(o, o + len(cats)))
        for m in range(len(cats), len(cats2)):
            new_cols.append(n + m)
            new_blocks.append(block)
        o += len(cats)
        n += len(cats2)
    return np.asarray(old_to_new, dtype=np.int64), np.asarray(new_cols, dtype=np.int64), new_blocks


def covariate_linear(module):
    """``(owner, attribute name)`` of the ``nn.Linear`` that takes [z, c] in ``module``.

    Raises
    ------
    TypeError : the decoder is neither :class:`MLPDecoder` nor :class:`LinearDecoder`.
    """
    dec = module.decoder
    if isinstance(dec, MLPDecoder):
        return dec.net, "0"
    if isinstance(dec, LinearDecoder):
        return dec, "linear"
    raise TypeError(f"reference mapping knows the MLP and linear decoders, not {type(dec).__name__}")


def _widen(weight, old_to_new, new_cols, new_blocks, n_latent, n_in):
    """The [z, c] weight (out × (K + C)) laid out for K + C' inputs, new columns at
    the mean of their block's reference columns."""
    out = weight.new_zeros(weight.shape[0], n_in)
    out[:, :n_latent] = weight[:, :n_latent]
    out[:, n_latent + torch.as_tensor(old_to_new)] = weight[:, n_latent:]
    for col, block in zip(new_cols, new_blocks):
        out[:, n_latent + col] = weight[:, n_latent + torch.as_tensor(block)].mean(1)
    return out


def query_model(reference, new_registry, seed: int, library_stats=None):
    """A new estimator of the reference's class for the covariate layout ``new_registry``,
    with every reference weight copied (the reference is not modified).

    ``library_stats``: ``{new batch column: (mean, var) of log library}`` for models with
    ``library="latent"`` (the per-batch prior of the new batches, from the query).
    """
    reg = reference.covariate_registry_
    old_to_new, new_cols, new_blocks = column_map(reg, new_registry)
    n_cov = sum(len(c) for _, c in new_registry)
    has_batch = reference.n_batches > 0
    n_batches = len(new_registry[0][1]) if has_batch else 0
    kw = dict(reference._init_kwargs(), n_covariates=n_cov, n_batches=n_batches, seed=int(seed))
    q = type(reference)(**kw, device=reference.device)
    owner, name = covariate_linear(reference.module)
    lin_key = _param_prefix(reference.module, getattr(owner, name)) + "weight"
    k = reference.n_latent
    state = {key: v.detach().clone() for key, v in reference.module.state_dict().items()}
    state[lin_key] = _widen(state[lin_key], old_to_new, new_cols, new_blocks, k, k + n_cov)
    if getattr(reference.module, "library", "observed") == "latent" and has_batch:
        # The batch block comes first, so new batches are columns n_batches_ref … n_batches − 1.
        nb_ref = reference.n_batches
        for buf, j in (("library_log_mean", 0), ("library_log_var", 1)):
            old = state[buf]
            new = torch.cat([old, old.mean().expand(n_batches - nb_ref)])
            for col in range(nb_ref, n_batches):
                if library_stats and col in library_stats:
                    new[col] = float(library_stats[col][j])
            state[buf] = new
    q.module.load_state_dict(state)
    q.var_names_ = None if reference.var_names_ is None else np.array(reference.var_names_, dtype=object)
    q.covariate_registry_ = [(key, list(cats)) for key, cats in new_registry]
    q.covariate_names_ = [f"{key}={v}" for key, cats in new_registry for v in cats]
    q._s_mode, q._s_value = reference._s_mode, reference._s_value
    q._n_train = getattr(reference, "_n_train", None)
    return q, old_to_new, new_cols


def _param_prefix(module, target):
    for name, sub in module.named_modules():
        if sub is target:
            return name + "."
    raise LookupError("layer not found in module")


class _EvalBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm that always normalises with its running statistics and never updates
    them, whatever its ``training`` flag says: Lightning sets the flag of every submodule
    directly (not through ``train()``) when it switches between training and validation."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


class _SurgeryLinear(nn.Module):
    """The [z, c] layer during query training: reference columns (and bias) frozen as
    buffers, the query's new columns the only parameter."""

    def __init__(self, linear: nn.Linear, new_cols: np.ndarray, n_latent: int):
        super().__init__()
        cols = torch.as_tensor(n_latent + new_cols, dtype=torch.long, device=linear.weight.device)
        self.register_buffer("cols", cols)
        self.register_buffer("base", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.new = nn.Parameter(linear.weight.detach()[:, cols].clone())

    def forward(self, x):
        return F.linear(x, self.base.index_copy(1, self.cols, self.new), self.bias)

    def fold(self) -> nn.Linear:
        """The plain ``nn.Linear`` with the trained columns in place."""
        out_f, in_f = self.base.shape
        # skip_init: a fresh Linear would draw its initial weights from the global RNG.
        lin = nn.utils.skip_init(nn.Linear, in_f, out_f, bias=self.bias is not None,
                                 device=self.base.device, dtype=self.base.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.base.index_copy(1, self.cols, self.new))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin


def freeze_for_query(q, new_cols, train_encoder_first_layer: bool = False):
    """Put the query model's module in its surgery state: all parameters frozen except
    the new [z, c] columns (and, if asked, the encoder's first Linear); BatchNorm in eval
    mode. Undo with :func:`unfreeze` (which folds the new columns back in)."""
    m = q.module
    for p in m.parameters():
        p.requires_grad_(False)
    for sub in m.modules():
        if type(sub) is nn.BatchNorm1d:
            sub.__class__ = _EvalBatchNorm1d
    if len(new_cols):
        owner, name = covariate_linear(m)
        setattr(owner, name, _SurgeryLinear(getattr(owner, name), new_cols, q.n_latent))
    if train_encoder_first_layer:
        for p in m.encoder.net[0].parameters():
            p.requires_grad_(True)


def unfreeze(q):
    """Back to a plain module of the family (loadable by its ``load``): new columns folded
    into the layer, BatchNorm layers ordinary, every parameter trainable again."""
    m = q.module
    dec = m.decoder
    owner, name = (dec.net, "0") if isinstance(dec, MLPDecoder) else (dec, "linear")
    layer = getattr(owner, name)
    if isinstance(layer, _SurgeryLinear):
        setattr(owner, name, layer.fold())
    for sub in m.modules():
        if type(sub) is _EvalBatchNorm1d:
            sub.__class__ = nn.BatchNorm1d
    for p in m.parameters():
        p.requires_grad_(True)


def snapshot(module):
    """A deep copy of a module's state dict (for before/after comparisons)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
