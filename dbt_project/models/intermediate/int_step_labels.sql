{#-
  Process labels of every reasoning step, for every decision's own trace and for one perturbed
  copy of it (a PRM needs faulty steps to learn from): one row per (trace_id, step_index).

  Traces. The original trace of each episode (int_all_decisions: int_decisions and matched
  int_recorded_decisions; trace_id = episode_id) and one perturbed trace
  (trace_id = md5(episode_id|perturbation)) that differs from it in exactly one step,
  faulty_step_index. The kind is picked by hash(episode_id)
  among those whose step exists in the trace (wrong_sign needs a buy or sell inference):
    misread_number            the first observation with one numeric claim: its value x10
                              (+0.01 when it shows as 0), in the claim and in the first number
                              of the text (a decimal slip);
    wrong_sign                the last action-committing inference whose claim has a strict
                              comparison ('s>k' or 's<-k'): the sign of its first compared
                              value, in the claim and the first number of the text, flipped;
    contradicting_conclusion  the decision step: buy and sell swapped, hold becomes buy 0.25.

  Automatic labels, from the context and the counterfactual environment only:
    verified (exact checks)  observation: every 'name=value' item of the claim equals the
                             decision point's feature rendered as the policies render it (6 dp,
                             regime as is, 'null' for NULL); inference: every comparison item
                             'name=value op bound' holds numerically (NULL without one);
                             decision: its action equals the latest action implied by an earlier
                             step (NULL when none implied one).
    continuation_action      the action the trace reaches when rolled out from this step: the
                             latest action implied at or before it, else the first implied after
                             it (the rule's own completion; a decision step implies its action).
    mc_label (inference and decision steps)  share of the n_rollouts Monte-Carlo rollouts of the
                             counterfactual environment (int_counterfactuals) in which the
                             continuation action is the ex-ante best: p_best_<action>, as in
                             Math-Shepherd (share of continuations that reach a good outcome).
    auto_soft_label          observation: 1 if verified else 0; inference / decision: 0 when a
                             check failed, else mc_label (NULL without an environment).
    auto_hard_label          auto_soft_label >= var('hard_label_threshold', 0.5).
    label_source             verification | monte_carlo; perturbation for the faulty step of a
                             perturbed trace, which is labelled 0 / false whatever the checks say
                             (its checks still run: verified shows whether they caught it).
  Expert ratings (feedback feed) are joined downstream, in fct_step_labels.
  Incremental by day: a build replaces the days of its window.
-#}
{%- set threshold = var('hard_label_threshold', 0.5) | float -%}
with

decisions as (
    select * from {{ ref('int_all_decisions') }}
    where {{ in_build_window() }}
),

points as (
    select * from {{ ref('int_decision_points') }}
    where {{ in_build_window() }}
),

counterfactuals as (
    select * from {{ ref('int_counterfactuals') }}
    where {{ in_build_window() }}
),

-- The features as an observation step states them.
observed as (
    select
        decision_point_id,
        map(
            [
                'ret_1', 'ret_5', 'ret_20', 'vol_20', 'volume_z_20', 'range_pct', 'gap',
                'trend_gap_50', 'regime'
            ],
            [
                {%- for feature in ['ret_1', 'ret_5', 'ret_20', 'vol_20', 'volume_z_20',
                                    'range_pct', 'gap', 'trend_gap_50'] %}
                    coalesce(printf('%.6f', {{ feature }}), 'null'),
                {%- endfor %}
                coalesce(regime, 'null')
            ]
        ) as rendered
    from points
),

original_steps as (
    select
        decisions.* exclude (ts, size, source_hashes, reasoning_steps),
        len(decisions.reasoning_steps) as n_steps,
        unnest(decisions.reasoning_steps) as step
    from decisions
),

-- Perturbations ----------------------------------------------------------------------------------
targets as (
    select
        episode_id,
        min(step.step_index) filter (
            where step.kind = 'observation'
            and regexp_full_match(step.claim, '[a-z0-9_]+=-?[0-9]+\.[0-9]+')
        ) as misread_step,
        max(step.step_index) filter (
            where step.kind = 'inference'
            and step.implies is not null
            and regexp_matches(step.claim, '(^|;)[a-z0-9_]+=-?[0-9]+\.[0-9]+(<|>)-?[0-9]')
        ) as sign_step,
        max(step.step_index) filter (where step.kind = 'decision') as decision_step
    from original_steps
    group by episode_id
),

perturbations as (
    select
        episode_id,
        list_filter(
            [
                case when misread_step is not null then 'misread_number' end,
                case when sign_step is not null then 'wrong_sign' end,
                case when decision_step is not null then 'contradicting_conclusion' end
            ],
            kind -> kind is not null
        ) as applicable
    from targets
),

picked as (
    select
        episode_id,
        applicable[cast(hash(episode_id) % len(applicable) as integer) + 1] as perturbation
    from perturbations
    where len(applicable) > 0
),

faults as (
    select
        picked.episode_id,
        picked.perturbation,
        case picked.perturbation
            when 'misread_number' then targets.misread_step
            when 'wrong_sign' then targets.sign_step
            else targets.decision_step
        end as faulty_step_index
    from picked
    inner join targets on picked.episode_id = targets.episode_id
),

fault_steps as (
    select
        original_steps.*,
        faults.perturbation,
        faults.faulty_step_index,
        regexp_extract(step['text'], '[+-]?[0-9]+\.[0-9]+') as text_number,
        try_cast(split_part(step['claim'], '=', 2) as double) as claim_value,
        regexp_extract(
            step['claim'], '(^|;)([a-z0-9_]+=)(-?)([0-9]+\.[0-9]+)(<|>)', 3
        ) as claim_sign,
        case original_steps.action when 'buy' then 'sell' else 'buy' end as flipped_action,
        case
            when original_steps.action = 'hold' then 0.25
            else try_cast(regexp_extract(step['claim'], 'size=([0-9.]+)', 1) as double)
        end as flipped_size
    from original_steps
    inner join faults
        on
            original_steps.episode_id = faults.episode_id
            and original_steps.step['step_index'] = faults.faulty_step_index
),

faulty_steps as (
    select
        episode_id,
        perturbation,
        faulty_step_index,
        case perturbation
            when 'misread_number'
                then struct_update(
                    step,
                    text := regexp_replace(
                        step['text'],
                        '[+-]?[0-9]+\.[0-9]+',
                        printf(
                            case when starts_with(text_number, '+') then '%+.2f' else '%.2f' end,
                            case
                                when abs(claim_value) >= 0.0001
                                    then cast(text_number as double) * 10
                                else cast(text_number as double) + 1
                            end
                        )
                    ),
                    claim := split_part(step['claim'], '=', 1) || '='
                    || printf(
                        '%.6f',
                        case
                            when abs(claim_value) >= 0.0001 then claim_value * 10
                            else claim_value + 0.01
                        end
                    )
                )
            when 'wrong_sign'
                then struct_update(
                    step,
                    text := regexp_replace(
                        step['text'],
                        '([+-]?)([0-9]+\.[0-9]+)',
                        case when starts_with(text_number, '-') then '+' else '-' end || '\2'
                    ),
                    claim := regexp_replace(
                        step['claim'],
                        '(^|;)([a-z0-9_]+=)(-?)([0-9]+\.[0-9]+)(<|>)',
                        '\1\2' || case when claim_sign = '-' then '' else '-' end || '\4\5'
                    )
                )
            else struct_update(
                step,
                implies := flipped_action,
                text := flipped_action || ' ' || printf('%.4f', flipped_size) || ' of capital',
                claim := 'action=' || flipped_action || ';size=' || printf('%.4f', flipped_size)
            )
        end as step,
        case when perturbation = 'contradicting_conclusion' then flipped_action end
            as perturbed_action
    from fault_steps
),

perturbed_steps as (
    select
        original_steps.* exclude (step, action),
        coalesce(
            max(faulty_steps.perturbed_action) over (partition by original_steps.episode_id),
            original_steps.action
        ) as action,
        coalesce(faulty_steps.step, original_steps.step) as step,
        faults.perturbation,
        faults.faulty_step_index
    from original_steps
    inner join faults on original_steps.episode_id = faults.episode_id
    left join faulty_steps
        on
            original_steps.episode_id = faulty_steps.episode_id
            and original_steps.step['step_index'] = faulty_steps.faulty_step_index
),

traces as (
    select
        episode_id as trace_id,
        false as is_perturbed,
        cast(null as varchar) as perturbation,
        cast(null as integer) as faulty_step_index,
        * exclude (step),
        step
    from original_steps
    union all by name
    select
        md5(episode_id || '|' || perturbation) as trace_id,
        true as is_perturbed,
        perturbation,
        faulty_step_index,
        * exclude (step, perturbation, faulty_step_index),
        step
    from perturbed_steps
),

-- Labels ---------------------------------------------------------------------------------------
flat_steps as (
    select
        traces.* exclude (step),
        step.step_index,
        step.kind,
        step.implies,
        step.text,
        step.claim,
        string_split(step.claim, ';') as claim_items
    from traces
),

rolled_out as (
    select
        *,
        last_value(implies ignore nulls) over (
            partition by trace_id order by step_index
            rows between unbounded preceding and 1 preceding
        ) as implied_before,
        coalesce(
            last_value(implies ignore nulls) over (
                partition by trace_id order by step_index
                rows between unbounded preceding and current row
            ),
            first_value(implies ignore nulls) over (
                partition by trace_id order by step_index
                rows between current row and unbounded following
            )
        ) as continuation_action
    from flat_steps
),

checked as (
    select
        rolled_out.*,
        case rolled_out.kind
            when 'observation'
                then coalesce(
                    list_bool_and(
                        list_transform(
                            rolled_out.claim_items,
                            item -> observed.rendered[split_part(item, '=', 1)]
                            = split_part(item, '=', 2)
                        )
                    ),
                    false
                )
            when 'inference'
                then list_bool_and(
                    list_transform(
                        list_filter(
                            rolled_out.claim_items,
                            item -> regexp_matches(item, '=-?[0-9.]+(<=|>=|<|>)-?[0-9.]+$')
                        ),
                        item -> case regexp_extract(item, '(<=|>=|<|>)')
                            when '<='
                                then
                                    cast(regexp_extract(item, '=(-?[0-9.]+)', 1) as double)
                                    <= cast(regexp_extract(item, '(<=|>=|<|>)(-?[0-9.]+)$', 2) as double)
                            when '>='
                                then
                                    cast(regexp_extract(item, '=(-?[0-9.]+)', 1) as double)
                                    >= cast(regexp_extract(item, '(<=|>=|<|>)(-?[0-9.]+)$', 2) as double)
                            when '<'
                                then
                                    cast(regexp_extract(item, '=(-?[0-9.]+)', 1) as double)
                                    < cast(regexp_extract(item, '(<=|>=|<|>)(-?[0-9.]+)$', 2) as double)
                            else
                                cast(regexp_extract(item, '=(-?[0-9.]+)', 1) as double)
                                > cast(regexp_extract(item, '(<=|>=|<|>)(-?[0-9.]+)$', 2) as double)
                        end
                    )
                )
            else
                case
                    when rolled_out.implied_before is not null
                        then rolled_out.implies = rolled_out.implied_before
                end
        end as verified,
        case rolled_out.continuation_action
            when 'buy' then counterfactuals.p_best_buy
            when 'sell' then counterfactuals.p_best_sell
            when 'hold' then counterfactuals.p_best_hold
        end as continuation_p_best,
        counterfactuals.n_rollouts
    from rolled_out
    left join observed on rolled_out.decision_point_id = observed.decision_point_id
    left join counterfactuals on rolled_out.episode_id = counterfactuals.episode_id
),

labelled as (
    select
        *,
        case when kind != 'observation' then continuation_p_best end as mc_label,
        case
            when is_perturbed and step_index = faulty_step_index then cast(0 as double)
            when kind = 'observation' then case when verified then 1.0 else 0.0 end
            when verified = false then cast(0 as double)
            else continuation_p_best
        end as auto_soft_label,
        case
            when is_perturbed and step_index = faulty_step_index then 'perturbation'
            when kind = 'observation' or verified = false then 'verification'
            when continuation_p_best is not null then 'monte_carlo'
        end as label_source
    from checked
),

final as (
    select
        {{ trace_columns() }},
        decision_point_id,
        symbol,
        bar_interval,
        decision_ts,
        bar_date,
        policy_id,
        policy_version,
        action,
        n_steps,
        step_index,
        kind,
        implies,
        text,
        claim,
        verified,
        continuation_action,
        mc_label,
        n_rollouts,
        auto_soft_label,
        auto_soft_label >= {{ threshold }} as auto_hard_label,
        label_source
    from labelled
)

select * from final
order by bar_date, symbol, bar_interval, decision_ts, episode_id, is_perturbed, step_index
