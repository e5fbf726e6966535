"""Datasets: the checks that gate the marts and the export of ds_sft / ds_dpo / ds_prm.

The marts (dbt_project/models/marts, the ``dataset_models`` asset of assets/episodes/dbt_assets.py) build
fct_decision_episodes and the datasets in the warehouse. Here:

- **Contracts** (blocking asset checks, pandera): each checked model is read with the facts of
  its episodes joined from fct_decision_episodes (maturity, split, prompt, ev), so a dataset row
  is checked against the episode it claims to come from: types and ranges, non-empty prompts,
  step/label alignment, chosen != rejected and margin above the noise threshold, only train /
  validation / test in datasets, no immature episode, and the walk-forward order (the latest
  matured_at of a split is before the earliest decision_ts of the next one).
- **Leakage** (blocking): a seeded sample of episodes has its features recomputed from the bars
  of its series truncated at the decision (:func:`assets.episodes.point_in_time_features.point_in_time_mismatches`);
  any difference fails.
- **Expert agreement** (WARN): how often expert ratings agree with the automatic hard labels.
- **Exports** (assets ``ds_<name>_files``): each dataset's splits as Parquet under the storage
  root, ``datasets/<name>/<split>.parquet``, written atomically, with row counts and SHA-256
  digests as metadata and in ``datasets/<name>/manifest.json``. The files load with
  ``datasets.load_dataset("parquet", data_files={split: path, ...})``.
- **Learnability** (blocking, on the SFT and DPO exports): the decision the dataset teaches
  (ds_sft's ``action``, ds_dpo's ``chosen_action``) must be predictable from the prompt: the
  probe beats train-majority on the validation split by a margin with a bootstrap lower bound
  above 0 (``training.learnability``), else the export is flagged before any training runs on
  it. Too few rows to judge is a warning, not a block.

The functions take a DuckDB connection (tests call them directly); the Dagster definitions at
the end wrap them.
"""

import copy
import functools
import itertools
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq

from assets.core.automation import (
    UNPARTITIONED_ASSETS,
    UNPARTITIONED_TAG,
    follow_upstream_unpartitioned,
)
from assets.core.contracts import ContractResult
from assets.core.dbt import project_vars
from assets.core.lakehouse import current_snapshot, lakehouse_connection
from assets.core.resources import StorageResource, WarehouseResource
from assets.core.storage import Storage, file_sha256
from assets.episodes.point_in_time_features import (
    FEATURE_COLUMNS,
    LOOKBACK_DAYS,
    point_in_time_mismatches,
)

OWNERS = ["team:research-data"]
DATASETS = {"sft": "ds_sft", "dpo": "ds_dpo", "prm": "ds_prm"}
SPLITS = ("train", "validation", "test")
ACTIONS = ("buy", "sell", "hold")
QUALITIES = ("good", "bad", "neutral")
LABEL_SOURCES = ("expert", "verification", "monte_carlo", "perturbation")
# Row order of each export (a total order: rebuilding from the same marts gives the same bytes).
EXPORT_ORDER = {
    "sft": "decision_ts, symbol, bar_interval, policy_id, policy_version, episode_id",
    "dpo": "decision_ts, symbol, bar_interval, chosen_action, rejected_action, pair_id",
    "prm": "decision_ts, symbol, bar_interval, episode_id, is_perturbed, trace_id",
}
LEAKAGE_SAMPLE = 50
LEAKAGE_SEED = 20240101
# Below this agreement of expert and automatic hard labels the WARN check fails.
EXPERT_AGREEMENT_MIN = 0.5

UTC_TS = pd.DatetimeTZDtype("us", "UTC")
TEXT = pd.StringDtype("pyarrow")
BOOL = pd.BooleanDtype()
INT = pd.Int64Dtype()


def _pandas_type(arrow_type: pyarrow.DataType) -> Any:
    if pyarrow.types.is_string(arrow_type) or pyarrow.types.is_large_string(arrow_type):
        return TEXT
    if pyarrow.types.is_boolean(arrow_type):
        return BOOL
    if pyarrow.types.is_integer(arrow_type):
        return INT
    return None


