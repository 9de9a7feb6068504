"""Model registry, architectures, the normalization wrapper and safe checkpoints.

Example:
    >>> from robust_ens import models
    >>> models.list_models("resnet*")
    ['resnet20', 'resnet32']
"""

from robust_ens.models import architectures as _architectures  # noqa: F401  (registers models)
from robust_ens.models import pretrained  # pretrained.weight_files, TRANSFERATTACK_MODELS
from robust_ens.models.checkpoint import load_checkpoint, read_sidecar, save_checkpoint, sha256_file
from robust_ens.models.packed import PackedEnsemble, pack_network, register_packed_variants
from robust_ens.models.registry import MODELS, create, list_models, register_model
from robust_ens.models.wrapper import Normalized
from robust_ens.models.zoo import list_zoo, load

register_packed_variants()  # packed:resnet20, packed:small_cnn, ... (listable, loadable by name)

__all__ = [
    "MODELS",
    "Normalized",
    "PackedEnsemble",
    "create",
    "list_models",
    "list_zoo",
    "load",
    "load_checkpoint",
    "pack_network",
    "pretrained",
    "read_sidecar",
    "register_model",
    "register_packed_variants",
    "save_checkpoint",
    "sha256_file",
]
