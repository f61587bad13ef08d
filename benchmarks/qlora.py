"""QLoRA on this machine: a 4-bit NF4 base against a bfloat16 one, side by side (``make bench-qlora``).

Two bases: the default model (SmolLM2-135M-Instruct, the ``make train`` workload of ``make bench``)
and a GPT-2 large shaped model (36 layers of width 1280, SmolLM2's tokenizer and vocabulary, random
weights: the Hub is out of reach here, and memory and speed do not depend on the weights' values).
Each base is trained by ``lora-lightning fit --config configs/default.yaml`` through bench.py's
worker (a fresh process per run, so each peak RSS is its own) in four ways: the default (bfloat16
base, compiled blocks), ``configs/qlora.yaml`` (NF4 with double quantization, compiled blocks), and
each of the two eager (``model.compile false``). Runs alternate over
``--rounds`` rounds. Reported: the base's weight bytes (quantization scales included) and their
share of the bfloat16 base's, peak RSS, tokens/s (min / median / max) and the mean loss of the
timed steps. Then the memory that peft's ``prepare_model_for_kbit_training`` would add: its float32
copy of every weight left unquantized, which this project leaves in the base dtype.

    python benchmarks/qlora.py                 # make bench-qlora: about 30 minutes on 2 CPU cores
    python benchmarks/qlora.py --smoke         # a minute: the harness runs
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

ARMS = [
    ("bfloat16 base (default, compiled)", []),
    ("NF4 base (configs/qlora.yaml, compiled)", ["--model.quantization", "nf4"]),
    ("bfloat16 base, eager", ["--model.compile", "false"]),
    ("NF4 base, eager", ["--model.quantization", "nf4", "--model.compile", "false"]),
]


def gpt2_large_shaped(folder: Path) -> str:
    """A GPT-2 large shaped model with random weights and SmolLM2's tokenizer, saved in bfloat16."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from lora_lightning.loading import EMBEDDED_MODEL, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(resolve_model_path(EMBEDDED_MODEL))
    config = GPT2Config(
        n_embd=1280,
        n_layer=36,
        n_head=20,
        n_positions=1024,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def unquantized_bytes(model) -> int:
    from lora_lightning.model.quantization import is_quantized_weight, tensor_bytes

    return sum(tensor_bytes(p) for p in model.parameters() if not is_quantized_weight(p))


def prepare_cost(model_name: str) -> tuple[int, int]:
    """Bytes of the weights bitsandbytes leaves unquantized: as this project keeps them (bfloat16),
    and after peft's ``prepare_model_for_kbit_training`` (float32)."""
    from peft import prepare_model_for_kbit_training

    from lora_lightning.loading import load_causal_lm, resolve_model_path
    from lora_lightning.model.quantization import quantization_config

    config = quantization_config("nf4", "bf16-mixed")
    model = load_causal_lm(resolve_model_path(model_name), dtype="bfloat16", quantization_config=config)
    ours = unquantized_bytes(model)
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return ours, unquantized_bytes(model)


def measure(args, model: str, steps: int, warmup: int, extra: list[str], work: Path) -> dict[str, list[dict]]:
    run_args = argparse.Namespace(**{**vars(args), "model": model, "steps": steps, "warmup": warmup})
    results: dict[str, list[dict]] = {name: [] for name, _ in ARMS}
    for round_ in range(args.rounds):
        for i, (name, flags) in enumerate(ARMS):
            out = work / f"{Path(model).name}-{i}-{round_}.json"
            results[name].append(bench.run_worker(run_args, "ours", out, flags=flags + extra))
            r = results[name][-1]
            print(f"{Path(model).name} round {round_ + 1} {name}: {r['tokens_per_s']:.1f} tokens/s", flush=True)
    return results


def table(title: str, results: dict[str, list[dict]], warmup: int, steps: int) -> list[str]:
    bf16 = statistics.median(r["base_bytes"] for r in results[ARMS[0][0]])
    lines = [
        f"### {title}",
        "",
        "| base | weight bytes (MB) | share of bfloat16 | peak RSS (MB) | tokens/s min / median / max | "
        "mean loss, timed steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, _ in ARMS:
        rs = results[name]
        size = statistics.median(r["base_bytes"] for r in rs)
        loss = statistics.mean(rs[0]["losses"][warmup : warmup + steps])
        lines.append(
            f"| {name} | {size / 1e6:.0f} | {100 * size / bf16:.0f}% | "
            f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | "
            f"{bench.spread([r['tokens_per_s'] for r in rs], '{:.1f}')} | {loss:.4f} |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(bench.SHARED))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps, default model")
    parser.add_argument("--large-steps", type=int, default=3, help="timed steps, GPT-2 large shaped model")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output", default=str(bench.REPO / "checkpoints" / "bench" / "qlora.md"))
    args = parser.parse_args()
    if bench.data_files(Path(args.data_dir)) is None:
        print(f"bench-qlora: skipped: the real rows are not in {args.data_dir}")
        return
    if args.smoke:
        args.rounds, args.steps, args.large_steps = 1, 1, 0
    args.device, args.batch_size, args.max_length = "cpu", None, None
    ours, peft_prepared = prepare_cost("smollm2-135m-instruct")
    lines = [
        f"## QLoRA: NF4 base against bfloat16 ({date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores)",
        "",
        f"Runs alternate over {args.rounds} round(s); each run is a fresh process of `lora-lightning fit "
        "--config configs/default.yaml` on the real rows of bool_q, common_gen and xsum (bench.py's worker).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        default = measure(args, "smollm2-135m-instruct", args.steps, 2, [], work)
        lines += table(
            f"SmolLM2-135M-Instruct, the make train workload (batch 8, max length 384), {args.steps} timed steps "
            "after 2 warm-up",
            default,
            2,
            args.steps,
        )
        if args.large_steps:
            large = gpt2_large_shaped(work / "gpt2-large-shaped")
            shape = ["--data.batch_size", "4", "--data.max_length", "256"]
            results = measure(args, large, args.large_steps, 1, shape, work)
            lines += table(
                f"GPT-2 large shaped (774M parameters, random weights), batch 4, max length 256, "
                f"{args.large_steps} timed steps after 1 warm-up",
                results,
                1,
                args.large_steps,
            )
    lines += [
        "Weights bitsandbytes leaves unquantized in the NF4 SmolLM2-135M (embeddings, norms, head): "
        f"{ours / 1e6:.0f} MB as this project keeps them (bfloat16); {peft_prepared / 1e6:.0f} MB after peft's "
        "`prepare_model_for_kbit_training` (float32), which this project does not call."
    ]
    text = "\n".join(lines) + "\n"
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
