{#-
  Expert ratings of reasoning steps (raw_feedback), one row per rating, from EVERY raw day: a
  rating of an old episode can arrive at any time, so this view ignores the build window
  (min_date, max_date) and is unpartitioned in Dagster. Ratings are PRM800K's -1 / 0 / +1.
-#}
-- depends_on: {{ source('raw', 'feedback') }}
with

raw_rows as (
    select * from {{ raw_table('feedback', '1970-01-01', '2099-12-31') }}
),

renamed as (
    select
        cast(episode_id as varchar) as episode_id,
        cast(step_index as integer) as step_index,
        cast(rating as integer) as rating,
        cast(rater_id as varchar) as rater_id,
        cast(ts as timestamptz) as rated_at,
        cast(comment as varchar) as comment,
        cast(feed as varchar) as feed,
        cast(source_file as varchar) as source_file,
        cast(source_hash as varchar) as source_hash,
        cast(partition_date as date) as feedback_date
    from raw_rows
)

select * from renamed
