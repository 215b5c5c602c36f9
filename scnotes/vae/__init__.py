"""Count VAEs for scRNA-seq: :class:`CountVAE` with ``likelihood="poisson" | "nb" | "zinb"``
and its presets :class:`PVAE`, :class:`NBVAE`, :class:`ZINBVAE`.

x_ij ~ Poisson(s_i μ(z_i, c_i)_j u_ij) with u a point mass (Poisson), Gamma(θ, θ)
(NB) or Gamma with extra mass at zero (ZINB); z_i ~ N(0, I). LDVAE is
the same model with a linear decoder (``_ldvae``), GMVAE with a mixture prior (``_gmvae``);
both take the same ``likelihood=``. Seed page:
"Variational autoencoders for scRNA-seq data". Layout: ``_module`` (the
``nn.Module``: encoder, decoder, ELBO/IWAE), ``_train`` (the training contract, optimisers), ``_lightning`` (the engine), ``_plan`` (the Lightning training plan), ``_data``
(minibatches from dense or sparse counts), ``_model`` (estimators), ``_surgery`` (mapping a query onto a fitted model).
"""
from ._gmvae import GMVAE
from ._ldvae import LDVAE
from ._lightning import fit_lightning
from ._model import CountVAE, NBVAE, PVAE, ZINBVAE, epochs_for
from ._module import CountVAEModule, LinearDecoder, MLPDecoder
# scArches surgery (a query's new batch columns trained, the reference frozen), public for
# scnotes.tl.map_query and for readers who map by hand.
from ._surgery import extend_registry, freeze_for_query, query_model, unfreeze

__all__ = ["epochs_for", "CountVAE", "PVAE", "NBVAE", "ZINBVAE", "LDVAE", "GMVAE", "CountVAEModule",
           "LinearDecoder", "MLPDecoder", "fit_lightning", "extend_registry", "query_model",
           "freeze_for_query", "unfreeze"]
