"""AnnData fronts in scanpy style: take ``adata``, write to standard slots, return the fitted model."""
from ._vae import *  # noqa: F401,F403
from ._gmvae import *  # noqa: F401,F403
from ._nmf import *  # noqa: F401,F403
from ._mnn import *  # noqa: F401,F403
from ._glmm import *  # noqa: F401,F403
from ._map import *  # noqa: F401,F403
from ._map_eval import *  # noqa: F401,F403
from ._map_tables import *  # noqa: F401,F403
from ._loadings import *  # noqa: F401,F403
from ._scvi_ref import *  # noqa: F401,F403
from ._fit_many import *  # noqa: F401,F403
from ._baselines import *  # noqa: F401,F403
from ._gmvae_sweep import *  # noqa: F401,F403
from ._ldvae_study import *  # noqa: F401,F403
