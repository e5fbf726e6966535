{#-
  Process reward data: one row per reasoning trace (originals and their perturbed variants with
  a known faulty step) of a mature episode in train / validation / test, whose every step has a
  hard and a soft label (fct_step_labels: expert where rated, else automatic). completions are
  the step texts in order; labels (hard), soft_labels and label_sources are aligned with them,
  one entry per step, so len(completions) = len(labels) = len(soft_labels) = n_steps.
-#}
with

episodes as (
    select * from {{ ref('fct_decision_episodes') }}
),

step_labels as (
    select * from {{ ref('fct_step_labels') }}
),

traces as (
    select
        {{ trace_columns() }},
        n_steps,
        list(cast(step_index as bigint) order by step_index) as step_indexes,
        list(text order by step_index) as completions,
        list(hard_label order by step_index) as labels,
        list(soft_label order by step_index) as soft_labels,
        list(label_source order by step_index) as label_sources,
        count(hard_label) as n_hard_labels,
        count(soft_label) as n_soft_labels
    from step_labels
    group by {{ trace_columns() }}, n_steps
),

labelled as (
    select * from traces
    where
        n_hard_labels = n_steps
        and n_soft_labels = n_steps
        and step_indexes = range(1, n_steps + 1)
),

final as (
    select
        {{ trace_columns('labelled') }},
        episodes.prompt,
        labelled.completions,
        labelled.labels,
        labelled.soft_labels,
        labelled.label_sources,
        labelled.n_steps,
        episodes.split,
        episodes.decision_ts,
        episodes.symbol,
        episodes.bar_interval,
        episodes.policy_id,
        episodes.policy_version,
        episodes.source_hashes,
        episodes.outcome_source_hashes
    from labelled
    inner join episodes on labelled.episode_id = episodes.episode_id
    where
        episodes.is_mature
        and episodes.split in ('train', 'validation', 'test')
)

select * from final
order by decision_ts, symbol, bar_interval, episode_id, is_perturbed, trace_id
