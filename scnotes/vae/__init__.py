"""Count VAEs for scRNA-seq: :class:`CountVAE` with ``likelihood="poisson" | "nb" | "zinb"``
and its presets :class:`PVAE`, :class:`NBVAE`, :class:`ZINBVAE`.

x_ij ~ Poisson(s_i μ(z_i, c_i)_j u_ij) with u a point mass (Poisson), Gamma(θ, θ)
(NB) or Gamma with extra mass at zero (ZINB); z_i ~ N(0, I). LDVAE is
the same model with a linear decoder (``_ldvae``), GMVAE with a mixture prior (``_gmvae``);
both take the same ``likelihood=``. Seed page:
"Variational autoencoders for scRNA-seq data". Layout: ``_module`` (the
``nn.Module``: encoder, decoder, ELBO/IWAE), ``_train`` (the training contract, optimisers), ``_lightning`` (the engine), ``_data``
(minibatches from dense or sparse counts), ``_model`` (estimators).
"""
from ._ldvae import LDVAE
from ._model import CountVAE, NBVAE, PVAE, ZINBVAE, epochs_for
from ._module import CountVAEModule, LinearDecoder, MLPDecoder

__all__ = ["epochs_for", "CountVAE", "PVAE", "NBVAE", "ZINBVAE", "LDVAE", "CountVAEModule", "LinearDecoder", "MLPDecoder"]
from ._gmvae import GMVAE; __all__.append("GMVAE")  # noqa: E402,E702 (Gaussian-mixture VAE)
from ._surgery import extend_registry, freeze_for_query, query_model, unfreeze; from ._lightning import fit_lightning; __all__ += ["extend_registry", "query_model", "freeze_for_query", "unfreeze", "fit_lightning"]  # noqa: E402,E702 (scArches surgery and the training engine, public for scnotes.tl.map_query)
