{#-
  outcome_horizons(): var('horizons') (outcome horizons in bars: one number or a list) as the
  sorted list of distinct ints; the last is the reward horizon. A compile error names a value
  that is not a positive bar count. Call it in a set: {%- set horizons = outcome_horizons() -%}.
-#}
{% macro outcome_horizons() %}
    {%- set horizons_var = var('horizons', [1, 5, 20]) -%}
    {%- if horizons_var is number -%}
        {%- set horizons_var = [horizons_var] -%}
    {%- endif -%}
    {%- set horizons = horizons_var | map('int') | unique | sort | list -%}
    {%- if horizons | length == 0 or horizons[0] < 1 -%}
        {{ exceptions.raise_compiler_error(
            "var('horizons') must be positive bar counts, got " ~ horizons_var
        ) }}
    {%- endif -%}
    {{ return(horizons) }}
{% endmacro %}
