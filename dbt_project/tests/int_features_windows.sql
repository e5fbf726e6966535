{#-
  Rows of int_features whose NULLs do not follow the windows: a feature is set exactly when its
  window fits in bars_seen (volume_z_20 may also be NULL for a constant volume), warm is
  bars_seen >= 121, and the decision time is after the bar opens.
-#}
with

features as (
    select * from {{ ref('int_features') }}
),

violations as (
    select
        symbol,
        bar_interval,
        ts,
        bars_seen
    from features
    where
        bars_seen < 1
        or decision_ts <= ts
        or warm != (bars_seen >= 121)
        or (ret_1 is null) != (bars_seen < 2)
        or (gap is null) != (bars_seen < 2)
        or (ret_5 is null) != (bars_seen < 6)
        or (ret_20 is null) != (bars_seen < 21)
        or (vol_20 is null) != (bars_seen < 21)
        or (volume_z_20 is not null and bars_seen < 21)
        or (trend_gap_50 is null) != (bars_seen < 50)
        or (vol_20_mean_100 is null) != (bars_seen < 121)
        or (regime is null) != (bars_seen < 121)
)

select * from violations
