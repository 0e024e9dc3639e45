"""The course's command line.

    python -m attn_course info
    python -m attn_course train MODEL [--task T] [--profile P] [--out PATH] [--seed S] [--steps N] [--batch-size B]
    python -m attn_course evaluate MODEL [--task T] [--checkpoint PATH]
    python -m attn_course ship MODEL [--task T] --checkpoint PATH [--float16]

``evaluate`` prints one JSON object as its last line: model, task, metrics, number of
test examples. ``train`` writes ``PATH`` (weights) and its model card ``PATH.json``,
and keeps its resumable training state in ``PATH.state`` until it finishes: run the
same command again after an interruption (Ctrl-C) to resume. ``ship`` copies a trained
``PATH`` into the package's pretrained folder, re-evaluated; with ``--float16`` the weights
are rounded to half precision first (half the file) and the card records the metrics of
the rounded weights, the ones a reader loads.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .runtime import banner, device_description, get_device, get_profile


def _command_line(argv: list[str]) -> str:
    return "python -m attn_course " + " ".join(shlex.quote(a) for a in argv)


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import available_pretrained
    from .data import data_root, verify_mnist
    from .registry import all_specs

    print(banner())
    print(f"attn_course {__version__} at {Path(__file__).resolve().parent}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}")
    print(f"device: {device_description(get_device())}; profile: {get_profile()}")
    root = data_root()
    print(f"data root: {root}")
    for name, status in verify_mnist().items():
        print(f"  mnist/{name}: {status}")
    print("models: " + ", ".join(f"{s.name} ({'|'.join(s.tasks)})" for s in all_specs()))
    print("pretrained: " + (", ".join(available_pretrained()) or "none"))
    return 0


def _with_attention_flag(spec, args: argparse.Namespace) -> str | None:
    """``--no-attention`` selects the variant named TASK-noattn (e.g. r2am's ``recursive-noattn``)."""
    if not getattr(args, "no_attention", False):
        return args.task
    task = f"{args.task or spec.default_task or spec.tasks[0]}-noattn"
    if task not in spec.tasks:
        raise ValueError(f"model {spec.name!r} has no variant without attention for {task[:-7]!r}; "
                         f"its variants: {', '.join(spec.tasks)}")
    return task


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from .checkpoints import pretrained_name, save_pretrained
    from .registry import get_spec

    spec = get_spec(args.model)
    task = spec.check_task(_with_attention_flag(spec, args))
    profile = get_profile(args.profile)
    device = get_device(args.device)
    out = Path(args.out) if args.out else Path("runs") / f"{pretrained_name(spec.name, task)}.pt"
    if out.suffix != ".pt":
        raise ValueError(f"--out must name a .pt file, got {out}")
    state_path = out.with_suffix(".state")
    print(banner(profile, device))
    model, result, data_description = spec.train(task, profile=profile, device=device, seed=args.seed,
                                                 checkpoint_path=state_path, progress=not args.no_progress,
                                                 steps=args.steps,
                                                 **({"batch_size": args.batch_size} if args.batch_size else {}))
    if result.interrupted:
        print(f"not finished; resume with: {_command_line(argv)}")
        return 130
    metrics, count = spec.evaluate(model, task, device)
    card = {
        "model": spec.name,
        "task": task,
        "description": spec.description,
        "data": data_description,
        "metrics": metrics,
        "test_examples": count,
        "steps": result.step,
        "wall_time_s": round(result.wall_time, 1),
        "profile": profile,
        "seed": args.seed,
        "hardware": device_description(device),
        "software": {"attn_course": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "command": _command_line(argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "history": result.history.state_dict(),
    }
    weights, card_path = save_pretrained(model, spec.model_config(task), card, out)
    state_path.unlink(missing_ok=True)
    print(f"saved {weights} and {card_path}")
    print(json.dumps({"model": spec.name, "task": task, "metrics": metrics, "test_examples": count,
                      "steps": result.step, "wall_time_s": round(result.wall_time, 1)}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .registry import get_spec, load_model_file, load_pretrained

    spec = get_spec(args.model)
    task = spec.check_task(_with_attention_flag(spec, args))
    device = get_device(args.device)
    if args.checkpoint:
        model = load_model_file(spec, task, Path(args.checkpoint), device)
    else:
        model = load_pretrained(spec.name, task, device)
    metrics, count = spec.evaluate(model, task, device)
    print(json.dumps({"model": spec.name, "task": task, "metrics": metrics, "test_examples": count}))
    return 0


def cmd_ship(args: argparse.Namespace, argv: list[str]) -> int:
    from .checkpoints import FILE_KEYS, PRETRAINED_DIR, WEIGHT_DTYPES, pretrained_name, read_card, save_pretrained
    from .registry import get_spec, load_model_file

    spec = get_spec(args.model)
    task = spec.check_task(_with_attention_flag(spec, args))
    source = Path(args.checkpoint)
    card = read_card(source)
    if (card.get("model"), card.get("task")) != (spec.name, task):
        raise ValueError(f"{source.name} holds model {card.get('model')!r} for task {card.get('task')!r}, "
                         f"expected {spec.name!r} for {task!r}")
    device = get_device(args.device)
    model = load_model_file(spec, task, source, device)
    weights_dtype = "float16" if args.float16 else "float32"
    dtype = WEIGHT_DTYPES[weights_dtype]  # evaluate the weights the shipped file will hold
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()})
    metrics, count = spec.evaluate(model, task, device)
    kept = {k: v for k, v in card.items() if k not in FILE_KEYS}
    shipped_card = {**kept, "metrics": metrics, "test_examples": count, "shipped_with": _command_line(argv)}
    if args.float16:
        shipped_card["metrics_float32"] = card["metrics"]
    target = (Path(args.to) if args.to else PRETRAINED_DIR) / f"{pretrained_name(spec.name, task)}.pt"
    weights, card_path = save_pretrained(model, spec.model_config(task), shipped_card, target, weights_dtype)
    print(f"saved {weights} ({weights.stat().st_size / 2**20:.2f} MiB, {weights_dtype}) and {card_path}")
    print(json.dumps({"model": spec.name, "task": task, "metrics": metrics, "test_examples": count,
                      "trained_metrics": card["metrics"], "weights_dtype": weights_dtype}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attn_course", description="Attention course: models and data.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, device, profile, data files, models")
    train = sub.add_parser("train", help="train a model from scratch and save it with its model card")
    train.add_argument("model")
    train.add_argument("--task", "--variant", dest="task", help="the task or model variant (e.g. translated60, soft)")
    train.add_argument("--profile", choices=["quick", "full"])
    train.add_argument("--out", help="where to write the weights (.pt); the card goes beside it (.json)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--steps", type=int, help="training steps (default: the profile's)")
    train.add_argument("--batch-size", type=int, help="examples per step (default: the recipe's; on a GPU a larger "
                       "batch costs little time per step)")
    train.add_argument("--no-attention", action="store_true", help="the variant without attention (r2am)")
    train.add_argument("--device")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    evaluate = sub.add_parser("evaluate", help="evaluate a pretrained model; the last line is JSON")
    evaluate.add_argument("model")
    evaluate.add_argument("--task", "--variant", dest="task", help="the task or model variant")
    evaluate.add_argument("--no-attention", action="store_true", help="the variant without attention (r2am)")
    evaluate.add_argument("--checkpoint", help="a .pt file written by train (default: the shipped one)")
    evaluate.add_argument("--device")
    ship = sub.add_parser("ship", help="copy a trained model into the pretrained folder, re-evaluated with its card")
    ship.add_argument("model")
    ship.add_argument("--task", "--variant", dest="task", help="the task or model variant")
    ship.add_argument("--no-attention", action="store_true", help="the variant without attention (r2am)")
    ship.add_argument("--checkpoint", required=True, help="a .pt file written by train, with its card beside it")
    ship.add_argument("--float16", action="store_true", help="store the weights in half precision (half the size)")
    ship.add_argument("--to", default=None, help="the folder to write to (default: the package's pretrained folder)")
    ship.add_argument("--device", default="cpu", help="where to evaluate (default: cpu, as the tests re-evaluate)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "info":
            return cmd_info(args)
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "ship":
            return cmd_ship(args, argv)
        return cmd_evaluate(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
