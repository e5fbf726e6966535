{#-
  same_keys(left, right, keys): the join condition that the relations `left` and `right` agree
  on every column of `keys`, "left.k = right.k and ..."; by default the bar's key
  (symbol, bar_interval, ts).
-#}
{% macro same_keys(left, right, keys=['symbol', 'bar_interval', 'ts']) -%}
    {%- for key in keys -%}
        {{ ' and ' if not loop.first }}{{ left }}.{{ key }} = {{ right }}.{{ key }}
    {%- endfor -%}
{%- endmacro %}
