"""Monitoring: ``feature_drift``, how far the market has moved from what the champion learned.

Each materialization compares a *current window* (the newest ``window_rows`` decision points)
with a *reference*: the decision points the champion model's training data covered (before its
dataset's ``split_validation_start``, recorded on ``champion_model`` as ``snapshot_until``).
Without a champion the reference is the history just before the window, so the scores exist
from the first build on.

What is compared (statistics and thresholds: ``assets/monitoring/drift_stats.py``):

- market features of the decision points (``int_decision_points``): returns, volatility,
  volume z-score, range, gap and trend gap (PSI, normalized Wasserstein, KS test) and the
  regime (Jensen-Shannon, chi-square);
- the label mix of *mature* episodes (``fct_decision_episodes``): decision quality, the ex-ante
  best action and whether every reasoning step was labelled correct (Jensen-Shannon).

All p-values of one window go through one Benjamini-Hochberg correction. ``decide`` folds the
window into the hysteresis state stored in the previous materialization's metadata: a drift
must persist ``consecutive_windows`` windows to trigger, and triggers once until it clears. A
window is folded in only when it moved (new decision points arrived); a new champion resets
the state (the reference changed). ``drift_triggered`` and ``new_mature_episodes`` are read by
the retrain sensor (``orchestration/retraining.py``); every score is metadata, so the UI plots
them over time.
"""

import json
import math
from dataclasses import fields, replace
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from assets.core.automation import follow_upstream_unpartitioned
from assets.core.lakehouse import lakehouse_connection
from assets.core.materializations import latest_metadata
from assets.core.resources import MlflowResource, StorageResource, WarehouseResource
from assets.episodes.point_in_time_features import FEATURE_COLUMNS
from assets.monitoring.drift_stats import (
    DriftPolicy,
    DriftState,
    FeatureDrift,
    WindowResult,
    bh_adjusted_pvalues,
    compare_windows,
    decide,
)

GROUP = "monitoring"
OWNERS = ["team:ml-platform"]
DRIFT_KEY = dg.AssetKey("feature_drift")
CHAMPION_KEY = dg.AssetKey("champion_model")

# Every point-in-time feature of a decision point (the list the feature oracle checks).
NUMERIC_FEATURES = FEATURE_COLUMNS
MARKET_CATEGORICAL = ("regime",)
LABEL_CATEGORICAL = ("decision_quality", "best_action_ex_ante", "all_steps_correct")


class DriftConfig(dg.Config):
    """Windows and thresholds of feature_drift (defaults justified in assets/monitoring/drift_stats.py)."""

    window_rows: int = Field(
        default=2000,
        description="Decision points in the current window: the newest ones (after the "
        "champion's snapshot when there is one).",
    )
    reference_rows: int = Field(
        default=20000,
        description="At most this many of the newest decision points before the snapshot "
        "form the reference.",
    )
    psi_threshold: float = Field(default=DriftPolicy.psi_threshold, description="PSI effect.")
    wasserstein_threshold: float = Field(
        default=DriftPolicy.wasserstein_threshold,
        description="Wasserstein-1 in robust standard deviations of the reference.",
    )
    js_threshold: float = Field(
        default=DriftPolicy.js_threshold, description="Jensen-Shannon divergence (bits)."
    )
    fdr_q: float = Field(default=DriftPolicy.fdr_q, description="Benjamini-Hochberg FDR level.")
    min_rows: int = Field(
        default=DriftPolicy.min_rows, description="Fewer rows on either side: not tested."
    )
    consecutive_windows: int = Field(
        default=DriftPolicy.consecutive_windows,
        description="Drifted windows in a row needed to trigger a retrain.",
    )

    def policy(self) -> DriftPolicy:
        """The DriftPolicy with every threshold this config sets (the fields of the same name);
        the others keep the policy's defaults."""
        names = [f.name for f in fields(DriftPolicy) if f.name in type(self).model_fields]
        return DriftPolicy(**{name: getattr(self, name) for name in names})


