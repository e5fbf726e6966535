{# Trades of the build window plus look-back history. #}
-- depends_on: {{ source('raw', 'trades') }}
with

raw_rows as (
    select * from {{ raw_table('trades', lookback_start(), var('max_date')) }}
),

renamed as (
    select
        symbol,
        ts,
        trade_id,
        price,
        size,
        side,
        feed,
        source_hash,
        partition_date as trade_date
    from raw_rows
)

select * from renamed
