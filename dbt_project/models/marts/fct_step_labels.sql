{#-
  Every reasoning step's final label: the automatic label of int_step_labels (exact verification
  of observations, Monte-Carlo rollouts of inferences and decisions, known faults of perturbed
  traces), overridden by expert ratings from the feedback feed where an expert rated the step.

  Expert ratings (stg_feedback, PRM800K's -1 / 0 / +1) apply to original traces only (trace_id =
  episode_id) and match on (episode_id, step_index). A rater who rated a step again counts with
  the latest rating (by rated_at, then source_hash); expert_rating is the mean over raters.
  Where an expert rated the step:
    soft_label   = (expert_rating + 1) / 2
    hard_label   = expert_rating >= 0      (0 is PRM800K's neutral: not an error)
    label_source = 'expert'
  else the automatic soft / hard label and its source. agrees_with_auto compares the expert's
  hard label with the automatic one (NULL without an expert rating or an automatic label).
  A full table: a rating can arrive for any past episode.
-#}
with

step_labels as (
    select * from {{ ref('int_step_labels') }}
),

feedback as (
    select * from {{ ref('stg_feedback') }}
),

latest_ratings as (
    select
        episode_id,
        step_index,
        rater_id,
        rating
    from feedback
    qualify row_number() over (
        partition by episode_id, step_index, rater_id
        order by rated_at desc, source_hash desc
    ) = 1
),

expert as (
    select
        episode_id,
        step_index,
        avg(rating) as expert_rating,
        cast(count(*) as integer) as n_expert_ratings
    from latest_ratings
    group by episode_id, step_index
),

joined as (
    select
        {{ trace_columns('step_labels') }},
        step_labels.decision_point_id,
        step_labels.symbol,
        step_labels.bar_interval,
        step_labels.decision_ts,
        step_labels.bar_date,
        step_labels.policy_id,
        step_labels.policy_version,
        step_labels.action,
        step_labels.n_steps,
        step_labels.step_index,
        step_labels.kind,
        step_labels.implies,
        step_labels.text,
        step_labels.claim,
        step_labels.verified,
        step_labels.continuation_action,
        step_labels.mc_label,
        step_labels.n_rollouts,
        step_labels.auto_soft_label,
        step_labels.auto_hard_label,
        step_labels.label_source as auto_label_source,
        expert.expert_rating,
        coalesce(expert.n_expert_ratings, 0) as n_expert_ratings
    from step_labels
    left join expert
        on
            step_labels.episode_id = expert.episode_id
            and step_labels.step_index = expert.step_index
            and not step_labels.is_perturbed
            and step_labels.trace_id = step_labels.episode_id
),

final as (
    select
        *,
        case
            when expert_rating is not null then (expert_rating + 1) / 2
            else auto_soft_label
        end as soft_label,
        case
            when expert_rating is not null then expert_rating >= 0
            else auto_hard_label
        end as hard_label,
        case
            when expert_rating is not null then 'expert'
            when auto_soft_label is not null or auto_hard_label is not null
                then auto_label_source
        end as label_source,
        case
            when expert_rating is not null then (expert_rating >= 0) = auto_hard_label
        end as agrees_with_auto
    from joined
)

select * from final
order by trace_id, step_index