# ---------------------------------------------------------------- pure parts (tested alone)


def merge_windows(results: list[WindowResult], policy: DriftPolicy) -> WindowResult:
    """One window from several comparisons (market features, labels) with a single
    Benjamini-Hochberg correction over every tested feature, as if compared together."""
    features = [f for r in results for f in r.features]
    tested = [i for i, f in enumerate(features) if f.tested]
    q_values = bh_adjusted_pvalues([features[i].p_value for i in tested]) if tested else []
    merged: list[FeatureDrift] = list(features)
    for i, q in zip(tested, q_values, strict=True):
        f = features[i]
        rejected = bool(q <= policy.fdr_q)
        merged[i] = replace(
            f, q_value=float(q), rejected=rejected, drifted=rejected and f.exceeds_threshold
        )
    skipped = [r.skipped_reason for r in results if r.skipped]
    both_skipped = len(skipped) == len(results)
    return WindowResult(
        features=tuple(merged),
        n_reference=results[0].n_reference,
        n_current=results[0].n_current,
        skipped_reason="; ".join(s for s in skipped if s) if both_skipped else None,
    )


def fold_window(
    previous: dict[str, Any], window: WindowResult, window_key: dict[str, Any], policy: DriftPolicy
) -> tuple[dict[str, Any], bool, str]:
    """Fold ``window`` into the stored state unless it is the window already folded in.

    ``previous``: the stored record (``state`` plus the ``window_key`` it was computed for).
    A new reference (new champion) starts from a fresh state. Returns the record to store,
    whether a retrain is triggered now, and why."""
    state = DriftState.from_dict(previous.get("state"))
    last_key = previous.get("window_key") or {}
    if last_key.get("reference") != window_key.get("reference"):
        state = DriftState()
    elif last_key == window_key:
        return previous, False, "same window as the last materialization: state unchanged"
    new_state, triggered, reason = decide(state, window, policy)
    return {"state": new_state.to_dict(), "window_key": window_key}, triggered, reason


def _iso(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return pd.Timestamp(value).isoformat()


def has_table(con, name: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables where table_name = ?", [name]
        ).fetchone()[0]
    )


