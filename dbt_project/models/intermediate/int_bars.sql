{#-
  One row per bar: delivered bars as they are, and bars built from trades at
  trade_bar_interval (open/close by time then trade id, so ties resolve the same way every run).
  Incremental by day: a build replaces the days of its window.
-#}
with

delivered as (
    select * from {{ ref('stg_bars') }}
    where {{ in_build_window() }}
),

trades as (
    select * from {{ ref('stg_trades') }}
    where {{ in_build_window('trade_date') }}
),

delivered_bars as (
    select
        symbol,
        bar_interval,
        ts,
        open,
        high,
        low,
        close,
        volume,
        null::bigint as n_trades,
        'delivered' as origin,
        [source_hash] as source_hashes,
        bar_date
    from delivered
),

trade_bars as (
    select
        symbol,
        '{{ var("trade_bar_label") }}' as bar_interval,
        time_bucket(interval '{{ var("trade_bar_interval") }}', ts) as ts,
        arg_min(price, (ts, trade_id)) as open,
        max(price) as high,
        min(price) as low,
        arg_max(price, (ts, trade_id)) as close,
        sum(size) as volume,
        count(*) as n_trades,
        'trades' as origin,
        list(distinct source_hash order by source_hash) as source_hashes,
        any_value(trade_date) as bar_date
    from trades
    group by symbol, time_bucket(interval '{{ var("trade_bar_interval") }}', ts)
)

select * from delivered_bars
union all
select * from trade_bars
order by symbol, bar_interval, ts
