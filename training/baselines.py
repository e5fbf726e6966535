"""Baselines a trained model has to beat, on the same items with the same metrics.

Decision baselines give per-item probabilities of buy / sell / hold; every row of
:func:`baselines_table` is scored by ``training.metrics.choice_scores`` (log p(target), Brier,
argmax accuracy) on the same test decision points as the model:

    train-majority      the train split's class frequencies (add-one smoothed): the best
                        constant forecast the train split supports; its argmax is the train
                        majority class, so its accuracy is the test share of that class
    always-<action>     probability 1 - eps on the action, eps / 2 on each other one
    random              uniform 1/3 (accuracy exactly 1/3: ties are credited 1/k)
    policy:<id>         each reference policy's own action at the decision point (from the
                        episodes), 1 - eps on it: a deterministic policy as a forecast, on the
                        points where it decided
    probe               multinomial logistic regression on the prompt's numbers
                        (:func:`prompt_numbers`), fitted on train, C picked on validation
    models              any model's per-item probabilities (the likelihood scorer's), e.g. the
                        evaluated model and the untrained base model

``eps`` (:data:`POLICY_EPS`, 0.05) keeps a deterministic forecast's log-loss finite: a miss costs
log(0.025) = -3.69 nats, a hit log(0.95) = -0.05.

Step baselines for a process reward model (:func:`prm_baselines`): ``kind-only`` scores a step by
its kind's share of correct steps in train; ``exact-check`` by the share of correct steps in
train among those of its kind with the same exact-check outcome (``verified`` of
fct_step_labels: observations matched against the features, inference comparisons recomputed,
the decision against the latest implied action).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from training.decision_line import ACTIONS
from training.metrics import (
    PROBABILITY_COLUMNS,
    choice_scores,
    choice_summary,
    roc_auc,
    step_kind_metrics,
)
from training.promotion import paired_bootstrap

POLICY_EPS = 0.05
PROBE_CS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
TABLE_COLUMNS: tuple[str, ...] = (
    "name",
    "kind",
    "n",
    "coverage",
    "logp_target",
    "brier",
    "accuracy",
    "delta_logp",
    "delta_ci_low",
    "delta_ci_high",
)

# ---------------------------------------------------------------- numbers of a prompt

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
# Timestamps and dates identify a decision point; they are not evidence about it.
_STAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)


def prompt_numbers(prompt: str) -> dict[str, float]:
    """Every number of a prompt, keyed by the label it follows.

    Line by line, the label is the text before the first ':' (lower-cased, list dashes
    stripped; a line without ':' is its own label with the digits masked), and the k-th number
    after it is ``<label>#<k>``; a label seen again in the same prompt gets ``@<n>``. Dates and
    timestamps are dropped first. Hence any wording works: 'ev buy: +0.12 ± 0.05 (n=14)' gives
    ``ev buy#0 = 0.12``, ``ev buy#1 = 0.05``, ``ev buy#2 = 14``.
    """
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for raw in prompt.splitlines():
        line = _STAMP.sub(" ", raw).strip()
        if not line:
            continue
        if ":" in line:
            label, value = line.split(":", 1)
        else:
            label, value = _NUMBER.sub("#", line), line
        label = label.strip().lstrip("-* ").strip().lower()
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label}@{seen[label]}"
        for k, number in enumerate(_NUMBER.findall(value)):
            out[f"{label}#{k}"] = float(number)
    return out


def number_frame(prompts: Sequence[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`prompt_numbers` of each prompt as one row; ``columns`` fixes the columns (those
    of the training prompts), a number missing from a prompt is NaN."""
    frame = pd.DataFrame.from_records([prompt_numbers(p) for p in prompts])
    if columns is not None:
        frame = frame.reindex(columns=list(columns))
    return frame.astype(float)


# ---------------------------------------------------------------- probe


def _target_index(targets: Sequence[str | None]) -> np.ndarray:
    return np.array([ACTIONS.index(t) for t in targets])


def prior_probabilities(train_targets: Sequence[str | None]) -> np.ndarray:
    """Add-one smoothed class frequencies of the train targets, in ACTIONS order."""
    known = [t for t in train_targets if isinstance(t, str)]
    counts = np.array([sum(t == a for t in known) for a in ACTIONS], dtype=float) + 1.0
    return counts / counts.sum()


def _log_loss(probs: np.ndarray, index: np.ndarray) -> float:
    picked = probs[np.arange(len(index)), index]
    return float(-np.log(np.maximum(picked, 1e-9)).mean())