def load_windows(
    con,
    snapshot_until: str | None,
    window_rows: int,
    reference_rows: int,
    data_until: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Reference and current decision points, and the mature episodes' labels of each period.

    With a snapshot the current window is the newest ``window_rows`` points at or after it;
    without one, the newest ``window_rows`` points, with the reference just before them.
    ``data_until``: the newest decision of the champion's dataset (new-data count)."""
    columns = ", ".join(("symbol", "decision_ts", *NUMERIC_FEATURES, *MARKET_CATEGORICAL))
    if snapshot_until is not None:
        boundary = pd.Timestamp(snapshot_until)
        current = con.execute(
            f"select {columns} from int_decision_points where decision_ts >= ? "
            "order by decision_ts desc limit ?",
            [boundary, window_rows],
        ).df()
    else:
        current = con.execute(
            f"select {columns} from int_decision_points order by decision_ts desc limit ?",
            [window_rows],
        ).df()
        boundary = current["decision_ts"].min() if len(current) else None
    if boundary is None or pd.isna(boundary):
        empty = pd.DataFrame(columns=list(columns.split(", ")))
        return empty, current, pd.DataFrame(), pd.DataFrame(), {}
    reference = con.execute(
        f"select {columns} from int_decision_points where decision_ts < ? "
        "order by decision_ts desc limit ?",
        [boundary, reference_rows],
    ).df()
    info = {
        "boundary": _iso(boundary),
        "window_start": _iso(current["decision_ts"].min()) if len(current) else None,
        "window_end": _iso(current["decision_ts"].max()) if len(current) else None,
        "new_mature_episodes": 0,
        "new_decision_points": 0,
    }
    if not has_table(con, "fct_decision_episodes"):
        # The marts follow the monthly models in a later run; the market features can be
        # compared already, the labels and the new-data count wait for them.
        return reference, current, pd.DataFrame(), pd.DataFrame(), info
    labels = (
        "select symbol, decision_ts, decision_quality, best_action_ex_ante, "
        "cast(all_steps_correct as varchar) as all_steps_correct "
        "from fct_decision_episodes where is_mature and decision_ts {op} ? "
        "order by decision_ts desc limit ?"
    )
    ref_labels = con.execute(labels.format(op="<"), [boundary, reference_rows]).df()
    cur_labels = con.execute(labels.format(op=">="), [boundary, reference_rows]).df()
    # New data = mature episodes after the newest decision the champion's dataset held (all of
    # them before the first champion).
    since = pd.Timestamp(data_until) if data_until else pd.Timestamp("1900-01-01", tz="UTC")
    new_mature, new_points = con.execute(
        "select count(*) filter (where is_mature), count(distinct decision_point_id) "
        "from fct_decision_episodes where decision_ts > ?",
        [since],
    ).fetchone()
    info["new_mature_episodes"] = int(new_mature or 0)
    info["new_decision_points"] = int(new_points or 0)
    return reference, current, ref_labels, cur_labels, info


def _in_time_order(frame: pd.DataFrame) -> pd.DataFrame:
    # The autocorrelation correction needs each series in time order (drift_stats docstring).
    if frame.empty:
        return frame
    return frame.sort_values(["symbol", "decision_ts"], kind="stable").reset_index(drop=True)


def measure_drift(
    con, snapshot_until: str | None, config: DriftConfig, data_until: str | None = None
) -> tuple[WindowResult, dict[str, Any]]:
    """Compare the current window with the reference; market features and labels together."""
    policy = config.policy()
    reference, current, ref_labels, cur_labels, info = load_windows(
        con, snapshot_until, config.window_rows, config.reference_rows, data_until
    )
    market = compare_windows(
        _in_time_order(reference),
        _in_time_order(current),
        NUMERIC_FEATURES,
        MARKET_CATEGORICAL,
        policy,
    )
    results = [market]
    if not ref_labels.empty and not cur_labels.empty:
        results.append(
            compare_windows(
                _in_time_order(ref_labels),
                _in_time_order(cur_labels),
                (),
                LABEL_CATEGORICAL,
                policy,
            )
        )
    info["n_reference_labels"] = len(ref_labels)
    info["n_current_labels"] = len(cur_labels)
    return merge_windows(results, policy), info


def features_markdown(window: WindowResult) -> str:
    rows = ["| feature | PSI | Wasserstein | JS | q | drifted |", "|---|---:|---:|---:|---:|---|"]

    def cell(value: float) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.3f}"

    for f in window.features:
        rows.append(
            f"| {f.feature} | {cell(f.psi)} | {cell(f.wasserstein)} | {cell(f.js)} | "
            f"{cell(f.q_value)} | {'yes' if f.drifted else ''} |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------- the asset


def champion_reference(instance: dg.DagsterInstance) -> tuple[str | None, str | None, str]:
    """(snapshot_until, data_until, reference id) of the current champion;
    (None, None, 'history') without one."""
    champion = latest_metadata(instance, CHAMPION_KEY)
    snapshot = champion.get("snapshot_until") or None
    if not snapshot:
        return None, None, "history"
    name = champion.get("dpo_model_name", "decision-data-dpo")
    version = champion.get("dpo_champion_version", "?")
    return str(snapshot), str(champion.get("data_until") or snapshot), f"{name} v{version}"


@dg.asset(
    key=DRIFT_KEY,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"duckdb", "python"},
    deps=[
        dg.AssetKey("int_decision_points"),
        dg.AssetKey("fct_decision_episodes"),
        CHAMPION_KEY,
    ],
    tags={"partitioning": "none"},
    automation_condition=follow_upstream_unpartitioned(),
    code_version="1",
    description=(
        "Drift of the newest decision points and mature labels against the champion's training "
        "snapshot: PSI / Wasserstein / KS per market feature, Jensen-Shannon / chi-square for "
        "regime and the label mix, Benjamini-Hochberg across features, hysteresis over "
        "windows. drift_triggered = a retrain is due (read by retrain_sensor)."
    ),
)
def feature_drift(
    context: dg.AssetExecutionContext, config: DriftConfig, warehouse: WarehouseResource
) -> dg.MaterializeResult:
    snapshot_until, data_until, reference_id = champion_reference(context.instance)
    with lakehouse_connection(warehouse.lakehouse()) as con:
        window, info = measure_drift(con, snapshot_until, config, data_until)
    previous_meta = latest_metadata(context.instance, DRIFT_KEY)
    previous = previous_meta.get("drift_state") or {}
    if isinstance(previous, str):
        previous = json.loads(previous)
    window_key = {"reference": reference_id, "window_end": info.get("window_end")}
    record, triggered, reason = fold_window(previous, window, window_key, config.policy())
    drifted = [f.feature for f in window.drifted_features]
    context.log.info(
        f"drift vs {reference_id}: severity {window.severity:.2f}, drifted {drifted or 'none'}; "
        f"{'RETRAIN: ' if triggered else ''}{reason}"
    )
    scores = {k: float(v) for k, v in window.to_metadata().items() if np.isfinite(v)}
    metadata: dict[str, Any] = {
        **scores,
        "drift_triggered": triggered,
        "drift_reason": reason,
        "drifted_features": ", ".join(drifted),
        "drift_state": dg.MetadataValue.json(record),
        "reference": reference_id,
        "snapshot_until": snapshot_until or "",
        "data_until": data_until or "",
        "window_start": info.get("window_start") or "",
        "window_end": info.get("window_end") or "",
        "skipped_reason": window.skipped_reason or "",
        "new_mature_episodes": int(info.get("new_mature_episodes", 0)),
        "new_decision_points": int(info.get("new_decision_points", 0)),
        "n_reference_labels": int(info.get("n_reference_labels", 0)),
        "n_current_labels": int(info.get("n_current_labels", 0)),
        "features": dg.MetadataValue.md(features_markdown(window)),
    }
    return dg.MaterializeResult(metadata=metadata)


