{#-
  Helpers of int_decisions: numbers rendered exactly as assets/episodes/reference_policies.py renders them.
  DuckDB's printf and Python's format spec round the same way (correctly, from the binary
  value), so the SQL and the Python oracle produce the same characters.

  fmt_fixed(expr, d)    '%.<d>f'                     0.031 -> '0.031000' (d = 6)
  fmt_signed(expr, d)   '%+.<d>f'                    2.5812 -> '+2.58'
  fmt_pct(expr)         signed percentage, 2 dp      0.031 -> '+3.10%'
  fmt_upct(expr)        unsigned percentage, 2 dp    0.012 -> '1.20%'
  as_rendered(expr, d)  the value a reader sees at d decimals (printf, parsed back to double);
                        signals are compared with thresholds in this form, so every comparison
                        a claim states holds for the numbers it shows.
  band_claim(name, signal, bound)  'name=s>k', 'name=s<-k', or both bounds inside the band.
  decision_step(index)  the closing step from the columns action and size.
-#}
{% macro fmt_fixed(expr, decimals) -%}
    printf('%.{{ decimals }}f', {{ expr }})
{%- endmacro %}

{% macro fmt_signed(expr, decimals=2) -%}
    printf('%+.{{ decimals }}f', {{ expr }})
{%- endmacro %}

{% macro fmt_pct(expr) -%}
    printf('%+.2f%%', ({{ expr }}) * 100)
{%- endmacro %}

{% macro fmt_upct(expr) -%}
    printf('%.2f%%', ({{ expr }}) * 100)
{%- endmacro %}

{% macro as_rendered(expr, decimals) -%}
    cast(printf('%.{{ decimals }}f', {{ expr }}) as double)
{%- endmacro %}

{% macro band_claim(name, signal, bound) -%}
    case
        when {{ signal }} > {{ bound }}
            then '{{ name }}=' || {{ fmt_fixed(signal, 4) }} || '>' || {{ fmt_fixed(bound, 4) }}
        when {{ signal }} < -{{ bound }}
            then '{{ name }}=' || {{ fmt_fixed(signal, 4) }} || '<' || {{ fmt_fixed('-' ~ bound, 4) }}
        else
            '{{ name }}=' || {{ fmt_fixed(signal, 4) }} || '<=' || {{ fmt_fixed(bound, 4) }}
            || ';{{ name }}=' || {{ fmt_fixed(signal, 4) }} || '>=' || {{ fmt_fixed('-' ~ bound, 4) }}
    end
{%- endmacro %}

{% macro decision_step(index) -%}
    {
        'step_index': {{ index }},
        'kind': 'decision',
        'implies': action,
        'text': case
            when action = 'hold' then 'hold: no trade'
            else action || ' ' || {{ fmt_fixed('size', 4) }} || ' of capital'
        end,
        'claim': 'action=' || action || ';size=' || {{ fmt_fixed('size', 4) }}
    }
{%- endmacro %}