def query_frame(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """A query as pandas with nullable booleans and integers and Arrow-backed strings (pandera
    checks them by column, not row by row)."""
    table = con.execute(sql, params or []).to_arrow_table()
    return table.to_pandas(types_mapper=_pandas_type)


# ---------------------------------------------------------------- check frames (SQL)

_EV = "case {a} when 'buy' then {e}.ev_buy when 'sell' then {e}.ev_sell else {e}.ev_hold end"
_SE = (
    "case {a} when 'buy' then {e}.ev_se_buy when 'sell' then {e}.ev_se_sell else {e}.ev_se_hold end"
)

CHECK_SQL = {
    "fct_decision_episodes": """
        select
            episode_id, decision_point_id, symbol, bar_interval, ts, decision_ts, bar_date,
            partition_date, prompt, policy_id, action, size, is_mature, matured_at, split,
            decision_quality, p_best_buy, p_best_sell, p_best_hold, n_steps, completion,
            reasoning_steps is not null as has_trace,
            len(step_labels) as n_step_labels,
            list_transform(step_labels, s -> s.step_index) = range(1, n_steps + 1)
                as step_labels_numbered,
            list_transform(reasoning_steps, s -> s.step_index) = range(1, n_steps + 1)
                as steps_numbered,
            split_validation_start, split_test_start, built_by,
            len(source_hashes) > 0 as has_lineage
        from fct_decision_episodes
    """,
    "ds_sft": """
        select
            d.* exclude (source_hashes, outcome_source_hashes),
            len(d.source_hashes) > 0 as has_lineage,
            e.episode_id is not null as episode_exists,
            e.is_mature as episode_is_mature,
            e.matured_at as episode_matured_at,
            e.split as episode_split,
            e.target_action as episode_target_action,
            e.all_steps_correct as episode_all_steps_correct,
            list_bool_and(
                list_transform(
                    list_filter(e.step_labels, s -> s.kind = 'observation'), s -> s.hard_label
                )
            ) as episode_observations_correct,
            e.prompt as episode_prompt,
            e.completion as episode_completion
        from ds_sft as d
        left join fct_decision_episodes as e on d.episode_id = e.episode_id
    """,
    "ds_dpo": f"""
        select
            d.* exclude (source_hashes, outcome_source_hashes),
            len(d.source_hashes) > 0 as has_lineage,
            c.episode_id is not null and r.episode_id is not null as episode_exists,
            c.is_mature and r.is_mature as episode_is_mature,
            greatest(c.matured_at, r.matured_at) as episode_matured_at,
            c.split as episode_split,
            r.split as rejected_episode_split,
            c.decision_point_id = r.decision_point_id as same_decision_point,
            c.prompt as episode_prompt,
            r.prompt as rejected_episode_prompt,
            c.completion as chosen_completion,
            r.completion as rejected_completion,
            c.action as chosen_episode_action,
            r.action as rejected_episode_action,
            {_EV.format(a="d.chosen_action", e="c")} as chosen_ev,
            {_EV.format(a="d.rejected_action", e="r")} as rejected_ev,
            {_SE.format(a="d.chosen_action", e="c")} as chosen_ev_se,
            {_SE.format(a="d.rejected_action", e="r")} as rejected_ev_se
        from ds_dpo as d
        left join fct_decision_episodes as c on d.chosen_episode_id = c.episode_id
        left join fct_decision_episodes as r on d.rejected_episode_id = r.episode_id
    """,
    "ds_prm": """
        select
            d.* exclude (
                completions, labels, soft_labels, label_sources, source_hashes,
                outcome_source_hashes
            ),
            len(d.completions) as n_completions,
            len(d.labels) as n_labels,
            len(d.soft_labels) as n_soft_labels,
            len(d.label_sources) as n_label_sources,
            list_count(d.labels) = len(d.labels)
                and list_count(d.soft_labels) = len(d.soft_labels) as labels_complete,
            len(list_filter(d.soft_labels, x -> x between 0 and 1)) = len(d.soft_labels)
                as soft_labels_in_range,
            len(list_filter(d.label_sources, x -> x in ('expert', 'verification',
                'monte_carlo', 'perturbation'))) = len(d.label_sources) as label_sources_known,
            len(list_filter(d.completions, x -> length(trim(x)) > 0)) = len(d.completions)
                as completions_non_empty,
            d.labels[d.faulty_step_index] as faulty_step_label,
            len(d.source_hashes) > 0 as has_lineage,
            e.episode_id is not null as episode_exists,
            e.is_mature as episode_is_mature,
            e.matured_at as episode_matured_at,
            e.split as episode_split,
            e.prompt as episode_prompt
        from ds_prm as d
        left join fct_decision_episodes as e on d.episode_id = e.episode_id
    """,
}


# ---------------------------------------------------------------- pandera contracts


def _true(column: str, name: str, error: str) -> pa.Check:
    """A frame-level check that ``column`` is true on every row (NULL fails)."""
    return pa.Check(lambda df: df[column].fillna(False).astype(bool), name=name, error=error)


def _non_empty(s: pd.Series) -> pd.Series:
    return s.fillna("").str.strip().str.len() > 0


def _bools(values: pd.Series | np.ndarray) -> np.ndarray:
    """A comparison's result as plain booleans, NULL (NA, NaT) as False."""
    return pd.Series(values).fillna(False).to_numpy(dtype=bool)


def split_order_ok(df: pd.DataFrame, decision: str, matured: str) -> pd.Series:
    """Per row of train / validation / test: the walk-forward order holds against the next split
    present, i.e. its decision and its outcome's maturity are before the next split's earliest
    decision (the embargo). Rows of other splits pass here (other checks reject them)."""
    ok = np.ones(len(df), dtype=bool)
    split = df["split"].astype(object).fillna("").to_numpy()
    present = [s for s in SPLITS if (split == s).any()]
    for current, following in itertools.pairwise(present):
        first_next = df.loc[split == following, decision].min()
        rows = split == current
        ok[rows] = _bools(df[matured] < first_next)[rows] & _bools(df[decision] < first_next)[rows]
    return pd.Series(ok, index=df.index)


def _split_boundaries_ok(df: pd.DataFrame) -> pd.Series:
    v, t = df["split_validation_start"], df["split_test_start"]
    d, m = df["decision_ts"], df["matured_at"]
    split = df["split"].astype(object).fillna("").to_numpy()
    ok = np.ones(len(df), dtype=bool)
    for name, holds in (
        ("train", _bools(d < v) & _bools(m < v)),
        ("validation", _bools(d >= v) & _bools(d < t) & _bools(m < t)),
        ("test", _bools(d >= t)),
    ):
        ok[split == name] = holds[split == name]
    return pd.Series(ok, index=df.index)


def _same(left: str, right: str, name: str, error: str) -> pa.Check:
    """A frame-level check that two columns are equal on every row (NULL fails)."""
    return pa.Check(
        lambda df: (df[left] == df[right]).fillna(False).astype(bool), name=name, error=error
    )


def _text(*checks: pa.Check, **options: Any) -> pa.Column:
    return pa.Column(TEXT, list(checks), **options)


NON_EMPTY = pa.Check(_non_empty, name="non_empty")

# Columns and row checks every dataset (ds_*) shares: each row comes from an existing, mature
# episode of the same split (train / validation / test) and prompt, and the splits keep their
# walk-forward order.
DATASET_COLUMNS = {
    "prompt": _text(NON_EMPTY, description="Prompt"),
    "split": _text(pa.Check.isin(SPLITS), description="train / validation / test"),
    "decision_ts": pa.Column(UTC_TS, description="Decision time, UTC"),
    "symbol": _text(pa.Check.str_length(1, 64), description="Instrument"),
}
DATASET_ROW_CHECKS = (
    _true("episode_exists", "episode_exists", "the row's episode is not in fct_decision_episodes"),
    _true("episode_is_mature", "no_immature_episode", "the row's episode is not mature"),
    _same(
        "split",
        "episode_split",
        "split_of_episode",
        "split differs from the episode's split (embargo or immature)",
    ),
    _same(
        "prompt", "episode_prompt", "prompt_of_episode", "prompt differs from the episode's prompt"
    ),
    pa.Check(
        lambda df: split_order_ok(df, "decision_ts", "episode_matured_at"),
        name="split_order",
        error="an outcome matures after the next split's first decision (embargo violated)",
    ),
    _true("has_lineage", "has_lineage", "source_hashes is empty"),
)
PRM_LISTS = ("n_completions", "n_labels", "n_soft_labels", "n_label_sources")


@dataclass(frozen=True)
class MartContract:
    """A mart's contract as data: its columns (a dataset's key columns come first, then
    DATASET_COLUMNS, then its own) and its frame-level checks (a dataset's after
    DATASET_ROW_CHECKS)."""

    columns: dict[str, pa.Column]
    checks: tuple[pa.Check, ...]
    key_columns: dict[str, pa.Column] = field(default_factory=dict)
    dataset: bool = True


MART_CONTRACTS: dict[str, MartContract] = {
    "fct_decision_episodes": MartContract(
        dataset=False,
        columns={
            "episode_id": _text(
                pa.Check.str_matches(r"^[0-9a-f]{32}$"), unique=True, description="md5"
            ),
            "decision_point_id": _text(),
            "symbol": _text(pa.Check.str_length(1, 64)),
            "bar_interval": _text(),
            "ts": pa.Column(UTC_TS),
            "decision_ts": pa.Column(UTC_TS),
            "prompt": _text(NON_EMPTY),
            "action": _text(pa.Check.isin(ACTIONS)),
            "size": pa.Column(float, pa.Check.in_range(0, 1)),
            "is_mature": pa.Column(BOOL),
            "matured_at": pa.Column(UTC_TS, nullable=True),
            "split": _text(pa.Check.isin([*SPLITS, "embargo"]), nullable=True),
            "decision_quality": _text(pa.Check.isin(QUALITIES), nullable=True),
            **{
                f"p_best_{a}": pa.Column(float, pa.Check.in_range(0, 1), nullable=True)
                for a in ACTIONS
            },
            "n_steps": pa.Column(INT, pa.Check.ge(1), nullable=True),
            "built_by": _text(pa.Check.str_startswith("dbt:")),
        },
        checks=(
            pa.Check(
                lambda df: df["decision_ts"] > df["ts"],
                name="decision_after_bar_open",
                error="decision_ts is not after the bar's open",
            ),
            _same(
                "partition_date",
                "bar_date",
                "partition_is_bar_date",
                "partition_date differs from bar_date",
            ),
            pa.Check(
                lambda df: (
                    (df["matured_at"].notna() == df["is_mature"].astype(bool))
                    & ~(df["matured_at"] <= df["decision_ts"]).fillna(False).astype(bool)
                ),
                name="maturity",
                error="matured_at must be set exactly when mature, and after decision_ts",
            ),
            pa.Check(
                lambda df: df["is_mature"].astype(bool) | df["split"].isna(),
                name="immature_has_no_split",
                error="an immature episode has a split",
            ),
            pa.Check(_split_boundaries_ok, name="split_boundaries", error="split vs boundaries"),
            pa.Check(
                lambda df: split_order_ok(df, "decision_ts", "matured_at"),
                name="split_order",
                error="an outcome matures after the next split's first decision",
            ),
            pa.Check(
                lambda df: df.groupby("decision_point_id")["prompt"].transform("nunique") == 1,
                name="one_prompt_per_decision_point",
                error="policies at one decision point see different prompts",
            ),
            pa.Check(
                lambda df: (
                    ~df["has_trace"].astype(bool)
                    | (
                        df["steps_numbered"].fillna(False).astype(bool)
                        & _non_empty(df["completion"])
                    )
                ),
                name="trace_numbered",
                error="reasoning steps not numbered 1..n_steps, or empty completion",
            ),
            pa.Check(
                lambda df: (
                    df["n_step_labels"].isna()
                    | (
                        (df["n_step_labels"] == df["n_steps"]).fillna(False).astype(bool)
                        & df["step_labels_numbered"].fillna(False).astype(bool)
                    )
                ),
                name="step_labels_aligned",
                error="step_labels do not align with the steps (length, step_index 1..n)",
            ),
            pa.Check(
                lambda df: (
                    df["p_best_buy"].isna()
                    | ((df["p_best_buy"] + df["p_best_sell"] + df["p_best_hold"] - 1).abs() < 1e-9)
                ),
                name="p_best_distribution",
                error="p_best_* do not sum to 1",
            ),
            _true("has_lineage", "has_lineage", "source_hashes is empty"),
        ),
    ),
    "ds_sft": MartContract(
        key_columns={"episode_id": _text(unique=True)},
        columns={"completion": _text(NON_EMPTY), "action": _text(pa.Check.isin(ACTIONS))},
        checks=(
            pa.Check(
                lambda df: (df["action"] == df["episode_target_action"]).fillna(False).astype(bool),
                name="target_action",
                error="the action is not the episode's target_action (the evidence rule)",
            ),
            pa.Check(
                # A hold imitates no policy's trace: only its observations must be correct.
                lambda df: (
                    df["episode_all_steps_correct"].fillna(False).astype(bool)
                    | (
                        (df["action"] == "hold").fillna(False).astype(bool)
                        & df["episode_observations_correct"].fillna(False).astype(bool)
                    )
                ),
                name="all_steps_correct",
                error="a step of the episode is not hard-labelled correct (a hold: an observation)",
            ),
            pa.Check(
                lambda df: ~df["decision_point_id"].duplicated(keep=False),
                name="one_row_per_decision_point",
                error="two rows of one decision point",
            ),
            _same(
                "completion",
                "episode_completion",
                "completion_of_episode",
                "completion differs from the episode's",
            ),
        ),
    ),
    "ds_dpo": MartContract(
        key_columns={"pair_id": _text(unique=True)},
        columns={
            "chosen": _text(NON_EMPTY),
            "rejected": _text(NON_EMPTY),
            "chosen_action": _text(pa.Check.isin(ACTIONS)),
            "rejected_action": _text(pa.Check.isin(ACTIONS)),
            "margin": pa.Column(float, pa.Check.gt(0)),
            "margin_se": pa.Column(float, pa.Check.ge(0)),
            "noise_threshold": pa.Column(float, pa.Check.ge(0)),
        },
        checks=(
            pa.Check(
                lambda df: (
                    (df["chosen"] != df["rejected"])
                    & (df["chosen_action"] != df["rejected_action"])
                ),
                name="chosen_differs_from_rejected",
                error="chosen and rejected are the same text or action",
            ),
            pa.Check(
                lambda df: df["margin"] > df["noise_threshold"],
                name="margin_above_noise",
                error="margin is not above noise_threshold",
            ),
            pa.Check(
                lambda df: (
                    (
                        (df["chosen_ev"] > df["rejected_ev"])
                        & np.isclose(df["margin"], df["chosen_ev"] - df["rejected_ev"], atol=1e-9)
                        & np.isclose(
                            df["margin_se"],
                            np.sqrt(df["chosen_ev_se"] ** 2 + df["rejected_ev_se"] ** 2),
                            atol=1e-9,
                        )
                    )
                    .fillna(False)
                    .astype(bool)
                ),
                name="margin_from_ev",
                error="chosen's ex-ante ev is not above rejected's by margin (+- margin_se)",
            ),
            pa.Check(
                lambda df: (
                    (
                        df["same_decision_point"].fillna(False).astype(bool)
                        & (df["rejected_episode_prompt"] == df["prompt"])
                        & (df["rejected_episode_split"] == df["split"])
                        & (df["chosen_completion"] == df["chosen"])
                        & (df["rejected_completion"] == df["rejected"])
                        & (df["chosen_episode_action"] == df["chosen_action"])
                        & (df["rejected_episode_action"] == df["rejected_action"])
                    )
                    .fillna(False)
                    .astype(bool)
                ),
                name="pair_of_episodes",
                error="chosen and rejected are not the named episodes at one decision point",
            ),
        ),
    ),
    "ds_prm": MartContract(
        key_columns={
            "trace_id": _text(unique=True),
            "episode_id": _text(),
            "is_perturbed": pa.Column(BOOL),
        },
        columns={"n_steps": pa.Column(INT, pa.Check.ge(1))},
        checks=(
            pa.Check(
                lambda df: functools.reduce(
                    operator.and_, [(df[c] == df["n_steps"]).fillna(False) for c in PRM_LISTS]
                ).astype(bool),
                name="lists_aligned",
                error="completions, labels, soft_labels, label_sources differ in length",
            ),
            _true("labels_complete", "labels_complete", "a step has no label"),
            _true("soft_labels_in_range", "soft_labels_in_range", "soft label outside [0, 1]"),
            _true("label_sources_known", "label_sources_known", "unknown label source"),
            _true("completions_non_empty", "completions_non_empty", "an empty step"),
            pa.Check(
                lambda df: (
                    (~df["is_perturbed"].astype(bool) & df["faulty_step_index"].isna())
                    | (
                        df["is_perturbed"].astype(bool)
                        & (df["faulty_step_index"] >= 1).fillna(False).astype(bool)
                        & (df["faulty_step_index"] <= df["n_steps"]).fillna(False).astype(bool)
                        & (df["faulty_step_label"] == False)  # noqa: E712
                        .fillna(False)
                        .astype(bool)
                    )
                ),
                name="faulty_step_labelled_wrong",
                error="a perturbed trace's faulty step is not labelled false",
            ),
        ),
    ),
}


def contract(model: str) -> pa.DataFrameSchema:
    """The pandera contract of a mart (``MART_CONTRACTS[model]``), applied to its check frame
    (``CHECK_SQL[model]``). Failures of frame-level checks are reported as
    '<check name>: <error>'. Built from a copy: a schema owns its columns and checks."""
    if model not in MART_CONTRACTS:
        raise KeyError(f"no contract for {model!r}")
    rules = copy.deepcopy(MART_CONTRACTS[model])
    columns, checks = rules.columns, list(rules.checks)
    if rules.dataset:
        shared = copy.deepcopy((DATASET_COLUMNS, DATASET_ROW_CHECKS))
        columns = {**rules.key_columns, **shared[0], **columns}
        checks = [*shared[1], *checks]
    for check in checks:
        if check.error and not check.error.startswith(f"{check.name}:"):
            check.error = f"{check.name}: {check.error}"
    return pa.DataFrameSchema(columns, checks=checks, name=model)


def validate_model(con: duckdb.DuckDBPyConnection, model: str) -> ContractResult:
    """Validate a mart (fct_decision_episodes or a ds_*) against its pandera contract."""
    result = ContractResult()
    result.validate(contract(model), query_frame(con, CHECK_SQL[model]))
    return result


# ---------------------------------------------------------------- leakage


def leakage_sample(
    con: duckdb.DuckDBPyConnection, n: int = LEAKAGE_SAMPLE, seed: int = LEAKAGE_SEED
) -> pd.DataFrame:
    """A deterministic sample of episodes with their features as built: the ``n`` episodes
    first in md5(episode_id|seed) order (the same sample for the same episodes and seed)."""
    features = ", ".join(FEATURE_COLUMNS)
    return con.execute(
        f"""
        select episode_id, symbol, bar_interval, ts, {features}, regime, bars_seen
        from fct_decision_episodes
        order by md5(episode_id || '|' || ?)
        limit ?
        """,
        [str(seed), int(n)],
    ).df()


def point_in_time_leaks(
    con: duckdb.DuckDBPyConnection,
    n: int = LEAKAGE_SAMPLE,
    seed: int = LEAKAGE_SEED,
    lookback_days: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sample, mismatches): the sample's features recomputed from int_bars (every bar of its
    series; the oracle truncates them at each decision) against the built values. Empty
    mismatches: nothing after decision_ts reached a feature."""
    if lookback_days is None:
        lookback_days = int(project_vars().get("lookback_days", LOOKBACK_DAYS))
    sample = leakage_sample(con, n, seed)
    if sample.empty:
        return sample, point_in_time_mismatches(sample, sample)
    series = sample[["symbol", "bar_interval"]].drop_duplicates()
    bars = con.execute(
        """
        select b.symbol, b.bar_interval, b.ts, b.bar_date, b.open, b.high, b.low, b.close,
            b.volume
        from int_bars as b
        inner join (select unnest(?) as symbol, unnest(?) as bar_interval) as s
            on b.symbol = s.symbol and b.bar_interval = s.bar_interval
        order by b.symbol, b.bar_interval, b.ts
        """,
        [series["symbol"].tolist(), series["bar_interval"].tolist()],
    ).df()
    columns = (*FEATURE_COLUMNS, "regime", "bars_seen")
    mismatches = point_in_time_mismatches(
        sample, bars, columns=columns, lookback_days=lookback_days
    )
    return sample, mismatches


# ---------------------------------------------------------------- expert agreement


def expert_agreement(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Steps rated by experts and how often the experts' hard label agrees with the automatic
    one, overall and per step kind."""
    rows = con.execute(
        """
        select
            kind,
            count(*) filter (where expert_rating is not null) as n_rated,
            count(*) filter (where agrees_with_auto is not null) as n_compared,
            count(*) filter (where agrees_with_auto) as n_agree
        from fct_step_labels
        group by kind
        order by kind
        """
    ).fetchall()
    per_kind = {
        kind: {
            "n_rated": int(rated),
            "n_compared": int(compared),
            "agreement": (agree / compared) if compared else None,
        }
        for kind, rated, compared, agree in rows
    }
    compared = sum(v["n_compared"] for v in per_kind.values())
    agree = sum(int(a) for _, _, _, a in rows)
    return {
        "n_rated": sum(v["n_rated"] for v in per_kind.values()),
        "n_compared": compared,
        "agreement": (agree / compared) if compared else None,
        "per_kind": per_kind,
    }