# ---------------------------------------------------------------- champion's recent performance

PERFORMANCE_KEY = dg.AssetKey("champion_performance")


class PerformanceConfig(dg.Config):
    """How many newly matured decision points the champion is scored on."""

    max_points: int = Field(default=64, description="Newest mature decision points scored.")
    batch_size: int = Field(default=8, description="Scoring batch size.")
    min_points: int = Field(default=20, description="Fewer points: reported, not tested.")
    accuracy_drop: float = Field(
        default=0.10,
        description="A drop of decision accuracy this large (and significant at 5%, one-sided "
        "two-proportion z-test) marks the champion as degraded.",
    )


def accuracy_drop_test(
    recent_correct: int, n_recent: int, test_correct: int, n_test: int
) -> tuple[float, float]:
    """(drop, one-sided p-value) of H0: recent accuracy >= test accuracy (pooled z-test)."""
    from scipy.stats import norm

    if n_recent == 0 or n_test == 0:
        return math.nan, math.nan
    p_recent, p_test = recent_correct / n_recent, test_correct / n_test
    pooled = (recent_correct + test_correct) / (n_recent + n_test)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_recent + 1 / n_test))
    drop = p_test - p_recent
    if se == 0:
        return drop, 0.0 if drop > 0 else 1.0
    return drop, float(norm.sf(drop / se))


