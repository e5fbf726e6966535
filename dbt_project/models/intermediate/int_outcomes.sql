{{
    config(
        on_schema_change='fail'
    )
}}
{#-
  Forward outcomes of every bar: one row per bar of the build window, from the bars of the same
  symbol and bar_interval after it (horizons counted in bars, ordered by ts).

  For each h in var('horizons') (t = the bar, t+k = the k-th next bar of its series):
    fwd_ret_h       ln(close_{t+h} / close_t)
    fwd_path_min_h  min over k in 1..h of ln(close_{t+k} / close_t)
    fwd_path_max_h  max over k in 1..h of ln(close_{t+k} / close_t)
  A future bar counts only if its bar_date is at most lookahead_days after the bar's bar_date;
  the values are NULL until the h-th next bar has landed in int_bars. matured_at is the close of
  the max-horizon-th next bar (its ts + the bar length parsed from bar_interval, units s, m, h,
  d, w; another label gives NULL, which the singular test int_outcomes_maturity reports).
  outcome_source_hashes: the sorted distinct source hashes of the bar and of the bars after it
  that count, up to the max horizon (lineage), built from leads rather than a list window,
  which costs several times more.

  Outcomes read the future: a build of [min_date, max_date] reads int_bars up to
  max_date + lookahead_days, and a bar stays immature until the partitions holding its horizon
  bars are built; rebuilding its (earlier) window then matures it. The per-bar look-ahead limit
  keeps every value a function of int_bars alone, whatever the build window (a backfill and
  day-by-day builds agree bit for bit: lead, min and max are exact).
  Incremental by day: a build replaces the days of its window. Changing horizons changes the
  columns and needs --full-refresh (on_schema_change='fail' says so instead of dropping them).
-#}
{%- set horizons = outcome_horizons() -%}
{%- set max_h = horizons[-1] -%}
{%- set lookahead_days = var('lookahead_days', 45) | int -%}
{%- set lookahead = modules.datetime.timedelta(days=lookahead_days) -%}
{%- set last_day = modules.datetime.date.fromisoformat(var('max_date')) -%}
{%- if last_day > modules.datetime.date.max - lookahead -%}
    {%- set read_until = modules.datetime.date.max -%}
{%- else -%}
    {%- set read_until = last_day + lookahead -%}
{%- endif -%}
with

bars as (
    select * from {{ ref('int_bars') }}
    where {{ in_build_window(last_day=read_until.isoformat()) }}
),

ahead as (
    select
        {{ bar_columns() }},
        close,
        {%- for h in horizons %}
            case
                when lead(bar_date, {{ h }}) over w <= bar_date + {{ lookahead_days }}
                    then lead(close, {{ h }}) over w
            end as close_{{ h }},
            min(close) over (w rows between 1 following and {{ h }} following) as path_min_{{ h }},
            max(close) over (w rows between 1 following and {{ h }} following) as path_max_{{ h }},
        {%- endfor %}
        case
            when lead(bar_date, {{ max_h }}) over w <= bar_date + {{ lookahead_days }}
                then lead(ts, {{ max_h }}) over w
        end as horizon_ts,
        list_value(
            source_hashes,
            {%- for k in range(1, max_h + 1) %}
                case
                    when lead(bar_date, {{ k }}) over w <= bar_date + {{ lookahead_days }}
                        then lead(source_hashes, {{ k }}) over w
                end{{ ',' if not loop.last }}
            {%- endfor %}
        ) as lineage
    from bars
    window w as (partition by symbol, bar_interval order by ts)
),

outcomes as (
    select
        {{ bar_columns() }},
        close,
        {%- for h in horizons %}
            ln(close_{{ h }} / close) as fwd_ret_{{ h }},
            case when close_{{ h }} is not null then ln(path_min_{{ h }} / close) end
                as fwd_path_min_{{ h }},
            case when close_{{ h }} is not null then ln(path_max_{{ h }} / close) end
                as fwd_path_max_{{ h }},
        {%- endfor %}
        horizon_ts + {{ bar_length('bar_interval') }} as matured_at,
        horizon_ts is not null as is_mature,
        list_sort(list_distinct(flatten(lineage))) as outcome_source_hashes
    from ahead
    where {{ in_build_window() }}
)

select * from outcomes
order by symbol, bar_interval, ts
