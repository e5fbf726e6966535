{#-
  Point-in-time features: one row per bar of the build window, computed only from bars of the
  same symbol and bar_interval at or before it (windows counted in bars, ordered by ts).

  A bar's history is the bars of its series whose bar_date lies in
  [bar_date - lookback_days, bar_date] and whose ts is at or before its own. bars_seen counts
  them; a feature is NULL unless its whole window fits in that history. The history is the same
  in every build that contains the bar (staging and this model re-read lookback_days before
  min_date), so a value never depends on the build window: a backfill and day-by-day builds agree
  bit for bit (rolling sums are fixed-order sums of lags, see macros/features.sql; every double
  feature is rounded to 10 decimals on top).

  Windows (t = the decision bar):
    ret_k        ln(close_t / close_{t-k})                          k + 1 bars
    vol_20       sample std of the one-bar log returns t-19..t       21 bars
    volume_z_20  volume_t against volumes t-20..t-1                  21 bars
    trend_gap_50 close_t / mean(close_{t-49..t}) - 1                 50 bars
    regime       vol_20 against the mean of vol_20 over t-100..t-1   121 bars (= warm)
  Incremental by day: a build replaces the days of its window.
-#}
with

bars as (
    select * from {{ ref('int_bars') }}
    where {{ in_build_window(first_day=lookback_start()) }}
),

bars_per_day as (
    select
        symbol,
        bar_interval,
        bar_date,
        count(*) as bars_on_day
    from bars
    group by symbol, bar_interval, bar_date
),

days as (
    select
        symbol,
        bar_interval,
        bar_date,
        bars_on_day,
        -- Bars of the series on the look-back days before this one.
        coalesce(
            sum(bars_on_day) over (
                partition by symbol, bar_interval order by bar_date
                range between {{ var('lookback_days') | int }} preceding and 1 preceding
            ),
            0
        ) as bars_before_day,
        -- For a day before the window: its bars and those of the later days before the window.
        sum(bars_on_day) over (
            partition by symbol, bar_interval, bar_date < date '{{ var("min_date") }}'
            order by bar_date desc
            rows between unbounded preceding and current row
        ) as bars_to_window
    from bars_per_day
),

recent as (
    -- The window's days and the days holding the last 120 bars before it: no feature window
    -- is longer than 121 bars and lags count rows, so older bars change no value; only
    -- bars_seen needs the whole look-back, and takes it from the counts per day.
    select
        bars.symbol,
        bars.bar_interval,
        bars.ts,
        bars.bar_date,
        bars.open,
        bars.high,
        bars.low,
        bars.close,
        bars.volume,
        bars.source_hashes,
        days.bars_before_day + row_number() over (
            partition by bars.symbol, bars.bar_interval, bars.bar_date order by bars.ts
        ) as bars_seen
    from bars
    inner join days
        on {{ same_keys('bars', 'days', ['symbol', 'bar_interval', 'bar_date']) }}
    where
        bars.bar_date >= date '{{ var("min_date") }}'
        or days.bars_to_window - days.bars_on_day < 120
),

returns as (
    select
        *,
        ln(close / lag(close) over w) as log_ret,
        ln(close / lag(close, 5) over w) as log_ret_5,
        ln(close / lag(close, 20) over w) as log_ret_20,
        ln(open / lag(close) over w) as log_gap
    from recent
    window w as (partition by symbol, bar_interval order by ts)
),

means as (
    select
        *,
        {{ lag_sum('log_ret', 0, 19) }} / 20 as log_ret_mean_20,
        {{ lag_sum('volume', 1, 20) }} / 20 as volume_mean_20,
        max(volume) over (w rows between 20 preceding and 1 preceding) as volume_max_20,
        min(volume) over (w rows between 20 preceding and 1 preceding) as volume_min_20,
        {{ lag_sum('close', 0, 49) }} / 50 as close_mean_50
    from returns
    window w as (partition by symbol, bar_interval order by ts)
),

spreads as (
    select
        *,
        sqrt({{ lag_sum_sq_dev('log_ret', 0, 19, 'log_ret_mean_20') }} / 19) as log_ret_std_20,
        sqrt({{ lag_sum_sq_dev('volume', 1, 20, 'volume_mean_20') }} / 19) as volume_std_20
    from means
    window w as (partition by symbol, bar_interval order by ts)
),

features as (
    select
        {{ bar_columns() }},
        close,
        bars_seen,
        source_hashes,
        case when bars_seen >= 2 then round(log_ret, 10) end as ret_1,
        case when bars_seen >= 6 then round(log_ret_5, 10) end as ret_5,
        case when bars_seen >= 21 then round(log_ret_20, 10) end as ret_20,
        case when bars_seen >= 21 then round(log_ret_std_20, 10) end as vol_20,
        case
            when bars_seen >= 21 and volume_max_20 > volume_min_20
                then round((volume - volume_mean_20) / volume_std_20, 10)
        end as volume_z_20,
        round((high - low) / close, 10) as range_pct,
        case when bars_seen >= 2 then round(log_gap, 10) end as gap,
        case when bars_seen >= 50 then round(close / close_mean_50 - 1, 10) end as trend_gap_50
    from spreads
),

regimes as (
    select
        *,
        case
            when bars_seen >= 121 then round({{ lag_sum('vol_20', 1, 100) }} / 100, 10)
        end as vol_20_mean_100
    from features
    window w as (partition by symbol, bar_interval order by ts)
),

final as (
    select
        symbol,
        bar_interval,
        ts,
        ts + {{ bar_length('bar_interval') }} as decision_ts,
        bar_date,
        close,
        bars_seen,
        ret_1,
        ret_5,
        ret_20,
        vol_20,
        volume_z_20,
        range_pct,
        gap,
        trend_gap_50,
        vol_20_mean_100,
        case
            when trend_gap_50 is not null and vol_20 is not null and vol_20_mean_100 is not null
                then
                    case when trend_gap_50 >= 0 then 'up' else 'down' end
                    || case when vol_20 > vol_20_mean_100 then '_volatile' else '_calm' end
        end as regime,
        bars_seen >= 121 as warm,
        source_hashes
    from regimes
    where {{ in_build_window() }}
)

select * from final
order by symbol, bar_interval, ts
