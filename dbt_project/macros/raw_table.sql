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

{#-
  raw_empty_columns(table): the columns of the raw table (RAW_SCHEMAS of
  assets/ingestion/ingest.py, then the partition_date of the date= folder) as typed NULLs.
-#}
{% macro raw_empty_columns(table) %}
    {%- set own_columns = {
        'bars': 'symbol varchar, ts timestamptz, interval varchar, open double, high double, '
            ~ 'low double, close double, volume double, adj_close double',
        'decisions': 'decision_id varchar, agent_id varchar, symbol varchar, ts timestamptz, '
            ~ 'action varchar, size double, rationale varchar',
        'feedback': 'episode_id varchar, step_index bigint, rating bigint, rater_id varchar, '
            ~ 'ts timestamptz, comment varchar',
        'trades': 'symbol varchar, ts timestamptz, trade_id bigint, price double, size double, '
            ~ 'side varchar',
    } -%}
    {%- if table not in own_columns -%}
        {{ exceptions.raise_compiler_error("raw_empty_columns: unknown raw table " ~ table) }}
    {%- endif -%}
    {%- set lineage = 'feed varchar, source_file varchar, source_hash varchar, partition_date date' -%}
    {%- for column in (own_columns[table] ~ ', ' ~ lineage).split(', ') -%}
        {%- set name, type = column.split(' ') -%}
        null::{{ type }} as {{ name }}{{ ', ' if not loop.last }}
    {%- endfor -%}
{% endmacro %}
