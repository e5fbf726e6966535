"""Smoke run of all three stages on synthetic data: does training work on this machine, how fast?

    python -m training.gpu_smoke                      # CUDA: SmolLM2-1.7B's architecture, bf16
                                                      # + ZeRO-2; CPU: SmolLM2-135M
    python -m training.gpu_smoke --model tiny --steps 5 --json smoke.json   # CPU: < 2 min
    python -m training.gpu_smoke --arch smollm2-360m  # random weights of another real shape

SFT, then DPO from the SFT checkpoint, then PRM, each for ``--steps`` optimizer steps on
synthetic rows in the ds_sft / ds_dpo / ds_prm shape (training/synthetic.py). On CUDA each stage
runs in bf16 with DeepSpeed ZeRO-2; if DeepSpeed fails (no wheel, an op that will not build) the
stage is rerun without it and the table says why. On CPU: fp32, no DeepSpeed.

Each stage runs in its own child process so that its peak memory is its own (CUDA
max_memory_allocated on GPU, peak RSS on CPU), a crash or hang in one stage cannot take the
others down (``--stage-timeout``), and DeepSpeed's global state never leaks between stages.
Prints one summary table with tokens/s and model FLOPs utilisation (MFU: the model's training
FLOPs per token, 6 N + 12 L d T as in PaLM's appendix B, times tokens/s, over the device's dense
bf16 peak; DPO's frozen reference forward is not counted, so its MFU is a lower bound);
``--json OUT`` writes the same rows. Exit code 1 if any stage failed.

``--arch`` builds a model of a real architecture (SmolLM2-1.7B by default on CUDA, so at least
0.5B parameters) with random weights and the SmolLM2 tokenizer: weights cannot travel to a lent
GPU machine without the network, and throughput does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

STAGES = ("sft", "dpo", "prm")

# Real architectures (Hugging Face configs of the SmolLM2 family), for random-weight throughput.
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "rope_theta": 100000.0,
    },
    "smollm2-360m": {
        "hidden_size": 960,
        "intermediate_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 15,
        "num_key_value_heads": 5,
        "rope_theta": 100000.0,
    },
    "smollm2-1.7b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 24,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "rope_theta": 130000.0,
    },
}

# Dense bf16 peak FLOP/s by device name (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
)


def peak_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak, or None when unknown (CPU, an unlisted GPU)."""
    for marker, flops in PEAK_BF16_FLOPS:
        if marker in device_name:
            return flops
    return None


