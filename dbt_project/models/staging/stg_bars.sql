{# Delivered bars of the build window plus the look-back history rolling windows need. #}
-- depends_on: {{ source('raw', 'bars') }}
with

raw_rows as (
    select * from {{ raw_table('bars', lookback_start(), var('max_date')) }}
),

renamed as (
    select
        symbol,
        interval as bar_interval,
        ts,
        open,
        high,
        low,
        close,
        volume,
        adj_close,
        feed,
        source_hash,
        partition_date as bar_date
    from raw_rows
)

select * from renamed