# ---------------------------------------------------------------- export


def dataset_path(name: str, split: str) -> str:
    return f"datasets/{name}/{split}.parquet"


def export_dataset(
    con: duckdb.DuckDBPyConnection, storage: Storage, name: str, snapshot: int | None = None
) -> dict[str, Any]:
    """Write each non-empty split of ``ds_<name>`` to ``datasets/<name>/<split>.parquet`` (one
    atomic commit per file; a split that became empty loses its old file) and a manifest.

    Every query reads the lakehouse as of one snapshot (``AT (VERSION => n)``): ``snapshot``,
    else the newest when the export starts, so a dbt run committing meanwhile changes nothing
    here. Returns the manifest: the snapshot (``snapshot_id``), per split its path, URI, rows
    and SHA-256; exporting again from the same snapshot gives the same bytes."""
    model = DATASETS[name]
    snapshot = current_snapshot(con) if snapshot is None else int(snapshot)
    at = f"AT (VERSION => {snapshot})"
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        rel = dataset_path(name, split)
        table = con.execute(
            f"select * from {model} {at} where split = ? order by {EXPORT_ORDER[name]}", [split]
        ).to_arrow_table()
        if table.num_rows == 0:
            storage.delete(rel)
            continue
        with storage.staging_dir() as tmp:
            local = tmp / f"{split}.parquet"
            pq.write_table(table.combine_chunks(), local, compression="zstd")
            digest = file_sha256(local)
            storage.commit_file(local, rel)
        splits[split] = {
            "path": rel,
            "uri": storage.uri(rel),
            "rows": table.num_rows,
            "sha256": digest,
        }
    built_by, validation_start, test_start = con.execute(
        "select any_value(built_by), any_value(split_validation_start),"
        f" any_value(split_test_start) from fct_decision_episodes {at}"
    ).fetchone()
    manifest = {
        "dataset": name,
        "model": model,
        "snapshot_id": snapshot,
        "built_by": built_by,
        "split_validation_start": validation_start.isoformat() if validation_start else None,
        "split_test_start": test_start.isoformat() if test_start else None,
        "splits": splits,
    }
    storage.write_bytes(
        f"datasets/{name}/manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode()
    )
    return manifest


