"""Transfer attacks: the gradient family, input transformations and ensemble strategies.

Every attack holds hyperparameters only and is called on a surrogate (an ``nn.Module`` or an
:class:`~robust_ens.Ensemble`)::

    >>> import torch
    >>> from robust_ens import models, Ensemble
    >>> from robust_ens.attacks import MIFGSM, create_attack, list_attacks
    >>> ens = Ensemble([models.create("small_cnn", in_chans=1) for _ in range(2)])
    >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> res = MIFGSM(eps=8/255, alpha=2/255, steps=10)(ens, x, y, seed=0)
    >>> bool((res.x_adv - x).abs().max() <= 8/255)
    True
    >>> "cwa" in list_attacks()
    True

Registered attacks (``create_attack(name, **hyperparameters)``):

=========== ======================================= =========================================
name        what                                    defaults
=========== ======================================= =========================================
fgsm        FGSM (Goodfellow 2015)                  eps 8/255
bim, ifgsm  I-FGSM / BIM (Kurakin 2017)             eps 8/255, alpha 2/255, 10 steps
pgd         PGD, random start (Madry 2018)          eps 8/255, alpha 2/255, 10 steps
pgdl2       PGD in L2                               eps 1.0, alpha 0.2, 10 steps
mifgsm      MI-FGSM (Dong 2018)                     decay 1.0
nifgsm      NI-FGSM (Lin 2020)                      decay 1.0
sinifgsm    SI-NI-FGSM (Lin 2020)                   m 5 scale copies
vmifgsm     VMI-FGSM (Wang & He 2021)               N 20, beta 1.5
difgsm      DI2-FGSM (Xie 2019)                     resize 0.9, p 0.5, decay 0
mdi2fgsm    M-DI2-FGSM                              decay 1.0
tifgsm      TI-FGSM (+DI as torchattacks)           kernel 7 @ 32 px .. 15 @ 224 px, nsig 3
tidim       TI-DIM                                  decay 1.0
sgm         SGM (Wu 2020) on residual nets          gamma 0.2
ens         MI-FGSM on fused members (ensemble)     fusion logits | probs | loss
svre        SVRE (Xiong 2022, ensemble)             eps 16/255, m = 4 x members
cwa         MI-CWA (Chen 2024, ensemble)            eps 16/255, alpha eps/5, r eps/15, beta 50
adaea       AdaEA (Chen 2023, ensemble)             eps 16/255, beta 10, threshold 0
lgv         LGV (Gubri 2022; see ``lgv_collect``)   eps 4/255, alpha eps/10, 50 steps
mba         MBA (Li 2023; ``SWAGPosterior``)        eps 8/255, 50 steps, 20 samples per step
smer        SMER (Tang 2024, ensemble)              eps 16/255, m = 4 x members, learned weights
ghost       Ghost networks (Li 2020), ResNets       eps 8/255, 10 steps, r 0.22
=========== ======================================= =========================================

``vit_ensemble``: ViT-EnsembleAttack (Cao 2025, ensemble of augmented ViTs), eps 16/255, alpha 1.6/255
x 2 (step enlargement), 3 augmented copies per surrogate; ``bayesopt.optimize_augmentation`` tunes it.

``mba_ta``, ``smer_ta`` and ``ghost_ta`` are the same attacks with TransferAttack's settings (see each
class's docstring for where TransferAttack and the authors differ).

Parts combine with any iterative attack: ``MIFGSM(transforms=[DI(), TI(), SI(m=5), SGM()])``.
"""

from .base import ATTACKS, Attack, attack_name, create_attack, list_attacks, register_attack
from .bayesopt import optimize_augmentation
from .budget import enforce_budget, parse_eps
from .ensemble import CWA, SVRE, AdaEA, Ens
from .ghost import Ghost
from .gradient import BIM, DIFGSM, FGSM, MIFGSM, NIFGSM, PGD, TIFGSM, VMIFGSM
from .lgv import LGV, lgv_collect
from .mba import MBA, SWAGPosterior
from .parts import PARTS, GradientTransform, InputTransform, ModelHook, Part, create_part
from .run import AttackResult, AttackRun, Cost
from .smer import SMER
from .transforms import DI, SGM, SI, TI, gaussian_kernel, ti_kernel_size
from .vit_augment import AugmentParams, augmented
from .vit_ensemble import ViTEnsembleAttack

__all__ = [
    "ATTACKS",
    "AdaEA",
    "BIM",
    "CWA",
    "DI",
    "DIFGSM",
    "FGSM",
    "Ghost",
    "LGV",
    "MBA",
    "MIFGSM",
    "NIFGSM",
    "PGD",
    "SGM",
    "SI",
    "SMER",
    "SWAGPosterior",
    "SVRE",
    "TI",
    "TIFGSM",
    "VMIFGSM",
    "AugmentParams",
    "ViTEnsembleAttack",
    "Attack",
    "AttackResult",
    "AttackRun",
    "Cost",
    "Ens",
    "GradientTransform",
    "InputTransform",
    "ModelHook",
    "Part",
    "augmented",
    "PARTS",
    "attack_name",
    "create_attack",
    "create_part",
    "enforce_budget",
    "gaussian_kernel",
    "lgv_collect",
    "list_attacks",
    "optimize_augmentation",
    "parse_eps",
    "register_attack",
    "ti_kernel_size",
]
