"""uattr: explainable Bayesian deep learning on images.

Train Bayesian (MC dropout, deep ensemble) and evidential classifiers, attribute their total /
aleatoric / epistemic uncertainty to pixels, measure attribution and uncertainty quality, and
mitigate uncertainty with attribution-guided attention. See ``DESIGN.md`` for the architecture.
"""

__version__ = "0.1.0"
