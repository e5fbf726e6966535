{#-
  Steps of int_step_labels that break the labelling rules: a soft label outside [0, 1]; a
  perturbed trace whose faulty step is not labelled 0 / false, or that differs from its original
  in another step or in none; an original trace whose steps are not 1..n_steps.
-#}
with

steps as (
    select * from {{ ref('int_step_labels') }}
),

out_of_range as (
    select
        trace_id,
        step_index,
        'soft label outside [0, 1]' as problem
    from steps
    where auto_soft_label < 0 or auto_soft_label > 1
),

faulty_unlabelled as (
    select
        trace_id,
        step_index,
        'faulty step not labelled false' as problem
    from steps
    where
        is_perturbed and step_index = faulty_step_index
        and (auto_hard_label or auto_soft_label != 0 or label_source != 'perturbation')
),

pairs as (
    select
        perturbed.trace_id,
        perturbed.step_index,
        perturbed.faulty_step_index,
        perturbed.text != original.text or perturbed.claim != original.claim as changed
    from steps as perturbed
    inner join steps as original
        on
            perturbed.episode_id = original.trace_id
            and perturbed.step_index = original.step_index
    where perturbed.is_perturbed
),

wrong_changes as (
    select
        trace_id,
        step_index,
        case
            when changed then 'a step other than the faulty one changed'
            else 'the faulty step is unchanged'
        end as problem
    from pairs
    where changed != (step_index = faulty_step_index)
),

numbering as (
    select
        trace_id,
        min(step_index) as step_index,
        'steps are not numbered 1..n_steps' as problem
    from steps
    group by trace_id
    having min(step_index) != 1 or max(step_index) != max(n_steps) or count(*) != max(n_steps)
)

select * from out_of_range
union all
select * from faulty_unlabelled
union all
select * from wrong_changes
union all
select * from numbering
