"""Old name of :mod:`training.metrics`, kept only until ``assets/evaluation.py`` imports the
new modules (it is being moved by the package layout change): remove with that rewiring."""

from training.metrics import (  # noqa: F401
    DecisionMetrics,
    PreferenceMetrics,
    PrmMetrics,
    decision_metrics,
    preference_metrics,
    prm_metrics,
)
