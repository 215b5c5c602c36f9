"""Plots. Plotting never computes: every function here draws what a model or ``tl`` call stored."""
from ._common import *  # noqa: F401,F403
from ._de import *  # noqa: F401,F403
from ._gmvae import *  # noqa: F401,F403
from ._map import *  # noqa: F401,F403
from ._selection import *  # noqa: F401,F403
from ._ldvae import *  # noqa: F401,F403
