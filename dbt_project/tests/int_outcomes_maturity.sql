{#-
  Rows of int_outcomes whose maturity does not follow the outcomes: is_mature must equal
  (matured_at is not null), mature rows have every fwd_ret set, matured_at is after the bar, and
  a horizon's path columns are set exactly with its return and bracket it.
-#}
{%- set horizons = outcome_horizons() -%}
with

outcomes as (
    select * from {{ ref('int_outcomes') }}
),

violations as (
    select
        symbol,
        bar_interval,
        ts,
        is_mature,
        matured_at
    from outcomes
    where
        is_mature != (matured_at is not null)
        or matured_at <= ts
        {%- for h in horizons %}
            or (is_mature and fwd_ret_{{ h }} is null)
            or (fwd_path_min_{{ h }} is null) != (fwd_ret_{{ h }} is null)
            or (fwd_path_max_{{ h }} is null) != (fwd_ret_{{ h }} is null)
            or fwd_ret_{{ h }} not between fwd_path_min_{{ h }} and fwd_path_max_{{ h }}
        {%- endfor %}
)

select * from violations
