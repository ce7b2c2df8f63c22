"""Wall-clock time of the full downstream evaluation (every paper task present in the data dir) of one checkpoint.

    python experiments/eval/time_eval.py --out experiments/eval/results/time_eval_h200.json

Without --checkpoint the model is a randomly initialised one of a Table 6 shape (conf/experiment/table6_24l.yaml
with model=moda: 24 layers, width 384, context 1024), with a BPE tokenizer of its vocabulary trained on the eval
data's own text; random weights cost the same time as trained ones. The batch size is chosen automatically
(ModaLM batch_size=auto: the largest power of two of full-context sequences that fits on the GPU).
Prints and writes the timing (load, tasks, total), the batch size, the device, the scoring precision and each
task's example count.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a .ckpt, run dir or exported folder (default: a random Table 6 model)")
    p.add_argument("--experiment", default="table6_24l", help="conf/experiment/<name>.yaml giving the model shape")
    p.add_argument("--model", default="moda", help="conf/model/<name>.yaml (the depth-mixing variant)")
    p.add_argument(
        "--data_dir", default=None, help="the eval data dir (default: $MODA_EVAL_DATA or ../shared/data/eval)"
    )
    p.add_argument("--batch_size", default="auto", help="auto (GPU) or a positive integer")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:1, cpu")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA, else fp32), fp32 or bf16 (eval.precision)")
    p.add_argument("--limit", type=int, default=None, help="examples per task (a quick check); default: all")
    p.add_argument("--out", type=Path, default=None, help="write the timing JSON here")
    return p


def random_export(experiment: str, model: str, data_dir: str | None, out: Path) -> Path:
    """An exported folder (config.json, model.safetensors, tokenizer.json) of a random model of that shape."""
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    import run  # noqa: F401 - registers the run_name resolver the config refers to
    from moda_lab.config import run_config_from_dict
    from moda_lab.data.tokenizer import train_tokenizer
    from moda_lab.eval.tasks import TASK_FIELDS, task_file
    from moda_lab.model import GPT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}", f"model={model}"])
    model_cfg = run_config_from_dict(OmegaConf.to_container(cfg, resolve=True)).model
    texts = []
    for task in TASK_FIELDS:
        path = task_file(task, data_dir)
        if path.is_file():
            texts += [" ".join(str(v) for v in json.loads(line).values()) for line in path.open(encoding="utf-8")]
    tok = train_tokenizer(texts, model_cfg.vocab_size)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.get_vocab_size(), attn_backend="auto")
    torch.manual_seed(0)
    gpt = GPT(model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(model_cfg), indent=2))
    state = {
        k: v.contiguous() for k, v in gpt.state_dict().items() if k != "lm_head.weight" or not model_cfg.tie_embeddings
    }
    save_file(state, str(out / "model.safetensors"))
    tok.save(str(out / "tokenizer.json"))
    return out


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from moda_lab.eval import evaluate_checkpoint

    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_export(args.experiment, args.model, args.data_dir, Path(tmp) / "table6")
        cfg = {
            "tasks": "all",
            "batch_size": batch_size,
            "device": args.device,
            "precision": args.precision,
            "limit": args.limit,
        }
        if args.data_dir:
            cfg["data_dir"] = args.data_dir
        results = evaluate_checkpoint(ckpt, cfg)
    moda = results["moda"]
    report = {
        "checkpoint": args.checkpoint or f"random {args.experiment} model={args.model}",
        "device": moda["device"],
        "device_name": torch.cuda.get_device_name() if moda["device"].startswith("cuda") else "cpu",
        "batch_size": moda["batch_size"],
        "precision": moda["precision"],
        "limit": args.limit,
        "tasks": {name.removeprefix("moda_"): n["effective"] for name, n in results.get("n-samples", {}).items()},
        "missing_tasks": moda["missing_tasks"],
        "timing": moda["timing"],
        "versions": {name: importlib.metadata.version(name) for name in ("torch", "triton", "lm_eval")},
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
