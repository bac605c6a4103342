"""Action-chunk critics for offline and online RL: ensembles, targets and the losses they are trained with.

``nets.py`` holds the networks (``CriticEnsemble`` for ``Q(s, a_{t:t+h})``, partial-chunk critics and value
nets, ``polyak_update``); ``losses.py`` the pure loss and target functions every algorithm in
``robopol.algos`` shares.
"""

from robopol.critics.losses import (
    aggregate,
    bce_expectile_loss,
    chunk_td_target,
    expectile_loss,
    masked_mean,
    q_loss_scale,
    quantile_loss,
    td_loss,
)
from robopol.critics.nets import CriticEnsemble, EnsembleMLP, polyak_update

__all__ = ["CriticEnsemble", "EnsembleMLP", "aggregate", "bce_expectile_loss", "chunk_td_target",
           "expectile_loss", "masked_mean", "polyak_update", "q_loss_scale", "quantile_loss",
           "td_loss"]
