{{ config(materialized='view') }}
{#-
  The moments where policies decide: the warm rows of int_features (every feature window
  complete), each with a deterministic id. decision_point_id = md5 of
  'symbol|bar_interval|ts' with ts written as UTC ISO-8601 with microseconds
  (2024-01-02T00:00:00.000000Z), independent of the session time zone.
  A view: it is always exactly the warm part of int_features, whatever was built.
-#}
with

features as (
    select * from {{ ref('int_features') }}
),

warm_features as (
    select
        md5(
            symbol || '|' || bar_interval || '|'
            || strftime(timezone('UTC', ts), '%Y-%m-%dT%H:%M:%S.%fZ')
        ) as decision_point_id,
        *
    from features
    where warm
)

select * from warm_features
