{#-
  Rows of int_counterfactuals whose episode is neither a reference decision (int_decisions) nor
  a matched recorded decision (int_recorded_decisions), and rollouts whose shares do not sum to 1.
-#}
with

counterfactuals as (
    select * from {{ ref('int_counterfactuals') }}
),

known as (
    select episode_id from {{ ref('int_decisions') }}
    union all
    select episode_id from {{ ref('int_recorded_decisions') }}
    where episode_id is not null
),

unknown as (
    select
        counterfactuals.episode_id,
        'no such decision' as problem
    from counterfactuals
    anti join known on counterfactuals.episode_id = known.episode_id
),

bad_shares as (
    select
        episode_id,
        'p_best shares sum to ' || cast(p_best_buy + p_best_sell + p_best_hold as varchar) as problem
    from counterfactuals
    where abs(p_best_buy + p_best_sell + p_best_hold - 1) > 1e-9
)

select * from unknown
union all
select * from bad_shares
