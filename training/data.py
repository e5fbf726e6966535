"""Datasets: read the Parquet marts, check their columns, shape rows for each trainer.

The marts (dbt, elsewhere) hold every split in one table with a ``split`` column; a stage reads
its files once and picks ``data.train_split`` and ``data.eval_split`` from it. Callers that
already hold the rows (a pandas frame or a datasets.Dataset) pass them instead of files.

Prompts are formatted with the model's chat template: the prompt is the user turn and the
completion the assistant turn, so that training matches how the model is asked at inference.
trl's trainers take that "conversational prompt-completion" form directly.
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from training.config import DataConfig

COLUMNS = {
    "sft": ("prompt", "completion", "split"),
    "dpo": ("prompt", "chosen", "rejected", "split"),
    "prm": ("prompt", "completions", "labels", "soft_labels", "split"),
}

Rows = datasets.Dataset | pd.DataFrame


def expand_files(patterns: list[str]) -> list[str]:
    """Absolute paths of the files named (globs expanded, order kept), or FileNotFoundError."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matches:
            raise FileNotFoundError(f"data.files: nothing matches {pattern!r}")
        files.extend(str(Path(m).resolve()) for m in matches)
    return files


def file_digests(files: list[str]) -> dict[str, str]:
    """sha256 of every input file, for the checkpoint's lineage."""
    out = {}
    for path in files:
        with open(path, "rb") as handle:
            out[path] = hashlib.file_digest(handle, "sha256").hexdigest()
    return out


def read_parquet(files: list[str]) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=files, split="train")


def as_dataset(rows: Rows) -> datasets.Dataset:
    if isinstance(rows, pd.DataFrame):
        return datasets.Dataset.from_pandas(rows, preserve_index=False)
    return rows


def check_columns(ds: datasets.Dataset, stage: str) -> None:
    missing = [c for c in COLUMNS[stage] if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"{stage} dataset lacks column(s) {', '.join(missing)}; it has {', '.join(ds.column_names)}"
        )


def pick_split(ds: datasets.Dataset, split: str, limit: int | None) -> datasets.Dataset:
    picked = ds.filter(lambda value: value == split, input_columns="split")
    if limit is not None:
        picked = picked.select(range(min(limit, len(picked))))
    return picked


def load_splits(
    data: DataConfig,
    stage: str,
    train_rows: Rows | None = None,
    eval_rows: Rows | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset | None, list[str]]:
    """(train, eval or None, files read). Rows passed in win over ``data.files``.

    Passed-in rows are used as they are (no split filter); only files are filtered by ``split``.
    """
    files: list[str] = []
    if train_rows is None:
        files = expand_files(data.files)
        table = read_parquet(files)
        check_columns(table, stage)
        train = pick_split(table, data.train_split, data.max_train_samples)
        if eval_rows is None and data.eval_split:
            eval_ds = pick_split(table, data.eval_split, data.max_eval_samples)
        else:
            eval_ds = None
    else:
        train = as_dataset(train_rows)
        check_columns(train, stage)
        eval_ds = None
    if eval_rows is not None:
        eval_ds = as_dataset(eval_rows)
        check_columns(eval_ds, stage)
    if len(train) == 0:
        raise ValueError(f"no {stage} training rows (split={data.train_split!r})")
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds = None
    return train, eval_ds, files


def first_lines(
    ds: datasets.Dataset | None, columns: tuple[str, ...], n: int | None
) -> datasets.Dataset | None:
    """Keep the first ``n`` lines of each text in ``columns`` (all when ``n`` is None). The
    datasets are decision-first, so ``n=1`` keeps the decision line only. No rows (a stage
    without an evaluation split) stay none."""
    if ds is None or n is None:
        return ds

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        return {c: "\n".join(row[c].split("\n")[:n]) for c in columns}

    return ds.map(fn)


def balance(ds: datasets.Dataset, column: str, seed: int) -> datasets.Dataset:
    """Every value of ``column`` as frequent as the most frequent one: each class's rows are
    repeated, then topped up by a seeded draw without replacement; the result is shuffled."""
    if column not in ds.column_names:
        raise ValueError(f"balancing needs a {column!r} column; the rows have {ds.column_names}")
    rng = np.random.default_rng(seed)
    values = np.asarray(ds[column], dtype=object)
    classes = sorted(set(values))
    indexes = {c: np.flatnonzero(values == c) for c in classes}
    target = max(len(i) for i in indexes.values())
    picked = []
    for c in classes:
        rows = indexes[c]
        repeats, extra = divmod(target, len(rows))
        picked.extend(np.tile(rows, repeats))
        picked.extend(rng.choice(rows, size=extra, replace=False))
    order = rng.permutation(len(picked))
    return ds.select([int(picked[i]) for i in order])


