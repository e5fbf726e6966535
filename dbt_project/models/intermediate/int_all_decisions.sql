{{ config(materialized='view') }}
{#-
  Every decision with its reasoning trace, in the columns all deciders share: the reference
  policies' (int_decisions) and the recorded decisions attached to a decision point
  (int_recorded_decisions; their feed columns decision_id, agent_id, recorded_ts and rationale
  stay there). The one place the two are combined: int_counterfactuals, int_step_labels and
  fct_decision_episodes read this.
  A view, as int_decision_points: it is always exactly the union of what the two tables hold,
  whatever window was built, so it needs no build window of its own and a partition rebuild of
  either table shows here at once; readers filter it by bar_date.
-#}
with

reference_decisions as (
    select * from {{ ref('int_decisions') }}
),

recorded_decisions as (
    select * exclude (decision_id, agent_id, recorded_ts, rationale)
    from {{ ref('int_recorded_decisions') }}
),

all_decisions as (
    select * from reference_decisions
    union all by name
    select * from recorded_decisions
)

select * from all_decisions
