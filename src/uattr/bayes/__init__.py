"""Posterior wrappers and their uncertainties.

``MCDropout`` and ``DeepEnsemble`` give logit samples [S, B, K]; ``Evidential`` gives a Dirichlet
alpha [B, K]. Any model meeting the contract (the protocols ``SamplingPosterior`` and
``DirichletPosterior``, tested by ``is_sampling`` / ``is_evidential``) works the same.
``decompose`` / ``decompose_logits`` split the uncertainty of samples into total, aleatoric and
epistemic (nats); ``dirichlet_uncertainty`` does the same for a Dirichlet and adds vacuity.
``uncertainty(model, x, kind)`` dispatches on the model kind.
"""

from uattr.bayes.contract import DirichletPosterior, SamplingPosterior
from uattr.bayes.ensemble import DeepEnsemble
from uattr.bayes.evidential import (
    DirichletUncertainty,
    Evidential,
    dirichlet_uncertainty,
    evidence,
)
from uattr.bayes.evidential_losses import (
    EvidentialLoss,
    annealing_coefficient,
    edl_digamma_loss,
    edl_log_loss,
    edl_mse_loss,
    kl_uniform_dirichlet,
)
from uattr.bayes.mc_dropout import MCDropout
from uattr.bayes.posterior import (
    EVIDENTIAL_UNCERTAINTY_KINDS,
    UNCERTAINTY_KINDS,
    is_evidential,
    is_sampling,
    model_uncertainties,
    posterior_kind,
    predict,
    predictive_distribution,
    sample_logits,
    uncertainty,
)
from uattr.bayes.uncertainty import Uncertainty, decompose, decompose_logits, predictive_probs

__all__ = [
    "EVIDENTIAL_UNCERTAINTY_KINDS",
    "UNCERTAINTY_KINDS",
    "DeepEnsemble",
    "DirichletPosterior",
    "DirichletUncertainty",
    "Evidential",
    "EvidentialLoss",
    "MCDropout",
    "SamplingPosterior",
    "Uncertainty",
    "annealing_coefficient",
    "decompose",
    "decompose_logits",
    "dirichlet_uncertainty",
    "edl_digamma_loss",
    "edl_log_loss",
    "edl_mse_loss",
    "evidence",
    "is_evidential",
    "is_sampling",
    "kl_uniform_dirichlet",
    "model_uncertainties",
    "posterior_kind",
    "predict",
    "predictive_distribution",
    "predictive_probs",
    "sample_logits",
    "uncertainty",
]
