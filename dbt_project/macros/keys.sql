{#-
  Keys of the episode models.

  same_keys(left, right, keys): the join condition that the relations `left` and `right` agree
  on every column of `keys`, "left.k = right.k and ..."; by default the bar's key
  (symbol, bar_interval, ts).

  bar_columns(relation): the bar's key and day, symbol, bar_interval, ts, bar_date (of `relation`
  when given), as int_bars has them.

  decision_point_columns(relation): the columns that name a decision point and place it in
  time, as int_decision_points has them: decision_point_id, symbol, bar_interval, ts,
  decision_ts, bar_date (of `relation` when given). Every decision row (int_decisions,
  int_recorded_decisions, int_counterfactuals) opens with them.

  trace_columns(relation): the columns that name a reasoning trace (an episode's original
  trace or its perturbed copy): trace_id, episode_id, is_perturbed, perturbation,
  faulty_step_index (of `relation` when given). The step label models and ds_prm open with them.
-#}
{% macro same_keys(left, right, keys=['symbol', 'bar_interval', 'ts']) -%}
    {%- for key in keys -%}
        {{ ' and ' if not loop.first }}{{ left }}.{{ key }} = {{ right }}.{{ key }}
    {%- endfor -%}
{%- endmacro %}

{% macro bar_columns(relation=none) -%}
    {{ column_list(['symbol', 'bar_interval', 'ts', 'bar_date'], relation) }}
{%- endmacro %}

{% macro decision_point_columns(relation=none) -%}
    {{ column_list(
        ['decision_point_id', 'symbol', 'bar_interval', 'ts', 'decision_ts', 'bar_date'], relation
    ) }}
{%- endmacro %}

{% macro trace_columns(relation=none) -%}
    {{ column_list(
        ['trace_id', 'episode_id', 'is_perturbed', 'perturbation', 'faulty_step_index'], relation
    ) }}
{%- endmacro %}

{#- "c1, c2, ...", each of `relation` when given. -#}
{% macro column_list(columns, relation=none) -%}
    {%- for column in columns -%}
        {{ relation ~ '.' if relation }}{{ column }}{{ ', ' if not loop.last }}
    {%- endfor -%}
{%- endmacro %}
