{#-
  The decision episode (DESIGN.md section 5): one row per decision of int_counterfactuals (every
  reference policy and every recorded decision matched to a decision point), with its context, the prompt a model
  sees, the reasoning trace and its step labels, the realized and counterfactual outcomes, the
  ex-ante judgement, lineage, and the walk-forward split every dataset inherits.

  prompt: the decision point's context rendered as text (symbol, bar interval, decision time,
  every feature as the reasoning steps render numbers: returns and volatilities as percentages
  with 2 decimals, the volume z-score in sigmas; regime), the analog evidence of
  int_counterfactuals (n_analogs; ev and standard error of buy and sell, 3 decimals, and their
  t = ev / se, 2 decimals: only analogs whose outcome was known at or before decision_ts) and
  the instruction, which states the decision rule of target_action. Built in the CTE `prompts`
  from int_decision_points and the point-level ex-ante columns of int_counterfactuals: nothing
  after decision_ts and no policy, so every policy at one decision point gets the same prompt.
  completion: decision-first, the decision step's line ("buy 0.2500 of capital", "hold: no
  trade"), then the other steps' texts in trace order, one per line.

  Walk-forward split with embargo. Boundaries V = validation_start, T = test_start (UTC
  midnight of the vars when set; otherwise the validation_quantile (0.70) and test_quantile
  (0.85) quantiles, quantile_disc, of the distinct UTC decision dates of the mature episodes).
  By decision_ts an episode falls in train (< V), validation (< T) or test; it keeps that split
  only if its outcome matured before the next split starts (train: matured_at < V, validation:
  matured_at < T), an embargo of at least the longest horizon; otherwise split = 'embargo'.
  Immature episodes (and all episodes while no boundary exists) have split NULL. Hence the
  latest matured_at of a split is before the earliest decision_ts of the next one, and no
  dataset (which keeps only train / validation / test) ever trains on an outcome that a later
  split's decision could have known. Derived boundaries move as data arrives; set the vars to
  freeze them.

  built_by is deterministic (no invocation id), so a rebuild on the same inputs is identical.
-#}
{%- set horizons = outcome_horizons() -%}
{%- set max_h = horizons[-1] -%}
{%- set validation_start = var('validation_start', none) -%}
{%- set test_start = var('test_start', none) -%}
{%- if (validation_start is none) != (test_start is none) -%}
    {{ exceptions.raise_compiler_error("set both validation_start and test_start, or neither") }}
{%- endif -%}
{%- if validation_start is not none
    and modules.datetime.date.fromisoformat(validation_start | string)
    >= modules.datetime.date.fromisoformat(test_start | string) -%}
    {{ exceptions.raise_compiler_error("validation_start must be before test_start") }}
{%- endif -%}
{%- set nl = 'chr(10)' -%}
with

counterfactuals as (
    select * from {{ ref('int_counterfactuals') }}
),

decision_points as (
    select * from {{ ref('int_decision_points') }}
),

-- The traces: every reference policy's and every recorded decision's (as int_counterfactuals).
decisions as (
    select * from {{ ref('int_all_decisions') }}
),

outcomes as (
    select * from {{ ref('int_outcomes') }}
),

step_labels as (
    select * from {{ ref('fct_step_labels') }}
),

-- The analog evidence of each decision point (int_counterfactuals: analogs whose outcome was
-- known at or before decision_ts), the same for every policy deciding there.
analog_evidence as (
    select
        decision_point_id,
        any_value(n_analogs) as n_analogs,
        any_value(ev_buy) as ev_buy,
        any_value(ev_sell) as ev_sell,
        any_value(ev_se_buy) as ev_se_buy,
        any_value(ev_se_sell) as ev_se_sell
    from counterfactuals
    group by decision_point_id
),

