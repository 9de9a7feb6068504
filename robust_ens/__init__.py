"""robust-ens: a benchmark suite for ensembles under attack.

Example:
    >>> from robust_ens import data, models, Ensemble
    >>> x, y = data.load("digits", n=8)
    >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)]).eval()
    >>> ens(x).shape
    torch.Size([8, 10])
"""

__version__ = "0.1.0"

from robust_ens.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()  # glibc: reuse freed tensor memory instead of a page fault per activation (ROBUST_ENS_MALLOC=0: off)

from robust_ens import data, models  # noqa: E402
from robust_ens.ensemble import Ensemble  # noqa: E402

__all__ = ["Ensemble", "__version__", "data", "models"]