@dataclass
class Probe:
    """Multinomial logistic regression on the prompt's numbers (median-imputed with missing
    indicators, standardised). ``C`` is picked by validation log-loss among ``Cs`` when
    validation rows are given, else by ``folds``-fold cross-validation on train. A class absent
    from train gets its add-one smoothed prior probability."""

    Cs: Sequence[float] = PROBE_CS
    folds: int = 5
    seed: int = 0
    C: float = math.nan
    columns: list[str] = field(default_factory=list)
    validation_log_loss: dict[float, float] = field(default_factory=dict)
    _model: Any = field(default=None, repr=False)
    _prior: np.ndarray = field(default=None, repr=False)

    def _pipeline(self, C: float) -> Any:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=C, max_iter=2000, random_state=self.seed),
        )

    def _fit_one(self, x: pd.DataFrame, y: np.ndarray, C: float) -> Any:
        if len(np.unique(y)) < 2:
            return None  # one class: the prior says it all
        return self._pipeline(C).fit(x, y)

    def _proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        out = np.tile(self._prior, (len(x), 1))
        if model is None:
            return out
        proba = model.predict_proba(x)
        classes = list(model.classes_)
        missing = [i for i in range(len(ACTIONS)) if i not in classes]
        out[:, classes] = proba * (1.0 - self._prior[missing].sum())
        return out

    def fit(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        validation: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> Probe:
        x = number_frame(prompts)
        self.columns = list(x.columns)
        y = _target_index(targets)
        self._prior = prior_probabilities(targets)
        self.validation_log_loss = {}
        if validation is not None and len(validation[0]):
            xv, yv = number_frame(validation[0], self.columns), _target_index(validation[1])
            for C in self.Cs:
                model = self._fit_one(x, y, C)
                self.validation_log_loss[C] = _log_loss(self._proba(model, xv), yv)
        else:
            folds = np.arange(len(y)) % max(2, self.folds)
            rng = np.random.default_rng(self.seed)
            rng.shuffle(folds)
            for C in self.Cs:
                losses = []
                for k in np.unique(folds):
                    train, held = folds != k, folds == k
                    model = self._fit_one(x[train], y[train], C)
                    losses.append(_log_loss(self._proba(model, x[held]), y[held]) * held.sum())
                self.validation_log_loss[C] = float(np.sum(losses) / len(y))
        self.C = min(self.validation_log_loss, key=self.validation_log_loss.__getitem__)
        self._model = self._fit_one(x, y, self.C)
        return self

    def predict_proba(self, prompts: Sequence[str]) -> np.ndarray:
        """p(buy), p(sell), p(hold) per prompt, shape (n, 3)."""
        return self._proba(self._model, number_frame(prompts, self.columns))


# ---------------------------------------------------------------- decision baselines


def constant_probabilities(action: str, n: int, eps: float = POLICY_EPS) -> np.ndarray:
    """1 - eps on ``action``, eps / 2 on each other action, for n items."""
    row = np.full(len(ACTIONS), eps / (len(ACTIONS) - 1))
    row[ACTIONS.index(action)] = 1.0 - eps
    return np.tile(row, (n, 1))


def policy_probabilities(
    episodes: pd.DataFrame, keys: Sequence[str], *, key: str = "prompt", eps: float = POLICY_EPS
) -> dict[str, pd.DataFrame]:
    """Each reference policy as a forecast: name (``policy:<id>``, ``@<version>`` when a policy
    has several) → frame of ``key`` and :data:`PROBABILITY_COLUMNS` on the items of ``keys``
    where it decided (1 - eps on its action)."""
    rows = episodes[episodes[key].isin(set(keys))].dropna(subset=["policy_id", "action"])
    rows = rows[rows["action"].isin(ACTIONS)]
    versions = "policy_version" in rows.columns
    out: dict[str, pd.DataFrame] = {}
    for policy_id, own in rows.groupby("policy_id", sort=True):
        several = versions and own["policy_version"].nunique() > 1
        groups = own.groupby("policy_version", sort=True) if several else [(None, own)]
        for version, group in groups:
            name = f"policy:{policy_id}" + (f"@{version}" if several else "")
            group = group.drop_duplicates(key)
            probs = np.vstack(
                [constant_probabilities(a, 1, eps) for a in group["action"]]
                or [np.empty((0, len(ACTIONS)))]
            )
            frame = pd.DataFrame(probs, columns=list(PROBABILITY_COLUMNS))
            frame.insert(0, key, group[key].to_numpy())
            out[name] = frame
    return out


def _row(
    name: str,
    kind: str,
    scores: pd.DataFrame,
    n_items: int,
    reference: pd.DataFrame | None,
    n_resamples: int,
    seed: int,
) -> dict[str, Any]:
    summary = choice_summary(scores)
    row: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "n": int(summary["n"]),
        "coverage": summary["n"] / n_items if n_items else math.nan,
        "logp_target": summary["logp_target"],
        "brier": summary["brier"],
        "accuracy": summary["accuracy"],
        "delta_logp": math.nan,
        "delta_ci_low": math.nan,
        "delta_ci_high": math.nan,
    }
    if reference is not None:
        both = reference.join(scores["logp_target"].rename("row"), how="inner").dropna()
        if len(both):
            result = paired_bootstrap(
                both["logp_target"], both["row"], n_resamples=n_resamples, seed=seed
            )
            row.update(
                delta_logp=result.mean_diff,
                delta_ci_low=result.ci_low,
                delta_ci_high=result.ci_high,
            )
    return row


