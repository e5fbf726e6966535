{#-
  Rows of int_counterfactuals whose counterfactual environment could use the future: an analog
  that matured after the decision, ev values without enough analogs, or a decision_quality that
  does not follow the ex-ante advantage.
-#}
with

counterfactuals as (
    select * from {{ ref('int_counterfactuals') }}
),

violations as (
    select
        episode_id,
        decision_ts,
        latest_analog_matured_at,
        n_analogs
    from counterfactuals
    where
        latest_analog_matured_at > decision_ts
        or (n_analogs > 0) != (latest_analog_matured_at is not null)
        or n_analogs > {{ var('analog_count', 250) | int }}
        or (ev_buy is not null) != (n_analogs >= {{ var('min_analogs', 20) | int }})
        or (decision_quality is null) != (ev_buy is null)
        or (reward is null) != (not is_mature)
        or abs(luck + ev_action - reward) > 1e-9
)

select * from violations
