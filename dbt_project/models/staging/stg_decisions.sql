{#-
  Recorded decisions (raw_decisions) that can attach to a decision point of the build window:
  those taken from min_date to recorded_max_staleness_days after max_date (a decision attaches
  to the latest decision point of its symbol at most that many days before it).
-#}
{%- set staleness = modules.datetime.timedelta(days=var('recorded_max_staleness_days', 4) | int) -%}
{%- set last_day = modules.datetime.date.fromisoformat(var('max_date')) %}
-- depends_on: {{ source('raw', 'decisions') }}
with

raw_rows as (
    select * from {{ raw_table('decisions', var('min_date'), (last_day + staleness).isoformat()) }}
),

renamed as (
    select
        decision_id,
        agent_id,
        symbol,
        ts as recorded_ts,
        action,
        size,
        nullif(trim(rationale), '') as rationale,
        feed,
        source_hash,
        partition_date as recorded_date
    from raw_rows
)

select * from renamed