def baselines_table(
    items: pd.DataFrame,
    *,
    train: pd.DataFrame,
    validation: pd.DataFrame | None = None,
    episodes: pd.DataFrame | None = None,
    models: Mapping[str, pd.DataFrame] | None = None,
    reference: str | None = "model",
    key: str = "prompt",
    eps: float = POLICY_EPS,
    probe: bool = True,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The models and every baseline on the same items, with the same metrics.

    items: the evaluated decision points: ``key`` (unique), ``prompt``, ``target`` (None:
        not scored). train / validation: ``prompt`` and ``target`` rows of those splits (the
        train-majority frequencies and the probe's fit; validation picks the probe's C).
    episodes: rows with ``key``, ``policy_id``, ``action`` (``policy_version``): the reference
        policies' decisions at the items; None: no policy rows.
    models: name → per-item :data:`PROBABILITY_COLUMNS` in the items' order (e.g. the
        likelihood scorer's output for the evaluated model and the untrained base model).
    reference: the model row the others are compared with: ``delta_logp`` is mean(log
        p_reference(target) - log p_row(target)) over the items both scored, with the paired
        bootstrap's 95% interval (``delta_ci_low`` > 0: the reference is better beyond noise).

    Returns :data:`TABLE_COLUMNS`, one row per model / baseline; ``coverage`` is the share of
    the scored items a row scored (policies decide at some points only).
    """
    if items[key].duplicated().any():
        raise ValueError(f"items has several rows for one {key}")
    targets = items["target"].tolist()
    n = len(items)
    n_scored = int(items["target"].map(lambda t: isinstance(t, str)).sum())
    index = pd.Index(items[key], name=key)

    def scored(
        probs: np.ndarray | pd.DataFrame, subset: Sequence[str] | None = None
    ) -> pd.DataFrame:
        wanted = targets if subset is None else items.set_index(key).loc[subset, "target"]
        frame = choice_scores(probs, list(wanted))
        frame.index = index if subset is None else pd.Index(subset, name=key)
        return frame

    forecasts: list[tuple[str, str, pd.DataFrame]] = []
    for name, probs in (models or {}).items():
        if len(probs) != n:
            raise ValueError(f"model {name!r} has {len(probs)} rows for {n} items")
        forecasts.append((name, "model", scored(probs.reset_index(drop=True))))
    train_targets = [t for t in train["target"] if isinstance(t, str)]
    prior = prior_probabilities(train_targets)
    forecasts.append(("train-majority", "baseline", scored(np.tile(prior, (n, 1)))))
    for action in ACTIONS:
        probs = constant_probabilities(action, n, eps)
        forecasts.append((f"always-{action}", "baseline", scored(probs)))
    forecasts.append(("random", "baseline", scored(np.full((n, len(ACTIONS)), 1 / 3))))
    if probe and len(set(train_targets)) >= 1:
        labelled = train[train["target"].map(lambda t: isinstance(t, str))]
        held = None
        if validation is not None:
            valid = validation[validation["target"].map(lambda t: isinstance(t, str))]
            held = (valid["prompt"].tolist(), valid["target"].tolist())
        fitted = Probe(seed=seed).fit(
            labelled["prompt"].tolist(), labelled["target"].tolist(), held
        )
        forecasts.append(("probe", "baseline", scored(fitted.predict_proba(items["prompt"]))))
    if episodes is not None:
        for name, frame in policy_probabilities(episodes, items[key], key=key, eps=eps).items():
            forecasts.append((name, "policy", scored(frame, list(frame[key]))))

    base = None
    if reference is not None:
        found = [f for f in forecasts if f[0] == reference]
        base = found[0][2][["logp_target"]] if found else None
    rows = [
        _row(
            name,
            kind,
            frame,
            n_scored,
            None if name == reference else base,
            n_resamples,
            seed,
        )
        for name, kind, frame in forecasts
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def table_markdown(table: pd.DataFrame, digits: int = 4) -> str:
    """A frame as a Markdown table (no tabulate dependency): integers as such, floats with
    ``digits`` decimals, NaN as an empty cell."""

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            if math.isnan(value):
                return ""
            return (
                str(int(value))
                if float(value).is_integer() and abs(value) >= 1
                else (f"{value:.{digits}f}")
            )
        return str(value)

    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- PRM step baselines

STEP_COLUMNS: tuple[str, ...] = (
    "trace_id",
    "step_index",
    "kind",
    "verified",
    "label",
    "is_perturbed",
    "faulty_step_index",
)


def _cell_means(train: pd.DataFrame, by: list[str]) -> tuple[pd.Series, float]:
    keyed = train.assign(**{c: train[c].astype(object).where(train[c].notna(), "null") for c in by})
    return keyed.groupby(by)["label"].mean(), float(train["label"].mean())


def _cell_scores(
    steps: pd.DataFrame, means: pd.Series, overall: float, by: list[str]
) -> np.ndarray:
    keyed = steps[by].astype(object).where(steps[by].notna(), "null")
    index = pd.MultiIndex.from_frame(keyed) if len(by) > 1 else pd.Index(keyed[by[0]])
    return means.reindex(index).fillna(overall).to_numpy(dtype=float)


def kind_only_scores(train: pd.DataFrame, steps: pd.DataFrame) -> np.ndarray:
    """Each step's score: the share of correct steps of its kind in ``train``."""
    means, overall = _cell_means(train, ["kind"])
    return _cell_scores(steps, means, overall, ["kind"])


def exact_check_scores(train: pd.DataFrame, steps: pd.DataFrame) -> np.ndarray:
    """Each step's score: the share of correct steps in ``train`` among those of its kind with
    the same exact-check outcome (``verified`` True / False / null)."""
    by = ["kind", "verified"]
    means, overall = _cell_means(train.assign(verified=train["verified"].map(_tri)), by)
    return _cell_scores(steps.assign(verified=steps["verified"].map(_tri)), means, overall, by)


def _tri(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "null"
    return "true" if bool(value) else "false"


def auc_difference(
    steps: pd.DataFrame,
    reference: np.ndarray,
    other: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(AUC of ``reference`` - AUC of ``other``, 95% interval) over ``steps``, by a paired
    bootstrap that resamples whole traces (the steps of a trace are not independent)."""
    label = steps["label"].astype(bool).to_numpy()
    codes, traces = pd.factorize(steps["trace_id"])
    members = [np.flatnonzero(codes == t) for t in range(len(traces))]
    point = roc_auc(label, reference) - roc_auc(label, other)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        rows = np.concatenate([members[t] for t in rng.integers(0, len(members), len(members))])
        diff = roc_auc(label[rows], reference[rows]) - roc_auc(label[rows], other[rows])
        if not math.isnan(diff):
            diffs.append(diff)
    if not diffs:
        return point, math.nan, math.nan
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(point), float(low), float(high)


def prm_baselines(
    train: pd.DataFrame,
    steps: pd.DataFrame,
    models: Mapping[str, Sequence[float]] | None = None,
    reference: str | None = "prm",
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """PRM metrics per step kind and on perturbed traces (``training.metrics.step_kind_metrics``)
    of each model's step scores next to the kind-only and exact-check baselines.

    train, steps: step rows (:data:`STEP_COLUMNS`) of the train split and of the evaluated
    split; models: name → one score per row of ``steps``. One row per scorer; against the
    ``reference`` model row, ``delta_auc`` (reference's AUC minus the row's) with its trace
    bootstrap interval (``delta_ci_low`` > 0: the reference ranks steps better beyond noise).
    """
    scorers: dict[str, np.ndarray] = {
        name: np.asarray(values, dtype=float) for name, values in (models or {}).items()
    }
    scorers["kind-only"] = kind_only_scores(train, steps)
    scorers["exact-check"] = exact_check_scores(train, steps)
    rows = []
    for name, values in scorers.items():
        if len(values) != len(steps):
            raise ValueError(f"{name!r} has {len(values)} scores for {len(steps)} steps")
        metrics = step_kind_metrics(steps.assign(score=values))
        row = {"name": name, "kind": "model" if name in (models or {}) else "baseline", **metrics}
        if reference in scorers and name != reference and len(steps):
            row["delta_auc"], row["delta_ci_low"], row["delta_ci_high"] = auc_difference(
                steps, scorers[reference], values, n_resamples, seed
            )
        rows.append(row)
    return pd.DataFrame(rows)
