{#-
  What each reference policy decides at each decision point, and why: one row per
  (decision point, policy version of the seed reference_policies), with action, size and an
  ordered reasoning trace (observations stating features, inferences, one decision). Built from
  the decision point's own features only (int_decision_points: data at or before decision_ts);
  nothing later is read, and tests/episodes/test_decisions.py fails if the compiled SQL ever names a
  forward-looking column.

  Rules (assets/episodes/reference_policies.py holds the same rules and texts in Python, the test oracle):
  s = signal in sigmas, rounded to 4 decimals as rendered; k = entry_sigma;
  v = greatest(vol_20, vol_floor); size = least(size_cap, size_per_sigma * |s|) at 4 decimals
  for buy/sell, 0 for hold.
    momentum_v1        s = ret_20 / (v * sqrt(20)); buy s > k, sell s < -k, else hold
    mean_reversion_v1  s = the larger in magnitude of ret_1 / v and ret_5 / (v * sqrt(5))
                       (ties: the 1-bar move); sell s > k, buy s < -k, else hold
    breakout_v1        s = trend_gap_50 / (v * sqrt(20)); confirmed = range_pct / v (4 dp)
                       > range_vols_min or volume_z_20 (4 dp, NULL = no) > volume_z_min;
                       buy s > k and confirmed, sell s < -k and confirmed, else hold
    risk_off_v1        sell size_cap when regime is *_volatile or vol_20 (6 dp) > vol_max;
                       else hold
  Incremental by day like int_bars: a build replaces the days of its window. Changing the seed
  changes only the days built afterwards: rebuild the range (or --full-refresh) after editing it.
-#}
{#-
  The signal rules' reasoning steps (observations, inferences), rendered in their CTEs below.
  sqlfluff places a set block's lines by where the loop renders them, so LT02 is off here.
-#}
-- noqa: disable=LT02
{% set breakout_steps %}
    {{ observation_steps(['trend_gap_50', 'vol_20', 'range_pct', 'volume_z_20']) }},
    {{ band_inference(
        5, band_side('signal', 'entry_sigma', "'buy'", "'sell'"),
        'The close is {signal} sigma from its 50-bar mean, ', 'band',
        ['above', 'an upside breakout'], ['below', 'a downside breakout'], 'no breakout',
        'trend_sigma'
    ) }},
    {
        'step_index': 6,
        'kind': 'inference',
        'implies': case when range_ok or volume_ok then null else 'hold' end,
        'text': 'The bar''s range is ' || {{ fmt_fixed('range_vols', 2) }}
        || ' vols against ' || {{ fmt_fixed('range_vols_min', 2) }}
        || ' needed and '
        || coalesce(
            'volume z is ' || {{ fmt_signed('volume_z') }} || ' against '
            || {{ fmt_fixed('volume_z_min', 2) }} || ' needed',
            'volume z is undefined'
        )
        || ': '
        || case when range_ok or volume_ok then 'confirmed' else 'not confirmed' end
        || '.',
        'claim': 'range_vols=' || {{ fmt_fixed('range_vols', 4) }}
        || case when range_ok then '>' else '<=' end
        || {{ fmt_fixed('range_vols_min', 4) }}
        || ';volume_z='
        || coalesce(
            {{ fmt_fixed('volume_z', 4) }}
            || case when volume_ok then '>' else '<=' end
            || {{ fmt_fixed('volume_z_min', 4) }},
            'null'
        )
        || ';confirmed='
        || case when range_ok or volume_ok then 'true' else 'false' end
    }
{% endset %}

{% set mean_reversion_steps %}
    {{ observation_steps(['ret_1', 'ret_5', 'vol_20']) }},
    {
        'step_index': 4,
        'kind': 'inference',
        'implies': cast(null as varchar),
        'text': 'The 1-bar move is ' || {{ fmt_signed('move_1') }}
        || ' sigma and the 5-bar move ' || {{ fmt_signed('move_5') }}
        || ' sigma; the ' || larger_move || ' move is the larger.',
        'claim': 'move_1_sigma=' || {{ fmt_fixed('move_1', 4) }}
        || ';move_5_sigma=' || {{ fmt_fixed('move_5', 4) }}
    },
    {{ band_inference(
        5, 'action', 'A {signal} sigma move is ', 'stretch band',
        ['beyond', 'expect a pullback'], ['beyond', 'expect a bounce'], 'not stretched',
        'stretch_sigma'
    ) }}
{% endset %}

{% set momentum_steps %}
    {{ observation_steps(['ret_20', 'vol_20', 'regime_and_trend']) }},
    {{ band_inference(
        4, 'action', '20-bar momentum is {signal} sigma, ', 'entry band',
        ['above', 'the trend is up'], ['below', 'the trend is down'], 'no clear trend',
        'momentum_sigma'
    ) }}
{% endset %}
-- noqa: enable=LT02

with

decision_points as (
    select * from {{ ref('int_decision_points') }}
    where {{ in_build_window() }}
),

policies as (
    select * from {{ ref('reference_policies') }}
),

-- Every (decision point, policy version); each rule below takes the rows of its policies.
policy_points as (
    select
        decision_points.*,
        policies.*
    from decision_points
    cross join policies
),

-- signals of momentum_v1, mean_reversion_v1 and breakout_v1 ------------------------------------
momentum_signals as (
    select
        *,
        {{ as_rendered('ret_20 / (greatest(vol_20, vol_floor) * sqrt(20))', 4) }} as signal
    from policy_points
    where rule = 'momentum_v1'
),

mean_reversion_moves as (
    select
        *,
        {{ as_rendered('ret_1 / greatest(vol_20, vol_floor)', 4) }} as move_1,
        {{ as_rendered('ret_5 / (greatest(vol_20, vol_floor) * sqrt(5))', 4) }} as move_5
    from policy_points
    where rule = 'mean_reversion_v1'
),

mean_reversion_signals as (
    select
        *,
        case when abs(move_1) >= abs(move_5) then move_1 else move_5 end as signal,
        case when abs(move_1) >= abs(move_5) then '1-bar' else '5-bar' end as larger_move
    from mean_reversion_moves
),

breakout_signals as (
    select
        *,
        {{ as_rendered('trend_gap_50 / (greatest(vol_20, vol_floor) * sqrt(20))', 4) }}
            as signal,
        {{ as_rendered('range_pct / greatest(vol_20, vol_floor)', 4) }} as range_vols,
        {{ as_rendered('volume_z_20', 4) }} as volume_z
    from policy_points
    where rule = 'breakout_v1'
),

breakout_confirmed as (
    select
        *,
        range_vols > range_vols_min as range_ok,
        coalesce(volume_z > volume_z_min, false) as volume_ok
    from breakout_signals
),

-- The signal rules' actions: the side of the +/-entry_sigma band their signal is on (a
-- mean reversion trades against the move; a breakout only when confirmed), and their sizes.
signals as (
    select * from momentum_signals
    union all by name
    select * from mean_reversion_signals
    union all by name
    select * from breakout_confirmed
),

signal_actions as (
    select
        *,
        case
            when rule = 'mean_reversion_v1'
                then {{ band_side('signal', 'entry_sigma', "'sell'", "'buy'") }}
            when rule = 'breakout_v1' and not (range_ok or volume_ok) then 'hold'
            else {{ band_side('signal', 'entry_sigma', "'buy'", "'sell'") }}
        end as action
    from signals
),

signal_sized as (
    select
        *,
        {{ signal_size() }} as size
    from signal_actions
),

{% for rule, steps in [
    ('momentum_v1', momentum_steps),
    ('mean_reversion_v1', mean_reversion_steps),
    ('breakout_v1', breakout_steps),
] %}
    {{ rule | replace('_v1', '') }} as (
        select
            *,
            [
                {{ steps | trim | indent(12) }}
            ] as reasoning_steps
        from signal_sized
        where rule = '{{ rule }}'
    ),
{% endfor %}

-- risk_off_v1 ----------------------------------------------------------------------------------
risk_off_conditions as (
    select
        *,
        ends_with(regime, '_volatile') as volatile,
        {{ as_rendered('vol_20', 6) }} > vol_max as high_vol
    from policy_points
    where rule = 'risk_off_v1'
),

risk_off_actions as (
    select
        *,
        case when volatile or high_vol then 'sell' else 'hold' end as action,
        case
            when volatile or high_vol then {{ as_rendered('size_cap', 4) }}
            else cast(0 as double)
        end as size
    from risk_off_conditions
),

risk_off as (
    select
        *,
        [
            {{ observation_steps(['regime', 'vol_20']) }},
            {
                'step_index': 3,
                'kind': 'inference',
                'implies': action,
                'text': 'The regime is '
                || case when volatile then 'volatile' else 'calm' end
                || ' and volatility ' || {{ fmt_upct('vol_20') }} || ' is '
                || case when high_vol then 'above' else 'at or below' end
                || ' the ' || {{ fmt_upct('vol_max') }} || ' ceiling: '
                || case
                    when action = 'sell' then 'risk is elevated, go flat'
                    else 'risk is normal'
                end
                || '.',
                'claim': 'regime_volatile=' || case when volatile then 'true' else 'false' end
                || ';vol_20=' || {{ fmt_fixed('vol_20', 6) }}
                || case when high_vol then '>' else '<=' end
                || {{ fmt_fixed('vol_max', 6) }}
            }
        ] as reasoning_steps
    from risk_off_actions
),

-- all policies (each rule's own columns, such as its signal, are NULL in the others' rows) -----
decisions as (
    select * from momentum
    union all by name
    select * from mean_reversion
    union all by name
    select * from breakout
    union all by name
    select * from risk_off
),

-- Every trace closes with the decision step (action and size), numbered after the rule's steps.
final as (
    select
        md5(
            symbol || '|' || bar_interval || '|'
            || strftime(timezone('UTC', decision_ts), '%Y-%m-%dT%H:%M:%S.%fZ')
            || '|' || policy_id || '|' || cast(policy_version as varchar)
        ) as episode_id,
        {{ decision_point_columns() }},
        policy_id,
        policy_version,
        action,
        size,
        {{ closed_trace('reasoning_steps') }} as reasoning_steps,
        source_hashes
    from decisions
)

select * from final
order by symbol, bar_interval, ts, policy_id, policy_version
