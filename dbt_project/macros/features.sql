{#-
  Helpers of int_features.

  bar_length(column): the length of a bar label such as '1d', '5m', '1h', '30s' or '1w' as a
  DuckDB interval (units s, m = minute, h, d, w). Any other label gives NULL, which the not_null
  test on decision_ts reports instead of a silently wrong decision time.

  lag_sum(column, first, last): lag(column, first) + ... + lag(column, last) over window `w`,
  added left to right in a fixed order. Rolling sums are written this way instead of as
  sum(...) over (rows between ...): DuckDB evaluates framed aggregates with a segment tree whose
  shape depends on where the partition starts, i.e. on the build window, so a day-by-day build
  and a backfill can differ in the last bit (and then, rarely, after rounding). A fixed sum of
  lags gives the same bits whatever the window.

  lag_sum_sq_dev(column, first, last, center): the same for (lag(column, k) - center)^2, the
  second pass of a two-pass sample variance.
-#}
{% macro bar_length(column) -%}
    to_seconds(
        try_cast(regexp_extract({{ column }}, '^([0-9]+)[smhdw]$', 1) as bigint)
        * case regexp_extract({{ column }}, '^[0-9]+([smhdw])$', 1)
            when 's' then 1
            when 'm' then 60
            when 'h' then 3600
            when 'd' then 86400
            when 'w' then 604800
        end
    )
{%- endmacro %}

{% macro lag_sum(column, first, last) -%}
    (
        {%- for k in range(first, last + 1) %}
        {% if not loop.first %}+ {% endif %}lag({{ column }}, {{ k }}) over w
        {%- endfor %}
    )
{%- endmacro %}

{% macro lag_sum_sq_dev(column, first, last, center) -%}
    (
        {%- for k in range(first, last + 1) %}
        {% if not loop.first %}+ {% endif %}(lag({{ column }}, {{ k }}) over w - {{ center }}) ** 2
        {%- endfor %}
    )
{%- endmacro %}

