"""uattr: explainable Bayesian deep learning on images.

Train Bayesian (MC dropout, deep ensemble) and evidential classifiers, attribute their total /
aleatoric / epistemic uncertainty to pixels, measure attribution and uncertainty quality, and
mitigate uncertainty with attribution-guided attention. See ``docs/`` (start with
``docs/attribution.md`` and ``docs/evaluation.md``).
"""

__version__ = "0.1.0"