-- The context a model sees: decision-point features and analog evidence, no policy, nothing
-- after decision_ts. The decision line comes first in the answer (decision-first completions).
prompts as (
    select
        decision_points.decision_point_id,
        'Symbol: ' || decision_points.symbol || {{ nl }}
        || 'Bar interval: ' || bar_interval || {{ nl }}
        || 'Decision time: '
        || strftime(timezone('UTC', decision_ts), '%Y-%m-%dT%H:%M:%SZ')
        || ' (the close of the latest bar)' || {{ nl }}
        || 'Context, from the bars up to the decision time:' || {{ nl }}
        || '- last bar''s log return: ' || {{ fmt_pct('ret_1') }} || {{ nl }}
        || '- 5-bar log return: ' || {{ fmt_pct('ret_5') }} || {{ nl }}
        || '- 20-bar log return: ' || {{ fmt_pct('ret_20') }} || {{ nl }}
        || '- 20-bar volatility: ' || {{ fmt_upct('vol_20') }} || ' per bar' || {{ nl }}
        || '- mean 20-bar volatility of the previous 100 bars: '
        || {{ fmt_upct('vol_20_mean_100') }} || ' per bar' || {{ nl }}
        || '- volume z-score against the previous 20 bars: '
        || coalesce(
            {{ fmt_signed('volume_z_20') }} || ' sigma',
            'undefined (the previous 20 volumes were constant)'
        ) || {{ nl }}
        || '- high-low range of the bar: ' || {{ fmt_upct('range_pct') }} || ' of the close'
        || {{ nl }}
        || '- opening gap (log, from the previous close): ' || {{ fmt_pct('gap') }} || {{ nl }}
        || '- close against its 50-bar mean: ' || {{ fmt_pct('trend_gap_50') }} || {{ nl }}
        || '- regime: ' || regime || {{ nl }}
        || case
            when analog_evidence.ev_buy is null
                then
                    'Analog evidence: only ' || coalesce(analog_evidence.n_analogs, 0)
                    || ' earlier ' || regime || ' bars of ' || decision_points.symbol
                    || ' had a known {{ max_h }}-bar result at the decision time,'
                    || ' too few for an estimate.' || {{ nl }}
            else
                'Analog evidence: the ' || analog_evidence.n_analogs || ' latest earlier '
                || regime || ' bars of ' || decision_points.symbol
                || ' whose {{ max_h }}-bar result was known at the decision time; mean'
                || ' {{ max_h }}-bar log return in units of volatility, net of costs, with its'
                || ' standard error and t = mean / standard error:' || {{ nl }}
                || '- buy: ' || {{ fmt_signed('analog_evidence.ev_buy', 3) }} || ' +- '
                || {{ fmt_fixed('analog_evidence.ev_se_buy', 3) }} || ' (t = '
                || {{ fmt_signed('analog_evidence.ev_buy / nullif(analog_evidence.ev_se_buy, 0)') }}
                || ')' || {{ nl }}
                || '- sell: ' || {{ fmt_signed('analog_evidence.ev_sell', 3) }} || ' +- '
                || {{ fmt_fixed('analog_evidence.ev_se_sell', 3) }} || ' (t = '
                || {{ fmt_signed('analog_evidence.ev_sell / nullif(analog_evidence.ev_se_sell, 0)') }}
                || ')' || {{ nl }}
                || '- hold: 0 (no position)' || {{ nl }}
        end
        || 'Decide whether to buy, sell or hold ' || decision_points.symbol
        || ' over the next {{ max_h }} bars: buy or sell only if its t is above '
        || '{{ var("target_z", 2) }}, else hold. Answer with the decision on the first line'
        || ' ("buy <fraction> of capital", "sell <fraction> of capital" or "hold: no trade"),'
        || ' then your reasons, one per line.' as prompt
    from decision_points
    left join analog_evidence
        on decision_points.decision_point_id = analog_evidence.decision_point_id
),

original_labels as (
    select
        episode_id,
        list(
            {
                'step_index': step_index,
                'kind': kind,
                'soft_label': soft_label,
                'hard_label': hard_label,
                'label_source': label_source
            }
            order by step_index
        ) as step_labels,
        case
            when bool_or(not hard_label) then false
            when count(hard_label) = max(n_steps) and count(*) = max(n_steps) then true
        end as all_steps_correct
    from step_labels
    where not is_perturbed and trace_id = episode_id
    group by episode_id
),

mature_dates as (
    select distinct cast(timezone('UTC', decision_ts) as date) as decision_date
    from counterfactuals
    where is_mature
),