def recent_mature_points(con, since: str, max_points: int) -> pd.DataFrame:
    """The newest mature decision points after ``since`` (one row per prompt), as the
    evaluation scores them: at most ``max_points``, a seeded sample (md5 order of the ids)."""
    from training.report import decision_items, sample_rows

    episodes = con.execute(
        "select * exclude (reasoning_steps, step_labels) from fct_decision_episodes "
        "where is_mature and decision_ts > ? order by decision_ts desc limit ?",
        [pd.Timestamp(since), max_points * 8],
    ).df()
    if episodes.empty:
        return episodes
    points = decision_items(episodes, split=None)
    return sample_rows(points, "item_id", max_points, seed=0).reset_index(drop=True)


@dg.asset(
    key=PERFORMANCE_KEY,
    group_name=GROUP,
    owners=OWNERS,
    kinds={"pytorch", "mlflow"},
    deps=[dg.AssetKey("fct_decision_episodes"), CHAMPION_KEY],
    tags={"partitioning": "none"},
    automation_condition=follow_upstream_unpartitioned(),
    code_version="1",
    description=(
        "The champion DPO model's decision accuracy on the newest matured episodes after its "
        "dataset (data it never saw), against its accuracy on its own test split: drop, "
        "one-sided two-proportion z-test, performance_degraded."
    ),
)
def champion_performance(
    context: dg.AssetExecutionContext,
    config: PerformanceConfig,
    warehouse: WarehouseResource,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    from assets.models.evaluation import (
        TAG_ITEMS,
        champion_version,
        read_parquet,
        registry_uri_of,
    )
    from training.report import score_checkpoint_items

    champion = latest_metadata(context.instance, CHAMPION_KEY)
    name = str(champion.get("dpo_model_name") or "")
    if not name:
        return dg.MaterializeResult(metadata={"skipped_reason": "no champion yet"})
    since = str(champion.get("data_until") or champion.get("snapshot_until") or "")
    with lakehouse_connection(warehouse.lakehouse()) as con:
        points = recent_mature_points(con, since, config.max_points)
    tracker = mlflow.tracker()
    version = champion_version(tracker.client, name)
    if version is None:
        return dg.MaterializeResult(metadata={"skipped_reason": f"{name} has no champion alias"})
    base: dict[str, Any] = {
        "champion": f"{name} v{version.version}",
        "since": since,
        "n_recent": len(points),
    }
    if len(points) < config.min_points:
        reason = f"{len(points)} mature decision points after {since} (< {config.min_points})"
        return dg.MaterializeResult(metadata={**base, "skipped_reason": reason})
    # The champion's checkpoint from the registry, cached per version (assets/core/model_store).
    folder = mlflow.local_model(registry_uri_of(name, version.version)).path
    items = score_checkpoint_items(folder, points, batch_size=config.batch_size)
    recent = items["correct"].dropna()
    test_items_path = (version.tags or {}).get(TAG_ITEMS)
    test = pd.Series(dtype=float)
    store = storage.get()
    if test_items_path and store.exists(test_items_path):
        test = read_parquet(store, test_items_path)["correct"].dropna()
    drop, p_value = accuracy_drop_test(int(recent.sum()), len(recent), int(test.sum()), len(test))
    degraded = bool(np.isfinite(drop) and drop >= config.accuracy_drop and p_value < 0.05)
    context.log.info(
        f"{base['champion']}: recent accuracy {recent.mean():.3f} on {len(recent)} points vs "
        f"test {test.mean() if len(test) else float('nan'):.3f}; degraded={degraded}"
    )
    metadata = {
        **base,
        "recent_accuracy": float(recent.mean()) if len(recent) else float("nan"),
        "test_accuracy": float(test.mean()) if len(test) else float("nan"),
        "accuracy_drop": float(drop),
        "p_value": float(p_value),
        "n_test": len(test),
        "recent_mean_reward": float(items["reward"].mean()),
        "performance_degraded": degraded,
    }
    return dg.MaterializeResult(
        metadata={k: v for k, v in metadata.items() if not (isinstance(v, float) and math.isnan(v))}
    )


monitoring_assets = [feature_drift, champion_performance]
