{#-
  Recorded decisions (stg_decisions) as episodes: each attaches to the latest decision point of
  its symbol (any bar_interval) whose decision_ts is at or before the recorded time and at most
  recorded_max_staleness_days earlier; its features, and hence its trace, come from that point
  alone. A decision with no such point is not an episode and is left out here (it stays in
  raw_decisions): keeping it, keyed by its own day, would let the order in which months are
  built decide which partition holds it, and a later build of the point's month would add it a
  second time.

  policy_id = 'recorded:' || agent_id, policy_version = 0. episode_id as int_decisions computes
  it, with the feed's decision_id in place of the version (one agent can decide twice at one
  point). The trace: three observation steps (20-bar return, volatility, regime and trend gap,
  as momentum_v1 words them), the decider's rationale as one inference step when given
  (claim 'rationale=recorded', implies NULL: it cannot be checked against the data), and the
  decision step.

  The outcome of a recorded decision is measured from the close of the decision bar, as for the
  reference policies: if the decider acted later than that close, prices between the two are
  in its outcome (documented; the features never see them).
  Incremental by day: a build replaces the days of its window.
-#}
{%- set staleness_days = var('recorded_max_staleness_days', 4) | int -%}
{%- set first_point_day = modules.datetime.date.fromisoformat(var('min_date'))
    - modules.datetime.timedelta(days=staleness_days) -%}
with

recorded as (
    select * from {{ ref('stg_decisions') }}
),

points as (
    select * from {{ ref('int_decision_points') }}
    where {{ in_build_window(first_day=first_point_day.isoformat()) }}
),

attached as (
    select
        recorded.*,
        points.decision_point_id,
        points.bar_interval,
        points.ts,
        points.decision_ts,
        points.bar_date as point_date,
        points.ret_20,
        points.vol_20,
        points.trend_gap_50,
        points.regime,
        points.source_hashes as point_source_hashes
    from recorded
    asof left join points
        on
            recorded.symbol = points.symbol
            and recorded.recorded_ts >= points.decision_ts
),

matched as (
    select
        * exclude (point_date),
        point_date as bar_date
    from attached
    where decision_ts >= recorded_ts - interval {{ staleness_days }} day
),

in_window as (
    select * from matched
    where {{ in_build_window() }}
),

-- The steps before the decision: the features the decider saw, then its rationale if it gave
-- one (final closes the trace with the decision).
reasoned as (
    select
        *,
        list_concat(
            [{{ observation_steps(['ret_20', 'vol_20', 'regime_and_trend']) }}],
            case
                when rationale is not null
                    then
                        [{
                            'step_index': 4,
                            'kind': 'inference',
                            'implies': cast(null as varchar),
                            'text': rationale,
                            'claim': 'rationale=recorded'
                        }]
                else []
            end
        ) as reasoning_steps
    from in_window
),

final as (
    select
        md5(
            symbol || '|' || bar_interval || '|'
            || strftime(timezone('UTC', decision_ts), '%Y-%m-%dT%H:%M:%S.%fZ')
            || '|recorded:' || agent_id || '|' || decision_id
        ) as episode_id,
        decision_id,
        agent_id,
        recorded_ts,
        {{ decision_point_columns() }},
        'recorded:' || agent_id as policy_id,
        0 as policy_version,
        action,
        size,
        rationale,
        {{ closed_trace('reasoning_steps') }} as reasoning_steps,
        list_sort(list_distinct(list_append(point_source_hashes, source_hash))) as source_hashes
    from reasoned
)

select * from final
order by bar_date, symbol, recorded_ts, decision_id
