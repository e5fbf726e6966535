{#-
  Delivered bars of the build window plus the look-back history rolling windows need.

  Prices are split/dividend-adjusted where the feed delivers an adjusted close: with
  adj_factor = adj_close / close, open/high/low are scaled by it, close becomes adj_close and
  volume is divided by it (shares before a 2:1 split count double). A split then no longer looks
  like a crash in returns, volatility and outcomes. Every feature and outcome is a ratio of
  prices of the same series, so the scale a vendor's later adjustment puts on a whole history
  changes nothing that a model sees. Without an adjusted close (or with a non-positive one)
  the bar is used as delivered (adj_factor = 1). Adjusting twice is a no-op: afterwards close
  equals adj_close. close_unadjusted keeps the delivered close.
-#}
-- depends_on: {{ source('raw', 'bars') }}
with

raw_rows as (
    select * from {{ raw_table('bars', lookback_start(), var('max_date')) }}
),

adjusted as (
    select
        *,
        case
            when adj_close > 0 and close > 0 then adj_close / close else 1.0
        end as adj_factor
    from raw_rows
),

renamed as (
    select
        symbol,
        interval as bar_interval,
        ts,
        open * adj_factor as open,
        high * adj_factor as high,
        low * adj_factor as low,
        case when adj_factor = 1.0 then close else adj_close end as close,
        volume / adj_factor as volume,
        close as close_unadjusted,
        adj_close,
        adj_factor,
        feed,
        source_hash,
        partition_date as bar_date
    from adjusted
)

select * from renamed