# ---------------------------------------------------------------- learnability

# The decision each export teaches, which its prompts must predict.
LEARNABILITY_TARGETS = {"sft": "action", "dpo": "chosen_action"}


def dataset_learnability(storage: Storage, name: str, **kwargs: Any) -> Any:
    """``training.learnability.learnability_check`` of an export's train and validation files
    (the prompt against :data:`LEARNABILITY_TARGETS`); keyword arguments go to the check."""
    from training.learnability import LearnabilityResult, learnability_check

    column = LEARNABILITY_TARGETS[name]
    frames = {}
    for split in ("train", "validation"):
        rel = dataset_path(name, split)
        if not storage.exists(rel):
            return LearnabilityResult(False, f"no {split} split exported", {"split": split})
        with storage.local_copy(rel) as local:
            frame = pd.read_parquet(local, columns=["prompt", column])
        frames[split] = frame.rename(columns={column: "target"})
    return learnability_check(frames["train"], frames["validation"], **kwargs)


# ---------------------------------------------------------------- Dagster definitions

# Bump when the export's layout or content rules change (the UI then marks exports stale).
EXPORT_CODE_VERSION = "1"


def _lakehouse_check(
    asset: str, name: str, description: str, blocking: bool = True
) -> Callable[
    [Callable[[duckdb.DuckDBPyConnection], dg.AssetCheckResult]], dg.AssetChecksDefinition
]:
    """The asset check ``name`` of ``asset`` made of a function of a read-only lakehouse
    connection (the warehouse resource's)."""

    def define(
        evaluate: Callable[[duckdb.DuckDBPyConnection], dg.AssetCheckResult],
    ) -> dg.AssetChecksDefinition:
        @dg.asset_check(
            asset=dg.AssetKey(asset), name=name, blocking=blocking, description=description
        )
        def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
            with lakehouse_connection(warehouse.lakehouse()) as con:
                return evaluate(con)

        return _check

    return define