# ----------------------------------------------------------------------- chat formatting


def messages(prompt: str, completion: str | None = None, system: str | None = None) -> list:
    """Chat messages: optional system turn, the prompt as user, the completion as assistant."""
    # None: no system turn (the template may add its default); "" : an explicit empty one.
    out = [{"role": "system", "content": system}] if system is not None else []
    out.append({"role": "user", "content": prompt})
    if completion is not None:
        out.append({"role": "assistant", "content": completion})
    return out


def prompt_text(tokenizer: Any, prompt: str, system: str | None = None) -> str:
    """The prompt rendered by the chat template, ending where the assistant starts."""
    return tokenizer.apply_chat_template(
        messages(prompt, system=system), tokenize=False, add_generation_prompt=True
    )


def prompt_ids(tokenizer: Any, prompt: str, system: str | None = None) -> list[int]:
    # The template already holds every special token; adding BOS/EOS again would double them.
    return tokenizer(prompt_text(tokenizer, prompt, system), add_special_tokens=False)["input_ids"]


def to_sft(ds: datasets.Dataset, system: str | None) -> datasets.Dataset:
    """Conversational prompt-completion rows, as trl's SFTTrainer takes them."""

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt": messages(row["prompt"], system=system),
            "completion": [{"role": "assistant", "content": row["completion"]}],
        }

    return ds.map(fn, remove_columns=ds.column_names)


def to_dpo(ds: datasets.Dataset, system: str | None, min_margin: float) -> datasets.Dataset:
    """Conversational preference rows, as trl's DPOTrainer takes them."""
    if min_margin > 0 and "margin" in ds.column_names:
        ds = ds.filter(lambda m: m is not None and m >= min_margin, input_columns="margin")

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt": messages(row["prompt"], system=system),
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }

    return ds.map(fn, remove_columns=ds.column_names)


# ------------------------------------------------------------------------------- PRM rows


def separator_id(tokenizer: Any, separator: str) -> int:
    ids = tokenizer(separator, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"step_separator {separator!r} is {len(ids)} tokens for this tokenizer; "
            "choose one that is a single token"
        )
    return ids[0]


def prm_input(
    tokenizer: Any,
    prompt: str,
    steps: list[str],
    sep_id: int,
    system: str | None = None,
    max_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """(input_ids, positions of the separator after each step).

    Steps are tokenized one by one and joined with the separator *id*, not the separator text:
    BPE may merge '\\n' with its neighbours in a joined string, which would leave a step without
    its label position. Training and scoring both build inputs here, so they agree. Steps that
    do not fit in ``max_length`` are dropped (their positions are missing from the result).
    """
    ids = prompt_ids(tokenizer, prompt, system)
    positions = []
    for step in steps:
        step_ids = tokenizer(step, add_special_tokens=False)["input_ids"] + [sep_id]
        if max_length is not None and len(ids) + len(step_ids) > max_length:
            break
        ids += step_ids
        positions.append(len(ids) - 1)
    return ids, positions


def to_prm(
    ds: datasets.Dataset,
    tokenizer: Any,
    sep_id: int,
    label_mode: str,
    system: str | None,
    max_length: int,
) -> datasets.Dataset:
    """Token rows: input_ids and float labels, -100 everywhere but at the step separators."""
    column = "labels" if label_mode == "hard" else "soft_labels"

    def fn(row: dict[str, Any]) -> dict[str, Any]:
        steps, targets = row["completions"], row[column]
        if len(steps) != len(targets):
            raise ValueError(f"PRM row with {len(steps)} steps but {len(targets)} {column}")
        ids, positions = prm_input(tokenizer, row["prompt"], steps, sep_id, system, max_length)
        labels = [-100.0] * len(ids)
        for pos, target in zip(positions, targets, strict=False):
            labels[pos] = float(target)
        return {"input_ids": ids, "labels": labels}

    encoded = ds.map(fn, remove_columns=ds.column_names)
    # A prompt alone longer than max_length leaves no labelled step: drop such rows.
    return encoded.filter(lambda labels: any(v != -100.0 for v in labels), input_columns="labels")