def training_flops_per_token(config: Any, seq_len: int) -> float:
    """6 N (weights, forward + backward) + 12 L d T (attention scores), PaLM appendix B.

    N counts the non-embedding parameters plus the output projection (a matmul per token even
    when tied to the input embedding, which is a lookup).
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * config.intermediate_size
    matmul_params = layers * per_layer + d * config.vocab_size
    return 6 * matmul_params + 12 * layers * d * seq_len


def build_architecture(name: str, folder: Path, cache_dir: str | None) -> Path:
    """A model folder of architecture ``name`` with random weights and the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from training.models import ensure_smollm2_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(ensure_smollm2_tokenizer(cache_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        **ARCHITECTURES[name],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------- one stage (child)


def _stage_config(stage: str, opts: dict[str, Any]) -> Any:
    from training.config import load_config

    work = Path(opts["workdir"])
    overrides = [
        f"data.files=[{work / f'{stage}.parquet'}]",
        "data.max_eval_samples=16",
        f"train.output_dir={work / stage}",
        f"train.max_steps={opts['steps']}",
        f"train.per_device_train_batch_size={opts['batch_size']}",
        f"train.per_device_eval_batch_size={opts['batch_size']}",
        f"train.max_length={opts['max_length']}",
        "train.logging_steps=1",
        f"train.learning_rate={1e-3 if opts['model'] == 'tiny' else 2e-5}",
        f"model.cache_dir={opts['cache_dir']}" if opts["cache_dir"] else "model.cache_dir=",
    ]
    if opts["deepspeed"]:
        overrides.append("train.deepspeed=ds_zero2.json")
    if stage == "dpo":
        overrides.append(f"sft_checkpoint={work / 'sft' / 'final'}")
        overrides.append("model.name_or_path=")
    else:
        overrides.append(f"model.name_or_path={opts['model_path']}")
    if stage == "sft":
        overrides += ["eval_generate_samples=4", "max_new_tokens=24"]
    return load_config(stage, None, overrides)


def run_stage(stage: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Train one stage in this process; return its row of the summary."""
    import torch

    from training.config import single_process_dist_env

    if opts["deepspeed"]:
        single_process_dist_env()
    cfg = _stage_config(stage, opts)
    if stage == "sft":
        from training.sft import train_sft as train
    elif stage == "dpo":
        from training.dpo import train_dpo as train
    else:
        from training.prm import train_prm as train
    result = train(cfg, {"smoke": True})
    m = result.metrics
    cuda = torch.cuda.is_available() and cfg.resolved_device() == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss()
    quality = {
        "sft": "eval_decision_accuracy",
        "dpo": "eval_preference_accuracy",
        "prm": "eval_step_auc",
    }[stage]
    return {
        "stage": stage,
        "status": "ok",
        "device": cfg.resolved_device(),
        "precision": cfg.resolved_precision(),
        "deepspeed": "zero2" if opts["deepspeed"] else "off",
        "steps": int(m.get("train_global_steps", 0)),
        "train_loss": m.get("train_loss"),
        "tokens": int(m.get("train_tokens", 0)),
        "tokens_per_s": m.get("train_tokens_per_second"),
        "steps_per_s": m.get("train_global_steps", 0) / max(m.get("train_wall_seconds", 0), 1e-9),
        "peak_mem_gib": peak / 2**30,
        "peak_mem_kind": "cuda_max_allocated" if cuda else "rss_peak",
        "quality_metric": quality,
        "quality": m.get(quality),
        "wall_s": m.get("train_wall_seconds"),
        "checkpoint": result.checkpoint_dir,
        **_utilisation(cfg, opts, m.get("train_tokens_per_second"), cuda),
    }


def _utilisation(cfg: Any, opts: dict[str, Any], tokens_per_s: float | None, cuda: bool) -> dict:
    """Parameters, model FLOPs per token and MFU of a stage's run."""
    import torch
    from transformers import AutoConfig

    path = opts["model_path"]
    if opts["model"] == "tiny" or not Path(path).is_dir():
        return {}
    config = AutoConfig.from_pretrained(path)
    flops_token = training_flops_per_token(config, opts["max_length"])
    peak = peak_flops(torch.cuda.get_device_name(0)) if cuda else None
    achieved = flops_token * tokens_per_s if tokens_per_s else None
    return {
        "params_b": opts.get("params", 0) / 1e9,
        "model_tflops": achieved / 1e12 if achieved else None,
        "mfu": achieved / peak if achieved and peak else None,
    }


def _parameter_count(model_path: str) -> int:
    """Parameters of the model folder, counted without loading weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _child(args: argparse.Namespace) -> int:
    opts = json.loads(Path(args.child_opts).read_text())
    try:
        row = run_stage(args.child, opts)
    except BaseException as err:  # report every failure as a row, the parent decides
        traceback.print_exc()
        row = {"stage": args.child, "status": "failed", "error": f"{type(err).__name__}: {err}"}
    Path(args.child_out).write_text(json.dumps(row, default=str))
    from training.common import close_distributed

    close_distributed()
    return 0 if row["status"] == "ok" else 1


# ---------------------------------------------------------------------------- driver (parent)


def _launch(stage: str, opts: dict[str, Any], timeout: float) -> dict[str, Any]:
    work = Path(opts["workdir"])
    opts_file, out_file = work / f"{stage}.opts.json", work / f"{stage}.row.json"
    opts_file.write_text(json.dumps(opts))
    out_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "training.gpu_smoke", "--child", stage]
    cmd += ["--child-opts", str(opts_file), "--child-out", str(out_file)]
    start = time.perf_counter()
    try:
        subprocess.run(cmd, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"stage": stage, "status": "failed", "error": f"timed out after {timeout:.0f} s"}
    row = (
        json.loads(out_file.read_text())
        if out_file.exists()
        else {"stage": stage, "status": "failed", "error": "child died without a result"}
    )
    row["process_s"] = time.perf_counter() - start
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("stage", "{}"),
        ("status", "{}"),
        ("device", "{}"),
        ("precision", "{}"),
        ("deepspeed", "{}"),
        ("steps", "{}"),
        ("params_b", "{:.2f}"),
        ("train_loss", "{:.3f}"),
        ("tokens_per_s", "{:.0f}"),
        ("model_tflops", "{:.1f}"),
        ("mfu", "{:.1%}"),
        ("steps_per_s", "{:.2f}"),
        ("peak_mem_gib", "{:.2f}"),
        ("quality", "{:.3f}"),
        ("wall_s", "{:.1f}"),
    ]

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        try:
            return fmt.format(value)
        except (ValueError, TypeError):
            return str(value)

    body = [[cell(r, k, f) for k, f in cols] for r in rows]
    widths = [max(len(k), *(len(b[i]) for b in body)) for i, (k, _) in enumerate(cols)]
    lines = ["  ".join(k.ljust(w) for (k, _), w in zip(cols, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    for r in rows:
        if r.get("quality_metric"):
            lines.append(f"  {r['stage']}: quality = {r['quality_metric']}")
        for note in r.get("notes", []):
            lines.append(f"  {r['stage']}: {note}")
        if r.get("error"):
            lines.append(f"  {r['stage']}: FAILED {r['error']}")
    if rows and rows[0].get("peak_mem_kind"):
        lines.append(f"  peak memory: {rows[0]['peak_mem_kind']} of each stage's process")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        default=None,
        help="'tiny', 'smollm2-135m-instruct', a folder or hub id (default: --arch on CUDA, "
        "smollm2-135m-instruct on CPU)",
    )
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHITECTURES),
        default=None,
        help="random weights of this architecture (default on CUDA: smollm2-1.7b)",
    )
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per stage")
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 on CUDA, 4 on CPU")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows per dataset")
    parser.add_argument("--context-lines", type=int, default=None, help="filler lines per prompt")
    parser.add_argument("--no-deepspeed", action="store_true", help="skip DeepSpeed on CUDA")
    parser.add_argument("--stage-timeout", type=float, default=600, help="seconds per stage")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder")
    parser.add_argument("--cache-dir", default=None, help="converted-model cache")
    parser.add_argument("--json", dest="json_out", default=None, help="write the rows here")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--child-opts", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    import torch

    from training import synthetic
    from training.config import ModelConfig
    from training.models import resolve_source

    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dd-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model is None and args.arch is None:
        args.arch = "smollm2-1.7b" if cuda else None
        args.model = None if cuda else "smollm2-135m-instruct"
    if args.arch:
        args.model = str(build_architecture(args.arch, work / f"arch-{args.arch}", args.cache_dir))
    batch = args.batch_size or (8 if cuda else 4)
    rows = args.rows or max(64, 2 * batch * args.steps)
    context = args.context_lines if args.context_lines is not None else (12 if cuda else 0)
    header = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "model": args.arch or args.model,
        "workdir": str(work),
    }
    print("gpu_smoke:", json.dumps(header), flush=True)

    # Synthetic datasets, and the base model converted once here rather than in every child.
    synthetic.sft_frame(rows, context_lines=context).to_parquet(work / "sft.parquet")
    synthetic.dpo_frame(rows, context_lines=context).to_parquet(work / "dpo.parquet")
    synthetic.prm_frame(rows, context_lines=context).to_parquet(work / "prm.parquet")
    _, model_path = resolve_source(ModelConfig(name_or_path=args.model, cache_dir=args.cache_dir))
    params = _parameter_count(model_path) if args.model != "tiny" else 0
    header["params"] = params

    deepspeed_ok = cuda and not args.no_deepspeed
    notes: list[str] = []
    if deepspeed_ok:
        try:
            import deepspeed  # noqa: F401
        except Exception as err:  # not installed, or its import fails on this machine
            deepspeed_ok = False
            notes.append(f"DeepSpeed unavailable ({type(err).__name__}: {err}); ran without it")

    results = []
    for stage in STAGES:
        opts = {
            "workdir": str(work),
            "model": args.model,
            "model_path": model_path,
            "cache_dir": args.cache_dir,
            "steps": args.steps,
            "batch_size": batch,
            "max_length": args.max_length,
            "deepspeed": deepspeed_ok,
            "params": params,
        }
        print(f"gpu_smoke: {stage} (deepspeed={'zero2' if deepspeed_ok else 'off'})", flush=True)
        row = _launch(stage, opts, args.stage_timeout)
        row.setdefault("notes", []).extend(notes)
        if row["status"] != "ok" and deepspeed_ok:
            # Fall back once without DeepSpeed, and keep going without it for later stages.
            reason = row.get("error", "unknown error")
            print(
                f"gpu_smoke: {stage} failed under DeepSpeed ({reason}); retrying without",
                flush=True,
            )
            deepspeed_ok = False
            opts["deepspeed"] = False
            row = _launch(stage, opts, args.stage_timeout)
            notes.append(f"DeepSpeed ZeRO-2 failed ({reason[:200]}); ran without it")
            row.setdefault("notes", []).extend(notes)
        results.append(row)
        if stage == "sft" and row["status"] != "ok":
            # DPO starts from the SFT checkpoint: nothing to start from.
            results.append({"stage": "dpo", "status": "failed", "error": "skipped: SFT failed"})
            opts["deepspeed"] = deepspeed_ok
            results.append(_launch("prm", opts, args.stage_timeout))
            break

    print("\n" + _table(results))
    print(f"\ngpu_smoke: total {time.perf_counter() - started:.1f} s", flush=True)
    if args.json_out:
        payload = {"header": header, "rows": results, "total_s": time.perf_counter() - started}
        Path(args.json_out).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
