{#-
  Supervised fine-tuning data: one row per decision point whose evidence-supported action
  (target_action: buy or sell only when its analog t exceeds target_z, else hold; shown in the
  prompt, decided from data known at decision_ts, never from realized PnL) was taken by a
  reference policy or recorded decider with every step hard-labelled correct (fct_step_labels,
  expert ratings included). A hold needs its observation steps correct only: the automatic
  labels of inference and decision steps come from p_best (the argmax of the rollouts' means),
  under which hold is almost never the best action, so they mark nearly every hold trace wrong
  even where no action's evidence is significant. Mature, in train / validation / test only (embargoed and immature
  episodes never enter; split: fct_decision_episodes). Where several deciders took the target
  action, the lowest policy_id, then policy_version, represents the point. The completion is
  decision-first (fct_decision_episodes.completion), so its first word is the action.
-#}
with

episodes as (
    select
        *,
        list_bool_and(
            list_transform(
                list_filter(step_labels, s -> s.kind = 'observation'), s -> s.hard_label
            )
        ) as observations_correct
    from {{ ref('fct_decision_episodes') }}
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
        outcome_source_hashes,
        decision_point_id
    from episodes
    where
        is_mature
        and split in ('train', 'validation', 'test')
        and action = target_action
        and (all_steps_correct or (action = 'hold' and observations_correct))
        and completion is not null
    qualify row_number() over (
        partition by decision_point_id
        order by policy_id asc, cast(policy_version as varchar) asc
    ) = 1
)

select * from selected
order by decision_ts, symbol, bar_interval, policy_id, policy_version
