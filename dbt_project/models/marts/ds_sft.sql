{#-
  Supervised fine-tuning data: (prompt, completion) of the episodes worth imitating, i.e.
  mature, ex-ante good (decision_quality = 'good': positive advantage beyond two standard
  errors, never judged by realized PnL) and with every step of the trace hard-labelled correct
  (fct_step_labels, expert ratings included). Only train / validation / test rows: embargoed
  and immature episodes never enter a dataset (split: fct_decision_episodes).
-#}
with

episodes as (
    select * from {{ ref('fct_decision_episodes') }}
),

selected as (
    select
        episode_id,
        prompt,
        completion,
        split,
        decision_ts,
        symbol,
        bar_interval,
        policy_id,
        policy_version,
        action,
        source_hashes,
        outcome_source_hashes
    from episodes
    where
        is_mature
        and split in ('train', 'validation', 'test')
        and decision_quality = 'good'
        and all_steps_correct
        and completion is not null
)

select * from selected
order by decision_ts, symbol, bar_interval, policy_id, policy_version
