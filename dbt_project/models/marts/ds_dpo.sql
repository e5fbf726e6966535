{#-
  Preference pairs: two episodes at the same decision point (hence the same prompt and split)
  that took different actions; chosen is the one whose action has the higher ex-ante unit
  expected reward (ev_<action> of the counterfactual environment, per unit size, so sizing does
  not decide), rejected the other.
    margin          = ev_<chosen action> - ev_<rejected action>   (> 0)
    margin_se       = sqrt(ev_se_<chosen action>^2 + ev_se_<rejected action>^2)
    noise_threshold = dpo_noise_z (2) * margin_se
  A pair is kept only if margin > noise_threshold. One pair per (decision point, action pair):
  where several policies took the same action, the representative is the one whose steps are
  all correct, then the lowest policy_id, then policy_version. Only mature episodes in train /
  validation / test with a completion; chosen and rejected texts differ (different decisions).
-#}
with

episodes as (
    select * from {{ ref('fct_decision_episodes') }}
),

candidates as (
    select
        *,
        case action when 'buy' then ev_buy when 'sell' then ev_sell else ev_hold end as ev_unit,
        case action
            when 'buy' then ev_se_buy
            when 'sell' then ev_se_sell
            else ev_se_hold
        end as ev_se_unit
    from episodes
    where
        is_mature
        and split in ('train', 'validation', 'test')
        and completion is not null
        and ev_buy is not null
),

representatives as (
    select * from candidates
    qualify row_number() over (
        partition by decision_point_id, action
        order by
            coalesce(all_steps_correct, false) desc,
            policy_id asc,
            cast(policy_version as varchar) asc
    ) = 1
),

pairs as (
    select
        chosen.decision_point_id,
        chosen.prompt,
        chosen.completion as chosen,
        rejected.completion as rejected,
        chosen.episode_id as chosen_episode_id,
        rejected.episode_id as rejected_episode_id,
        chosen.action as chosen_action,
        rejected.action as rejected_action,
        chosen.policy_id as chosen_policy_id,
        chosen.policy_version as chosen_policy_version,
        rejected.policy_id as rejected_policy_id,
        rejected.policy_version as rejected_policy_version,
        chosen.ev_unit - rejected.ev_unit as margin,
        sqrt(chosen.ev_se_unit ** 2 + rejected.ev_se_unit ** 2) as margin_se,
        chosen.split,
        chosen.decision_ts,
        chosen.symbol,
        chosen.bar_interval,
        chosen.source_hashes,
        chosen.outcome_source_hashes
    from representatives as chosen
    inner join representatives as rejected
        on
            chosen.decision_point_id = rejected.decision_point_id
            and chosen.ev_unit > rejected.ev_unit
    where chosen.completion != rejected.completion
),

final as (
    select
        md5(chosen_episode_id || '|' || rejected_episode_id) as pair_id,
        prompt,
        chosen,
        rejected,
        chosen_episode_id,
        rejected_episode_id,
        chosen_action,
        rejected_action,
        margin,
        margin_se,
        {{ var('dpo_noise_z', 2) }} * margin_se as noise_threshold,
        split,
        decision_ts,
        symbol,
        bar_interval,
        decision_point_id,
        chosen_policy_id,
        chosen_policy_version,
        rejected_policy_id,
        rejected_policy_version,
        source_hashes,
        outcome_source_hashes
    from pairs
    where margin > {{ var('dpo_noise_z', 2) }} * margin_se
)

select * from final
order by decision_ts, symbol, bar_interval, chosen_action, rejected_action