def _contract_check(model: str) -> dg.AssetChecksDefinition:
    description = (
        f"pandera contract of {model}, each row checked against its episode in "
        "fct_decision_episodes (types, ranges, alignment, split and embargo order)."
    )

    @_lakehouse_check(model, "contract", description)
    def _check(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
        result = validate_model(con, model)
        return dg.AssetCheckResult(
            passed=result.passed, metadata={"rows": result.rows, **result.metadata()}
        )

    return _check


@_lakehouse_check(
    "fct_decision_episodes",
    "point_in_time",
    f"Leakage: {LEAKAGE_SAMPLE} seeded episodes' features recomputed from int_bars truncated "
    "at their decision time (assets.episodes.point_in_time_features); any difference fails.",
)
def point_in_time_check(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    sample, mismatches = point_in_time_leaks(con)
    return dg.AssetCheckResult(
        passed=mismatches.empty,
        metadata={
            "sampled_episodes": len(sample),
            "seed": LEAKAGE_SEED,
            "mismatches": len(mismatches),
            "mismatch_sample": dg.MetadataValue.json(
                mismatches.head(10).astype(str).to_dict("records")
            ),
        },
    )


@_lakehouse_check(
    "fct_step_labels",
    "expert_agreement",
    "Expert-agreement report: steps rated by experts and the share whose expert hard label "
    f"equals the automatic one, per kind; warns below {EXPERT_AGREEMENT_MIN:.0%}.",
    blocking=False,
)
def expert_agreement_check(con: duckdb.DuckDBPyConnection) -> dg.AssetCheckResult:
    report = expert_agreement(con)
    rate = report["agreement"]
    return dg.AssetCheckResult(
        passed=rate is None or rate >= EXPERT_AGREEMENT_MIN,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "n_rated": report["n_rated"],
            "n_compared": report["n_compared"],
            "agreement": dg.MetadataValue.float(float(rate)) if rate is not None else None,
            "per_kind": dg.MetadataValue.json(report["per_kind"]),
        },
    )


def _dataset_files_asset(name: str, condition: dg.AutomationCondition) -> dg.AssetsDefinition:
    model = DATASETS[name]

    @dg.asset(
        name=f"{model}_files",
        deps=[dg.AssetKey(model)],
        group_name="datasets",
        code_version=EXPORT_CODE_VERSION,
        owners=OWNERS,
        kinds={"parquet"},
        tags=dict([UNPARTITIONED_TAG]),
        automation_condition=condition,
        description=(
            f"{model} exported as Parquet, one file per split: datasets/{name}/<split>.parquet "
            "under the storage root (atomic writes), with a manifest.json of row counts and "
            "SHA-256 digests, read from one lakehouse snapshot (its id in the manifest and the "
            "metadata)."
        ),
    )
    def _asset(
        context: dg.AssetExecutionContext, storage: StorageResource, warehouse: WarehouseResource
    ) -> dg.MaterializeResult:
        lake = warehouse.lakehouse()
        with lakehouse_connection(lake) as con:
            manifest = export_dataset(con, storage.get(), name)
        splits = manifest["splits"]
        context.log.info(
            f"{model} at lakehouse snapshot {manifest['snapshot_id']}: "
            + ", ".join(f"{s} {v['rows']} rows" for s, v in splits.items())
        )
        metadata: dict[str, Any] = {
            "rows": sum(v["rows"] for v in splits.values()),
            "lakehouse": lake.describe(),
            "lakehouse_snapshot": manifest["snapshot_id"],
            "storage_root": storage.get().root,
            "data_files": dg.MetadataValue.json({s: v["uri"] for s, v in splits.items()}),
            "built_by": manifest["built_by"] or "",
        }
        for split in SPLITS:
            metadata[f"rows_{split}"] = splits.get(split, {}).get("rows", 0)
            metadata[f"sha256_{split}"] = splits.get(split, {}).get("sha256", "")
        return dg.MaterializeResult(metadata=metadata)

    return _asset


def _learnability_check(name: str) -> dg.AssetChecksDefinition:
    model = DATASETS[name]

    @dg.asset_check(
        asset=dg.AssetKey(f"{model}_files"),
        name="learnable",
        blocking=True,
        description=(
            f"Can a model learn {model}'s decision ({LEARNABILITY_TARGETS[name]}) from its "
            "prompts? A logistic-regression probe on the prompts' numbers must beat "
            "train-majority accuracy on the validation split by a margin, with the paired "
            "bootstrap's lower bound above 0 (training.learnability). Blocking: training does "
            "not start on a dataset that fails; too few rows to judge only warns."
        ),
    )
    def _check(storage: StorageResource) -> dg.AssetCheckResult:
        result = dataset_learnability(storage.get(), name)
        judged = "ci_low" in result.metadata
        metadata = {k: v for k, v in result.metadata.items() if v is not None}
        return dg.AssetCheckResult(
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR if judged else dg.AssetCheckSeverity.WARN,
            metadata={"reason": result.reason, **metadata},
        )

    return _check


# The exports follow the marts as the marts follow the monthly models (assets.core.automation).
dataset_files = [
    _dataset_files_asset(name, follow_upstream_unpartitioned(UNPARTITIONED_ASSETS))
    for name in DATASETS
]
dataset_checks = [
    _contract_check("fct_decision_episodes"),
    point_in_time_check,
    expert_agreement_check,
    *(_contract_check(model) for model in DATASETS.values()),
    *(learnability_checks := [_learnability_check(name) for name in LEARNABILITY_TARGETS]),
]
