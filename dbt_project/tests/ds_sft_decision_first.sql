-- ds_sft completions are decision-first: the first line is the decision step of the episode's
-- trace, so the first word of the completion is the action (and the target). Rows returned fail.
select
    ds_sft.episode_id,
    ds_sft.action,
    split_part(ds_sft.completion, chr(10), 1) as first_line
from {{ ref('ds_sft') }} as ds_sft
inner join {{ ref('fct_decision_episodes') }} as episodes
    on ds_sft.episode_id = episodes.episode_id
where
    split_part(ds_sft.completion, chr(10), 1)
    != list_filter(episodes.reasoning_steps, s -> s.kind = 'decision')[1].text
    or split_part(split_part(ds_sft.completion, chr(10), 1), ' ', 1)
    not in (ds_sft.action, ds_sft.action || ':')
