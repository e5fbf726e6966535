{#-
  Counterfactual and ex-ante rewards of every decision: one row per int_all_decisions row of the
  build window, for the reward horizon H = the largest of var('horizons').

  Realized (from int_outcomes; NULL while the episode is immature), with
  cost = cost_bps / 1e4 (round trip) and scale = greatest(vol_20 * sqrt(H), 1e-4), vol_20 the
  decision bar's own (ex-ante) volatility:
    cf_reward_buy  = (fwd_ret_H - cost) / scale
    cf_reward_sell = (-fwd_ret_H - cost) / scale
    cf_reward_hold = 0
    reward         = size * cf_reward_<action> for buy / sell, 0 for hold (a sized position earns
                     its size times the unit reward; going flat earns nothing and costs nothing)

  Ex-ante (the counterfactual environment; only data known at decision_ts): the analogs of a
  decision point are the earlier decision points of the same symbol, bar_interval and regime
  whose outcome matured at or before its decision_ts (matured_at <= decision_ts) and whose
  bar_date is at most lookback_days before its own, the most recent analog_count (250) of them
  by matured_at. Their realized unit rewards (same formulas, each with its own scale) give
  ev_<action> (mean; ev_hold = 0) and ev_se_<action> (sample std / sqrt(n); ev_se_hold = 0);
  all NULL when fewer than min_analogs (20). An analog's outcome is recomputed here from
  int_bars exactly as int_outcomes computes it (lead over the series, lookahead_days limit):
  every bar it needs closes at or before the decision, so it lies in int_bars up to max_date,
  and the result does not depend on whether the analog's own int_outcomes partition was rebuilt
  after its horizon bars landed.

  Monte-Carlo rollouts (var mc_rollouts, 16): each rollout draws an environment, the mean
  rewards of buy and sell, from their sampling distribution given the analogs (normal with means
  ev_buy / ev_sell, standard errors ev_se_*, and the correlation of the analogs' buy and sell
  rewards: a parametric bootstrap; draws from hash(decision point, rollout), the same in every
  build), and takes the action with the highest drawn ev (ties as below).
    p_best_<action>    share of rollouts in which <action> is the ex-ante best (its advantage over
                       both others is positive); they sum to 1. n_rollouts counts the rollouts.
  int_step_labels uses them as Math-Shepherd style soft labels of reasoning steps.

  Decisions (int_all_decisions): every reference policy's (int_decisions) and every recorded
  decision matched to a decision point (int_recorded_decisions).

  Judgement, from ex-ante values only:
    ev_action          size * ev_<action> (0 for hold): the expected value of reward
    luck               reward - ev_action (NULL while immature)
    advantage          ev_<action> - max of the other two actions' ev (per unit size)
    advantage_se       sqrt(ev_se_<action>^2 + ev_se_<best other>^2)
    decision_quality   'good' if advantage > 2 * advantage_se, 'bad' if < -2 * advantage_se,
                       else 'neutral'; NULL without enough analogs
    best_action_ex_ante  argmax of ev (ties: hold, then buy, then sell)
    target_action      the action the analog evidence supports, the decision target of ds_sft:
                       buy (sell) if t_buy = ev_buy / ev_se_buy (t_sell) exceeds var target_z
                       (2) and the other t, else hold; t as the prompt renders it (2 decimals),
                       so the target is a function of what the prompt shows at decision_ts

  Reads int_decision_points and int_bars from lookback_days before min_date: the analogs come
  from days built earlier, so partitions must be built in date order (as for int_features).
  Given that, the analog set of a decision does not depend on the build window (the lookback is
  bounded per decision). ev and ev_se are rounded to 10 decimals.
  Incremental by day: a build replaces the days of its window.
-#}
{%- set max_h = outcome_horizons()[-1] -%}
{%- set lookback_days = var('lookback_days') | int -%}
{%- set lookahead_days = var('lookahead_days', 45) | int -%}
{%- set analog_count = var('analog_count', 250) | int -%}
{%- set min_analogs = var('min_analogs', 20) | int -%}
{%- set mc_rollouts = var('mc_rollouts', 16) | int -%}
{%- set cost = (var('cost_bps', 5) | float) / 10000 -%}
{%- set target_z = var('target_z', 2) | float -%}
with

bars as (
    select * from {{ ref('int_bars') }}
    where {{ in_build_window(first_day=lookback_start()) }}
),

points as (
    select * from {{ ref('int_decision_points') }}
    where {{ in_build_window(first_day=lookback_start()) }}
),

-- The analogs' outcomes, as int_outcomes computes fwd_ret_H and matured_at.
bar_outcomes as (
    select
        symbol,
        bar_interval,
        ts,
        ln(lead(close, {{ max_h }}) over w / close) as fwd_ret,
        lead(ts, {{ max_h }}) over w + {{ bar_length('bar_interval') }} as matured_at,
        lead(bar_date, {{ max_h }}) over w <= bar_date + {{ lookahead_days }} as in_reach
    from bars
    window w as (partition by symbol, bar_interval order by ts)
),

analogs as (
    select
        points.symbol,
        points.bar_interval,
        points.regime,
        points.bar_date,
        bar_outcomes.matured_at,
        (bar_outcomes.fwd_ret - {{ cost }})
        / greatest(points.vol_20 * sqrt({{ max_h }}), 1e-4) as reward_buy,
        (-bar_outcomes.fwd_ret - {{ cost }})
        / greatest(points.vol_20 * sqrt({{ max_h }}), 1e-4) as reward_sell
    from points
    inner join bar_outcomes
        on {{ same_keys('points', 'bar_outcomes') }}
    where bar_outcomes.in_reach
),

-- Analogs numbered by matured_at within (series, regime); matured_at grows with ts in a series,
-- so bar_date never decreases with the number.
ranked_analogs as (
    select
        *,
        row_number() over (
            partition by symbol, bar_interval, regime order by matured_at
        ) as analog_rank
    from analogs
),

first_rank_of_day as (
    select
        symbol,
        bar_interval,
        regime,
        bar_date,
        min(analog_rank) as first_rank
    from ranked_analogs
    group by symbol, bar_interval, regime, bar_date
),

window_points as (
    select
        {{ decision_point_columns() }},
        regime,
        vol_20,
        bar_date - {{ lookback_days }} as analog_first_date
    from points
    where {{ in_build_window() }}
),

-- The last analog matured by decision_ts (its rank is the number matured so far) ...
latest as (
    select
        window_points.*,
        ranked_analogs.analog_rank as last_rank,
        ranked_analogs.matured_at as latest_analog_matured_at
    from window_points
    asof left join ranked_analogs
        on
            {{ same_keys('window_points', 'ranked_analogs', ['symbol', 'bar_interval', 'regime']) }}
            and window_points.decision_ts >= ranked_analogs.matured_at
),

-- ... and the first analog inside the decision's look-back.
bounds as (
    select
        latest.*,
        greatest(
            latest.last_rank - {{ analog_count - 1 }}, first_rank_of_day.first_rank
        ) as first_rank
    from latest
    asof left join first_rank_of_day
        on
            {{ same_keys('latest', 'first_rank_of_day', ['symbol', 'bar_interval', 'regime']) }}
            and latest.analog_first_date <= first_rank_of_day.bar_date
),

counted as (
    select
        *,
        coalesce(greatest(last_rank - first_rank + 1, 0), 0) as n_analogs
    from bounds
),

analog_ranks as (
    select
        decision_point_id,
        symbol,
        bar_interval,
        regime,
        hash(decision_point_id) as point_seed,
        unnest(range(first_rank, last_rank + 1)) as analog_rank
    from counted
    where n_analogs >= {{ min_analogs }}
),

environment as (
    select
        analog_ranks.decision_point_id,
        any_value(analog_ranks.point_seed) as point_seed,
        round(avg(ranked_analogs.reward_buy), 10) as ev_buy,
        round(avg(ranked_analogs.reward_sell), 10) as ev_sell,
        round(stddev_samp(ranked_analogs.reward_buy) / sqrt(count(*)), 10) as ev_se_buy,
        round(stddev_samp(ranked_analogs.reward_sell) / sqrt(count(*)), 10) as ev_se_sell,
        round(corr(ranked_analogs.reward_buy, ranked_analogs.reward_sell), 10) as buy_sell_corr
    from analog_ranks
    inner join ranked_analogs
        on {{ same_keys(
            'analog_ranks', 'ranked_analogs', ['symbol', 'bar_interval', 'regime', 'analog_rank']
        ) }}
    group by analog_ranks.decision_point_id
),

-- Monte-Carlo rollouts of the environment: each draws the mean rewards of buy and sell from
-- their sampling distribution (normal, with the standard errors and the correlation of the
-- analogs' rewards: the bootstrap distribution of the means for n >= min_analogs), from
-- hash(decision point, rollout) by Box-Muller, so they are the same in every build.
uniforms as (
    select
        environment.*,
        rollouts.rollout,
        (hash(environment.point_seed, rollouts.rollout, 0) + 0.5) / 18446744073709551616.0
            as u1,
        (hash(environment.point_seed, rollouts.rollout, 1) + 0.5) / 18446744073709551616.0
            as u2
    from environment
    cross join range({{ mc_rollouts }}) as rollouts (rollout)
),

normals as (
    select
        *,
        sqrt(-2 * ln(u1)) * cos(2 * pi() * u2) as z1,
        sqrt(-2 * ln(u1)) * sin(2 * pi() * u2) as z2,
        greatest(-1.0, least(1.0, coalesce(buy_sell_corr, 0))) as rho
    from uniforms
),

rollout_values as (
    select
        decision_point_id,
        ev_buy + ev_se_buy * z1 as rollout_buy,
        ev_sell + ev_se_sell * (rho * z1 + sqrt(1 - rho * rho) * z2) as rollout_sell
    from normals
),

-- The best action of each rollout (ties as best_action_ex_ante: hold, then buy, then sell).
action_probabilities as (
    select
        decision_point_id,
        count(*) as n_rollouts,
        avg(case when rollout_buy > 0 and rollout_buy >= rollout_sell then 1.0 else 0.0 end)
            as p_best_buy,
        avg(case when rollout_sell > 0 and rollout_sell > rollout_buy then 1.0 else 0.0 end)
            as p_best_sell,
        avg(case when rollout_buy <= 0 and rollout_sell <= 0 then 1.0 else 0.0 end)
            as p_best_hold
    from rollout_values
    group by decision_point_id
),

point_values as (
    select
        counted.decision_point_id,
        counted.regime,
        counted.vol_20,
        counted.n_analogs,
        case when counted.n_analogs > 0 then counted.latest_analog_matured_at end
            as latest_analog_matured_at,
        environment.ev_buy,
        environment.ev_sell,
        case when environment.ev_buy is not null then cast(0 as double) end as ev_hold,
        environment.ev_se_buy,
        environment.ev_se_sell,
        case when environment.ev_buy is not null then cast(0 as double) end as ev_se_hold,
        action_probabilities.n_rollouts,
        action_probabilities.p_best_buy,
        action_probabilities.p_best_sell,
        action_probabilities.p_best_hold
    from counted
    left join environment on counted.decision_point_id = environment.decision_point_id
    left join action_probabilities
        on counted.decision_point_id = action_probabilities.decision_point_id
),

decisions as (
    select * from {{ ref('int_all_decisions') }}
    where {{ in_build_window() }}
),

outcomes as (
    select * from {{ ref('int_outcomes') }}
    where {{ in_build_window() }}
),

realized as (
    select
        decisions.episode_id,
        {{ decision_point_columns('decisions') }},
        decisions.policy_id,
        decisions.policy_version,
        decisions.action,
        decisions.size,
        point_values.regime,
        outcomes.is_mature,
        outcomes.matured_at,
        greatest(point_values.vol_20 * sqrt({{ max_h }}), 1e-4) as reward_scale,
        case
            when outcomes.is_mature
                then
                    (outcomes.fwd_ret_{{ max_h }} - {{ cost }})
                    / greatest(point_values.vol_20 * sqrt({{ max_h }}), 1e-4)
        end as cf_reward_buy,
        case
            when outcomes.is_mature
                then
                    (-outcomes.fwd_ret_{{ max_h }} - {{ cost }})
                    / greatest(point_values.vol_20 * sqrt({{ max_h }}), 1e-4)
        end as cf_reward_sell,
        case when outcomes.is_mature then cast(0 as double) end as cf_reward_hold,
        point_values.n_analogs,
        point_values.latest_analog_matured_at,
        point_values.ev_buy,
        point_values.ev_sell,
        point_values.ev_hold,
        point_values.ev_se_buy,
        point_values.ev_se_sell,
        point_values.ev_se_hold,
        point_values.n_rollouts,
        point_values.p_best_buy,
        point_values.p_best_sell,
        point_values.p_best_hold,
        decisions.source_hashes,
        outcomes.outcome_source_hashes
    from decisions
    inner join point_values on decisions.decision_point_id = point_values.decision_point_id
    left join outcomes
        on {{ same_keys('decisions', 'outcomes') }}
),

judged as (
    select
        *,
        case action
            when 'buy' then size * cf_reward_buy
            when 'sell' then size * cf_reward_sell
            else cf_reward_hold
        end as reward,
        case action
            when 'buy' then ev_buy
            when 'sell' then ev_sell
            else ev_hold
        end as ev_unit,
        case action
            when 'buy' then ev_se_buy
            when 'sell' then ev_se_sell
            else ev_se_hold
        end as ev_se_unit,
        -- The best of the two other actions (ties: hold, then buy, then sell).
        case action
            when 'buy' then case when ev_hold >= ev_sell then 'hold' else 'sell' end
            when 'sell' then case when ev_hold >= ev_buy then 'hold' else 'buy' end
            else case when ev_buy >= ev_sell then 'buy' else 'sell' end
        end as best_other,
        case
            when ev_hold >= ev_buy and ev_hold >= ev_sell then 'hold'
            when ev_buy >= ev_sell then 'buy'
            when ev_sell is not null then 'sell'
        end as best_action_ex_ante,
        cast(printf('%.2f', ev_buy / nullif(ev_se_buy, 0)) as double) as t_buy,
        cast(printf('%.2f', ev_sell / nullif(ev_se_sell, 0)) as double) as t_sell
    from realized
),

compared as (
    select
        *,
        ev_unit - case best_other
            when 'buy' then ev_buy
            when 'sell' then ev_sell
            else ev_hold
        end as advantage,
        sqrt(
            ev_se_unit ** 2 + case best_other
                when 'buy' then ev_se_buy
                when 'sell' then ev_se_sell
                else ev_se_hold
            end ** 2
        ) as advantage_se
    from judged
),

final as (
    select
        episode_id,
        {{ decision_point_columns() }},
        policy_id,
        policy_version,
        action,
        size,
        regime,
        {{ max_h }} as reward_horizon,
        coalesce(is_mature, false) as is_mature,
        matured_at,
        reward_scale,
        cf_reward_buy,
        cf_reward_sell,
        cf_reward_hold,
        reward,
        n_analogs,
        latest_analog_matured_at,
        ev_buy,
        ev_sell,
        ev_hold,
        ev_se_buy,
        ev_se_sell,
        ev_se_hold,
        case when action = 'hold' then ev_unit else size * ev_unit end as ev_action,
        advantage,
        advantage_se,
        best_action_ex_ante,
        case
            when ev_buy is null then null
            when t_buy > {{ target_z }} and t_buy >= coalesce(t_sell, t_buy) then 'buy'
            when t_sell > {{ target_z }} then 'sell'
            else 'hold'
        end as target_action,
        case
            when advantage > 2 * advantage_se then 'good'
            when advantage < -2 * advantage_se then 'bad'
            when advantage is not null then 'neutral'
        end as decision_quality,
        reward - case when action = 'hold' then ev_unit else size * ev_unit end as luck,
        n_rollouts,
        p_best_buy,
        p_best_sell,
        p_best_hold,
        source_hashes,
        outcome_source_hashes
    from compared
)

select * from final
order by symbol, bar_interval, ts, policy_id, policy_version
