"""Old name of :mod:`training.scoring`, kept only until ``assets/evaluation.py`` imports the
new modules (it is being moved by the package layout change): remove with that rewiring."""

from training.scoring import completion_logprobs, generate  # noqa: F401
