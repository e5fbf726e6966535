{#-
  The raw Parquet partitions of one table (bars, trades, decisions or feedback) under the
  storage root, limited to [first_date, last_date]. The date= folder is the partition; reading only the files in the
  window keeps a one-day build from scanning 13 years. When no partition exists yet (no trades
  feed, say), an empty relation with the raw schema keeps downstream models valid.
-#}
{% macro raw_table(table, first_date, last_date) %}
    {%- set pattern = var('storage_root') ~ '/raw/' ~ table ~ '/date=*/data.parquet' -%}
    {%- set n_files = 0 -%}
    {%- if execute -%}
        {%- set n_files = run_query(
            "select count(*) from glob('" ~ pattern ~ "')"
        ).columns[0].values()[0] -%}
    {%- endif -%}
    {%- if n_files > 0 %}
        (
            select
                * exclude (date),
                date as partition_date
            from read_parquet('{{ pattern }}', hive_partitioning = true)
            where {{ in_build_window('date', first_date, last_date) }}
        )
    {%- else %}
        (
            select {{ raw_empty_columns(table) }}
            where false
        )
    {%- endif %}
{% endmacro %}

{% macro raw_empty_columns(table) %}
    {%- if table == 'bars' -%}
        null::varchar as symbol, null::timestamptz as ts, null::varchar as interval,
        null::double as open, null::double as high, null::double as low,
        null::double as close, null::double as volume, null::double as adj_close,
        null::varchar as feed, null::varchar as source_file, null::varchar as source_hash,
        null::date as partition_date
    {%- elif table == 'decisions' -%}
        null::varchar as decision_id, null::varchar as agent_id, null::varchar as symbol,
        null::timestamptz as ts, null::varchar as action, null::double as size,
        null::varchar as rationale,
        null::varchar as feed, null::varchar as source_file, null::varchar as source_hash,
        null::date as partition_date
    {%- elif table == 'feedback' -%}
        null::varchar as episode_id, null::bigint as step_index, null::bigint as rating,
        null::varchar as rater_id, null::timestamptz as ts, null::varchar as comment,
        null::varchar as feed, null::varchar as source_file, null::varchar as source_hash,
        null::date as partition_date
    {%- elif table == 'trades' -%}
        null::varchar as symbol, null::timestamptz as ts, null::bigint as trade_id,
        null::double as price, null::double as size, null::varchar as side,
        null::varchar as feed, null::varchar as source_file, null::varchar as source_hash,
        null::date as partition_date
    {%- else -%}
        {{ exceptions.raise_compiler_error("raw_empty_columns: unknown raw table " ~ table) }}
    {%- endif -%}
{% endmacro %}
