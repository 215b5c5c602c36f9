"""AnnData fronts in scanpy's style: take ``adata``, write to standard slots, return what is new."""
from ._vae import *  # noqa: F401,F403
from ._nmf import *  # noqa: F401,F403
from ._mnn import *  # noqa: F401,F403
