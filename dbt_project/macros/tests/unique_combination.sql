{#- Rows that repeat a combination of columns (dbt_utils.unique_combination_of_columns without the package: no downloads at install). -#}
{% test unique_combination(model, columns) %}
    select {{ columns | join(', ') }}, count(*) as n
    from {{ model }}
    group by {{ columns | join(', ') }}
    having count(*) > 1
{% endtest %}
