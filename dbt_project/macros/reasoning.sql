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
  band_side(signal, bound, above, below, inside)  the SQL value `above` when signal > bound,
                        `below` when signal < -bound, else `inside` (a signal rule's action).
  observation_step(index, feature)  the step stating one feature of the decision point:
                        ret_1, ret_5, ret_20, vol_20, range_pct, trend_gap_50, volume_z_20,
                        regime, or regime_and_trend (regime and trend_gap_50 in one step).
  observation_steps(features)  observation_step of each feature, numbered from 1.
  band_inference(index, implies, says, band, above, below, inside, claim_name)  the inference
                        placing `signal` against the +/-entry_sigma band: the text `says` (with
                        {signal} for the signal in sigmas), then 'above|below|... the +k sigma
                        <band>: <conclusion>.' from the (word, conclusion) pairs `above` and
                        `below`, or 'within the +/-k sigma <band>: <inside>.'; its claim is
                        band_claim(claim_name, ...).
  decision_step(index)  the closing step from the columns action and size (index: an SQL
                        expression, e.g. a number).
  closed_trace(steps)   the trace: the list column `steps` (the steps before the decision)
                        and the closing decision_step, numbered after them, as
                        reasoning_steps_type().
  reasoning_steps_type()  the SQL type of a trace: a LIST of the step STRUCT.
  signal_size()         the size of a signal rule: 0 for hold, else
                        least(size_cap, size_per_sigma * |signal|) at 4 decimals.
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

{% macro band_side(signal, bound, above, below, inside="'hold'") -%}
    case
        when {{ signal }} > {{ bound }} then {{ above }}
        when {{ signal }} < -{{ bound }} then {{ below }}
        else {{ inside }}
    end
{%- endmacro %}

{% macro observation_step(index, feature) -%}
    {%- set claim = none -%}
    {%- if feature == 'ret_1' -%}
        {%- set text = "'Last bar''s log return is ' || " ~ fmt_pct('ret_1') ~ " || '.'" -%}
    {%- elif feature == 'ret_5' -%}
        {%- set text = "'5-bar log return is ' || " ~ fmt_pct('ret_5') ~ " || '.'" -%}
    {%- elif feature == 'ret_20' -%}
        {%- set text = "'20-bar log return is ' || " ~ fmt_pct('ret_20') ~ " || '.'" -%}
    {%- elif feature == 'vol_20' -%}
        {%- set text = "'20-bar volatility is ' || " ~ fmt_upct('vol_20') ~ " || ' per bar.'" -%}
    {%- elif feature == 'range_pct' -%}
        {%- set text = "'The bar''s high-low range is ' || " ~ fmt_upct('range_pct')
            ~ " || ' of the close.'" -%}
    {%- elif feature == 'trend_gap_50' -%}
        {%- set text = "'The close is ' || " ~ fmt_pct('trend_gap_50')
            ~ " || ' from its 50-bar mean.'" -%}
    {%- elif feature == 'volume_z_20' -%}
        {%- set text = "coalesce('Volume z-score against the previous 20 bars is ' || "
            ~ fmt_signed('volume_z_20') ~ " || '.', "
            ~ "'Volume z-score is undefined: the previous 20 volumes were constant.')" -%}
        {%- set claim = "'volume_z_20=' || coalesce(" ~ fmt_fixed('volume_z_20', 6) ~ ", 'null')" -%}
    {%- elif feature == 'regime' -%}
        {%- set text = "'Regime is ' || regime || '.'" -%}
        {%- set claim = "'regime=' || regime" -%}
    {%- elif feature == 'regime_and_trend' -%}
        {%- set text = "'Regime is ' || regime || '; the close is ' || "
            ~ fmt_pct('trend_gap_50') ~ " || ' from its 50-bar mean.'" -%}
        {%- set claim = "'regime=' || regime || ';trend_gap_50=' || "
            ~ fmt_fixed('trend_gap_50', 6) -%}
    {%- else -%}
        {{ exceptions.raise_compiler_error("observation_step: unknown feature " ~ feature) }}
    {%- endif -%}
    {
        'step_index': {{ index }},
        'kind': 'observation',
        'implies': cast(null as varchar),
        'text': {{ text }},
        'claim': {{ claim or ("'" ~ feature ~ "=' || " ~ fmt_fixed(feature, 6)) }}
    }
{%- endmacro %}

{% macro observation_steps(features) -%}
    {%- for feature in features %}
        {{ observation_step(loop.index, feature) }}{{ ',' if not loop.last }}
    {%- endfor %}
{%- endmacro %}

{% macro band_inference(index, implies, says, band, above, below, inside, claim_name) -%}
    {%- set before, after = says.split('{signal}') -%}
    {%- set bound = fmt_fixed('entry_sigma', 2) -%}
    {
        'step_index': {{ index }},
        'kind': 'inference',
        'implies': {{ implies }},
        'text': '{{ before }}' || {{ fmt_signed('signal') }} || '{{ after }}'
        || {{ band_side(
            'signal',
            'entry_sigma',
            "'" ~ above[0] ~ " the +' || " ~ bound ~ " || ' sigma " ~ band ~ ": " ~ above[1] ~ ".'",
            "'" ~ below[0] ~ " the -' || " ~ bound ~ " || ' sigma " ~ band ~ ": " ~ below[1] ~ ".'",
            "'within the +/-' || " ~ bound ~ " || ' sigma " ~ band ~ ": " ~ inside ~ ".'"
        ) }},
        'claim': {{ band_claim(claim_name, 'signal', 'entry_sigma') }}
    }
{%- endmacro %}

{% macro signal_size() -%}
    case
        when action = 'hold' then cast(0 as double)
        else {{ as_rendered('least(size_cap, size_per_sigma * abs(signal))', 4) }}
    end
{%- endmacro %}

{% macro closed_trace(steps) -%}
    cast(
        {{ steps }} || [{{ decision_step('len(' ~ steps ~ ') + 1') }}]
        as {{ reasoning_steps_type() }}
    )
{%- endmacro %}

{% macro reasoning_steps_type() -%}
    struct(step_index integer, kind varchar, implies varchar, text varchar, claim varchar)[]
{%- endmacro %}