boundaries as (
    select
        {%- if validation_start is not none %}
            timezone('UTC', timestamp '{{ validation_start }}') as split_validation_start,
            timezone('UTC', timestamp '{{ test_start }}') as split_test_start
        {%- else %}
            timezone(
                'UTC',
                cast(
                    quantile_disc(decision_date, {{ var('validation_quantile', 0.70) }})
                    as timestamp
                )
            ) as split_validation_start,
            timezone(
                'UTC',
                cast(quantile_disc(decision_date, {{ var('test_quantile', 0.85) }}) as timestamp)
            ) as split_test_start
        {%- endif %}
    from mature_dates
),

joined as (
    select
        counterfactuals.episode_id,
        counterfactuals.decision_point_id,
        counterfactuals.symbol,
        counterfactuals.bar_interval,
        counterfactuals.ts,
        counterfactuals.decision_ts,
        counterfactuals.bar_date,
        counterfactuals.bar_date as partition_date,
        decision_points.close,
        decision_points.bars_seen,
        decision_points.ret_1,
        decision_points.ret_5,
        decision_points.ret_20,
        decision_points.vol_20,
        decision_points.volume_z_20,
        decision_points.range_pct,
        decision_points.gap,
        decision_points.trend_gap_50,
        decision_points.vol_20_mean_100,
        decision_points.regime,
        prompts.prompt,
        counterfactuals.policy_id,
        counterfactuals.policy_version,
        counterfactuals.action,
        counterfactuals.size,
        decisions.reasoning_steps,
        -- Decision-first: the decision step's line, then the other steps in trace order.
        array_to_string(
            list_transform(
                list_concat(
                    list_filter(decisions.reasoning_steps, s -> s.kind = 'decision'),
                    list_filter(decisions.reasoning_steps, s -> s.kind != 'decision')
                ),
                s -> s.text
            ),
            {{ nl }}
        ) as completion,
        len(decisions.reasoning_steps) as n_steps,
        original_labels.step_labels,
        original_labels.all_steps_correct,
        {%- for h in horizons %}
            outcomes.fwd_ret_{{ h }},
        {%- endfor %}
        counterfactuals.reward_horizon,
        counterfactuals.matured_at,
        counterfactuals.is_mature,
        counterfactuals.reward,
        counterfactuals.cf_reward_buy,
        counterfactuals.cf_reward_sell,
        counterfactuals.cf_reward_hold,
        counterfactuals.n_analogs,
        counterfactuals.ev_buy,
        counterfactuals.ev_sell,
        counterfactuals.ev_hold,
        counterfactuals.ev_se_buy,
        counterfactuals.ev_se_sell,
        counterfactuals.ev_se_hold,
        counterfactuals.p_best_buy,
        counterfactuals.p_best_sell,
        counterfactuals.p_best_hold,
        counterfactuals.n_rollouts,
        counterfactuals.ev_action,
        counterfactuals.advantage,
        counterfactuals.advantage_se,
        counterfactuals.best_action_ex_ante,
        counterfactuals.target_action,
        counterfactuals.decision_quality,
        counterfactuals.luck,
        boundaries.split_validation_start,
        boundaries.split_test_start,
        counterfactuals.source_hashes,
        counterfactuals.outcome_source_hashes
    from counterfactuals
    cross join boundaries
    inner join decision_points
        on counterfactuals.decision_point_id = decision_points.decision_point_id
    inner join prompts on counterfactuals.decision_point_id = prompts.decision_point_id
    left join decisions on counterfactuals.episode_id = decisions.episode_id
    left join original_labels on counterfactuals.episode_id = original_labels.episode_id
    left join outcomes
        on {{ same_keys('counterfactuals', 'outcomes') }}
),

final as (
    select
        *,
        case
            when not is_mature or split_validation_start is null then null
            when decision_ts < split_validation_start
                then case when matured_at < split_validation_start then 'train' else 'embargo' end
            when decision_ts < split_test_start
                then case when matured_at < split_test_start then 'validation' else 'embargo' end
            else 'test'
        end as split,
        'dbt:{{ project_name }}/{{ model.name }}@{{ var("built_by_version") }}' as built_by
    from joined
)

select * from final
order by symbol, bar_interval, ts, policy_id, policy_version
