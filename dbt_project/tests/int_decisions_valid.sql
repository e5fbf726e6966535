{#-
  Rows of int_decisions that break the shape of a decision: size outside [0, 1], a hold with a
  non-zero size or a trade with zero size, or a trace that is not 2-4 observations, then 1-2
  inferences, then exactly one decision, numbered 1..n in order, each with a kind, text and claim.
-#}
with

decisions as (
    select * from {{ ref('int_decisions') }}
),

steps as (
    select
        episode_id,
        size,
        action,
        len(reasoning_steps) as n_steps,
        list_transform(reasoning_steps, s -> s.kind) as kinds,
        list_transform(reasoning_steps, s -> s.step_index) as indexes,
        list_bool_or(
            list_transform(
                reasoning_steps, s -> s.kind is null or s.text is null or s.claim is null
            )
        ) as has_null
    from decisions
),

violations as (
    select
        episode_id,
        action,
        size,
        kinds
    from steps
    where
        size is null
        or size < 0
        or size > 1
        or (action = 'hold') != (size = 0)
        or coalesce(has_null, true)
        or indexes != range(1, n_steps + 1)
        or len(list_filter(kinds, k -> k = 'observation')) not between 2 and 4
        or len(list_filter(kinds, k -> k = 'inference')) not between 1 and 2
        or len(list_filter(kinds, k -> k = 'decision')) != 1
        or kinds[n_steps] != 'decision'
        or list_position(kinds, 'inference')
        != len(list_filter(kinds, k -> k = 'observation')) + 1
        or list_filter(kinds, k -> k not in ('observation', 'inference', 'decision')) != []
)

select * from violations
