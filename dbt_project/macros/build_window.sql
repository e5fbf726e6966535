{#-
  The build window of a run: the inclusive UTC days [min_date, max_date] (vars set by Dagster
  from the partition window; the defaults build everything). Every incremental model reads
  and replaces the days of its window, so re-running a window gives the same rows.

  in_build_window(column, first_day, last_day): the filter
  "column between date 'first_day' and date 'last_day'", by default bar_date over the window;
  first_day / last_day (ISO dates) widen it, e.g. first_day=lookback_start() for the history
  rolling windows need.
-#}
{% macro in_build_window(column='bar_date', first_day=none, last_day=none) -%}
    {%- set first_day = first_day or var('min_date') -%}
    {%- set last_day = last_day or var('max_date') -%}
    {{ column }} between date '{{ first_day }}' and date '{{ last_day }}'
{%- endmacro %}

{#- The first day whose data a build of [min_date, max_date] must re-read. -#}
{% macro lookback_start() %}
    {{- (modules.datetime.date.fromisoformat(var('min_date'))
        - modules.datetime.timedelta(days=var('lookback_days') | int)).isoformat() -}}
{% endmacro %}

{#-
  Pre-hook of every incremental intermediate model (dbt_project.yml): a build replaces the days
  of its window, so re-running a window gives the same rows and a narrower rebuild of a few days
  leaves the others alone.
-#}
{% macro delete_build_window() %}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where {{ in_build_window() }}
    {%- else -%}
        select 1
    {%- endif -%}
{% endmacro %}
