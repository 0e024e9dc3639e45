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

``train`` checks that ``PATH``'s folder can be written before its first step, and holds a
lock on ``PATH`` while it runs: a second run with the same ``--out`` stops at once. ``ship``
checks the source card and weights and the target folder before it writes anything.
Every expected failure (a bad argument or name, a missing, damaged or locked file, running
out of memory, a training loss that is no longer finite) ends the command with one
``error: ...`` line on stderr and exit status 2; ``info`` reports problems and carries on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .runtime import banner, device_description, get_device, get_profile, set_cpu_threads
from .train import NonFiniteLossError

# torch >= 2.5 names it torch.OutOfMemoryError; before, torch.cuda.OutOfMemoryError (the same class).
_TORCH_OOM = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


class CommandError(Exception):
    """An expected failure, already phrased for the reader: main prints it as one ``error:`` line."""


def _command_line(argv: list[str]) -> str:
    return "python -m attn_course " + " ".join(shlex.quote(a) for a in argv)


def _int_at_least(minimum: int, words: str):
    """An argparse type: an int of at least ``minimum``, else "expected a <words> integer, got ..."."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {words} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {words} integer, got {value}")
        return value
    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


# --------------------------------------------------------------------------- error messages

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UNSAFE_ADVICE = re.compile(r"weights_only\W*(?:set to\W*|=\W*)False", re.IGNORECASE)


def _one_line(text: str) -> str:
    """``text`` as one line, without torch's advice to load files with ``weights_only=False``.

    That advice means running whatever code a file holds: a course file never needs it,
    so it is never relayed.
    """
    text = _ANSI.sub("", text)
    if "Weights only load failed" in text:
        head = text.split("Weights only load failed", 1)[0]
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
        detail = " ".join(re.split(r"\s(?:Please use|Check the documentation)", detail, maxsplit=1)[0].split())
        text = (head + "it holds something other than tensors and plain values"
                + (f" ({detail.rstrip('.')})" if detail else "")
                + "; it is not a file written by attn_course, or it is damaged")
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return " ".join(s for s in sentences if not _UNSAFE_ADVICE.search(s))


def _os_error_text(error: OSError) -> str:
    """An ``OSError`` as text that names its file (``Permission denied: runs/x.pt``)."""
    if error.filename is not None and error.strerror:
        where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 is not None else "")
        return f"{error.strerror}: {where}"
    return str(error) or error.__class__.__name__


def _naming(path: Path, error: OSError) -> str:
    """A failed write of ``path`` as text that names it (``CheckpointError`` does already)."""
    text = _os_error_text(error)
    return text if str(path) in text else f"cannot write {path}: {text}"


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (_TORCH_OOM, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("out of memory", "not enough memory", "can't allocate memory",
                                  "cannot allocate memory", "defaultcpuallocator"))


def _out_of_memory_text(error: BaseException, args: argparse.Namespace) -> str:
    """Which device ran out of memory, how much was asked for, and what to do."""
    text = _ANSI.sub("", str(error))
    if isinstance(error, MemoryError) or "DefaultCPUAllocator" in text or "cannot allocate memory" in text.lower():
        where = "cpu (main memory)"
    elif "MPS" in text:
        where = "mps"
    elif isinstance(error, _TORCH_OOM) or "CUDA" in text:
        gpu = re.search(r"GPU (\d+)", text)
        try:
            index = int(gpu[1]) if gpu else torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
        except (RuntimeError, AssertionError):  # no CUDA here (a test), or it cannot answer any more
            index, name = (int(gpu[1]) if gpu else 0), "GPU"
        where = f"cuda:{index} ({name})"
    else:
        where = getattr(args, "device", None) or "the device"
    asked = re.search(r"[Tt]ried to allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B)", text)
    amount = (f"{int(asked[1]) / 2**30:.2f} GiB" if asked[1] else asked[2]) if asked else None
    line = f"out of memory on {where}" + (f" (it tried to allocate {amount})" if amount else "")
    model = getattr(args, "model", None)
    if args.command == "train":
        batch = getattr(args, "batch_size", None)
        now = f"this run used {batch}" if batch is not None else "this run used the recipe's default"
        return f"{line} while training {model}: try a smaller --batch-size ({now})"
    doing = f"{args.command} {model}" if model else args.command
    return f"{line} while running {doing}: try another --device (e.g. --device cpu) or free memory"


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoints import available_pretrained
    from .data import data_root, verify_mnist
    from .registry import all_specs

    def shown(describe) -> str:
        """What ``describe()`` says, or the problem: info reports problems, it never fails on them."""
        try:
            return describe()
        except (ValueError, OSError) as error:
            return "error: " + (_os_error_text(error) if isinstance(error, OSError) else _one_line(str(error)))

    try:
        print(banner())
    except (ValueError, OSError):
        pass  # the device and profile lines below say what is wrong
    print(f"attn_course {__version__} at {Path(__file__).resolve().parent}")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}")
    print(f"device: {shown(lambda: device_description(get_device()))}; profile: {shown(get_profile)}")
    print(f"data root: {shown(lambda: str(data_root()))}")
    try:
        statuses = verify_mnist()  # never raises for a file: "ok", "missing" or the file's problem
    except (ValueError, OSError) as error:
        statuses = {"*": f"error: {error}"}
    for name, status in statuses.items():
        print(f"  mnist/{name}: {_one_line(status)}")
    print("models: " + ", ".join(f"{s.name} ({'|'.join(s.tasks)})" for s in all_specs()))
    print("pretrained: " + shown(lambda: ", ".join(available_pretrained()) or "none"))
    return 0


def _with_attention_flag(spec, args: argparse.Namespace) -> str | None:
    """``--no-attention`` selects the variant without attention: TASK-noattn (e.g. r2am's ``recursive-noattn``,
    draw's ``mnist-noattn``), or ``noattn`` for a model whose tasks are kinds of attention (sat)."""
    if not getattr(args, "no_attention", False):
        return args.task
    base = args.task or spec.default_task or spec.tasks[0]
    task = f"{base}-noattn"
    if task not in spec.tasks and "noattn" in spec.tasks:
        task = "noattn"  # the model's one variant without attention
    if task not in spec.tasks:
        raise ValueError(f"model {spec.name!r} has no variant without attention for {base!r}; "
                         f"its variants: {', '.join(spec.tasks)}")
    return task


def _unfinished_run(spec, task: str, config) -> dict:
    """What a training state of this command must hold to be resumed by it: model, task and config."""
    return {"model": spec.name, "task": task, "model_config": spec.config_dict(config)}


def _parse_value(text: str, like):
    """``text`` as a value of the type of ``like`` (bool, int, float or str)."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return text.lower() == "true"
    if isinstance(like, (int, float)):
        return type(like)(text)
    return text


def _config_with(spec, task: str, settings: list[str]):
    """The task's config with ``--set KEY=VALUE`` changes: only the config's own fields, in their own types."""
    config = spec.config(task)
    changes = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or not hasattr(config, key) or key.startswith("_"):
            names = ", ".join(f.name for f in dataclasses.fields(config))
            raise ValueError(f"--set expects KEY=VALUE with KEY a field of {type(config).__name__} ({names}), "
                             f"got {setting!r}")
        try:
            changes[key] = _parse_value(text, getattr(config, key))
        except ValueError as error:
            raise ValueError(f"--set {key}: {error}") from None
    return dataclasses.replace(config, **changes)  # the config validates the new values


def _training_options(args: argparse.Namespace, device) -> str:
    """What ``--amp`` and ``--compile`` changed, for the card's hardware line ("" without them)."""
    notes = []
    if args.amp:
        notes.append("bfloat16 autocast" if device.type == "cpu" else "mixed precision (AMP)")
    if args.compile:
        notes.append("torch.compile")
    return "".join(f", {note}" for note in notes)


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from .checkpoints import check_writable, output_lock, pretrained_name, save_pretrained
    from .registry import check_resumable, get_spec, train_model

    spec = get_spec(args.model)
    task = spec.check_task(_with_attention_flag(spec, args))
    profile = get_profile(args.profile)
    device = get_device(args.device)
    out = Path(args.out) if args.out is not None else Path("runs") / f"{pretrained_name(spec.name, task)}.pt"
    if out.suffix != ".pt":
        raise ValueError(f"--out must name a .pt file, got {out}")
    state_path = out.with_suffix(".state")
    config = _config_with(spec, task, args.set or [])
    run = _unfinished_run(spec, task, config)
    check_writable(out)  # before the first step: an unwritable --out must not cost a training run
    with output_lock(out):  # a second run on the same --out stops here, before it writes anything
        check_resumable(state_path, run)  # a state left by another model, task or config is not resumed
        print(banner(profile, device))
        try:
            # fit stores the run in the training state and checks it on resume
            model, result, data_description = train_model(
                spec, task, profile=profile, device=device, seed=args.seed, checkpoint_path=state_path,
                progress=not args.no_progress, steps=args.steps, batch_size=args.batch_size, extra_state=run,
                config=config, amp=True if args.amp else None, compile=args.compile)
        except NonFiniteLossError as error:
            kept = f"; the last saved state is kept in {state_path}" if state_path.exists() else ""
            raise CommandError(f"training {spec.name} on {task} stopped: {error}{kept}") from error
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
            "hardware": device_description(device) + _training_options(args, device),
            "software": {"attn_course": __version__, "torch": torch.__version__, "python": platform.python_version()},
            "command": _command_line(argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "history": result.history.state_dict(),
        }
        if spec.card_extras is not None:
            card.update(spec.card_extras(model, task, device))
        try:
            weights, card_path = save_pretrained(model, run["model_config"], card, out)
        except OSError as error:
            raise CommandError(f"{_naming(out, error)}; the trained state is kept in {state_path}: "
                               "run the same command again to write it") from error
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
    if args.checkpoint is not None:  # a run of the user's, perhaps trained with --set: its own config
        model = load_model_file(spec, task, Path(args.checkpoint), device, own_config=True)
    else:
        model = load_pretrained(spec.name, task, device)
    metrics, count = spec.evaluate(model, task, device)
    print(json.dumps({"model": spec.name, "task": task, "metrics": metrics, "test_examples": count}))
    return 0


def cmd_ship(args: argparse.Namespace, argv: list[str]) -> int:
    from .checkpoints import (FILE_KEYS, PRETRAINED_DIR, WEIGHT_DTYPES, check_writable, pretrained_name, read_card,
                              save_pretrained)
    from .registry import get_spec, load_model_file

    spec = get_spec(args.model)
    task = spec.check_task(_with_attention_flag(spec, args))
    source = Path(args.checkpoint)
    # a card that is not JSON, not an object, lacks model, task or metrics, or does not match the weights
    # beside it is an error naming it; everything is checked before anything is written
    card = read_card(source, verify=True)
    if (card.get("model"), card.get("task")) != (spec.name, task):
        raise ValueError(f"{source.name} holds model {card.get('model')!r} for task {card.get('task')!r}, "
                         f"expected {spec.name!r} for {task!r}")
    device = get_device(args.device)
    target = (Path(args.to) if args.to is not None else PRETRAINED_DIR) / f"{pretrained_name(spec.name, task)}.pt"
    check_writable(target)
    model = load_model_file(spec, task, source, device)
    weights_dtype = "float16" if args.float16 else "float32"
    dtype = WEIGHT_DTYPES[weights_dtype]  # evaluate the weights the shipped file will hold
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()})
    metrics, count = spec.evaluate(model, task, device)
    kept = {k: v for k, v in card.items() if k not in FILE_KEYS}
    shipped_card = {**kept, "metrics": metrics, "test_examples": count, "shipped_with": _command_line(argv)}
    if spec.card_extras is not None:  # from the weights the shipped file holds
        shipped_card.update(spec.card_extras(model, task, device))
    if args.float16:
        shipped_card["metrics_float32"] = card["metrics"]
    try:
        weights, card_path = save_pretrained(model, spec.model_config(task), shipped_card, target, weights_dtype)
    except OSError as error:
        raise CommandError(_naming(target, error)) from error
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
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--steps", type=_positive_int, help="training steps (default: the profile's)")
    train.add_argument("--batch-size", type=_positive_int, help="examples per step (default: the recipe's; on a GPU "
                       "a larger batch costs little time per step)")
    train.add_argument("--no-attention", action="store_true", help="the variant without attention (draw, sat, r2am)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="change one field of the model's config (e.g. --set lambda_=1.0); repeatable")
    train.add_argument("--device")
    train.add_argument("--amp", action="store_true", help="mixed precision: bfloat16 autocast on a CPU (fast where "
                       "the CPU has bfloat16 instructions), AMP on a GPU (the Transformer, ViT and GPT recipes "
                       "use it there by default)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (minutes first, then faster "
                       "steps; needs a C++ compiler on a CPU)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    evaluate = sub.add_parser("evaluate", help="evaluate a pretrained model; the last line is JSON")
    evaluate.add_argument("model")
    evaluate.add_argument("--task", "--variant", dest="task", help="the task or model variant")
    evaluate.add_argument("--no-attention", action="store_true", help="the variant without attention (draw, sat, r2am)")
    evaluate.add_argument("--checkpoint", help="a .pt file written by train (default: the shipped one)")
    evaluate.add_argument("--device")
    ship = sub.add_parser("ship", help="copy a trained model into the pretrained folder, re-evaluated with its card")
    ship.add_argument("model")
    ship.add_argument("--task", "--variant", dest="task", help="the task or model variant")
    ship.add_argument("--no-attention", action="store_true", help="the variant without attention (draw, sat, r2am)")
    ship.add_argument("--checkpoint", required=True, help="a .pt file written by train, with its card beside it")
    ship.add_argument("--float16", action="store_true", help="store the weights in half precision (half the size)")
    ship.add_argument("--to", default=None, help="the folder to write to (default: the package's pretrained folder)")
    ship.add_argument("--device", default="cpu", help="where to evaluate (default: cpu, as the tests re-evaluate)")
    web = sub.add_parser("export-web", help="write the book's live-demo models (ONNX) from the shipped checkpoints, "
                         "and check them against PyTorch")
    web.add_argument("--out", required=True, help="the folder to write to (the book build reads _build/web)")
    web.add_argument("--no-parity", action="store_true", help="skip the check against PyTorch")
    return parser


def cmd_export_web(args) -> int:
    """Export the live demos' models; with the parity check, fail unless onnxruntime decodes and classifies
    exactly as PyTorch does."""
    from . import web
    started = time.perf_counter()
    files = web.export_web(args.out)
    for name, about in files.items():
        print(f"wrote {Path(args.out) / name} ({about['bytes'] / 2**20:.2f} MiB, sha256 {about['sha256'][:12]})")
    print(f"exported in {time.perf_counter() - started:.1f} s")
    if args.no_parity:
        return 0
    started = time.perf_counter()
    figures = web.parity(args.out, dates=50, digits=100)
    print(json.dumps(figures))
    print(f"parity checked in {time.perf_counter() - started:.1f} s")
    if figures["dates_same"] != figures["dates_total"] or figures["digits_same"] != figures["digits_total"]:
        raise CommandError(f"the exported models disagree with PyTorch: {figures}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; an expected failure is one ``error: ...`` line on stderr and exit status 2.

    Expected: bad arguments, unknown names, missing or unreadable files, a model card or
    checkpoint that is not what it should be, an output another run holds, an output that
    cannot be written, running out of memory, a training loss that stopped being finite.
    Anything else is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)  # a bad argument: argparse's usage and error line
    except SystemExit as stop:
        return 0 if stop.code is None else stop.code
    try:
        set_cpu_threads()  # the course's thread policy, unless ATTN_COURSE_THREADS or OMP_NUM_THREADS says otherwise
        if args.command == "info":
            return cmd_info(args)
        if args.command == "train":
            return cmd_train(args, argv)
        if args.command == "ship":
            return cmd_ship(args, argv)
        if args.command == "export-web":
            return cmd_export_web(args)
        return cmd_evaluate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, NonFiniteLossError) as error:
        message = _one_line(str(error))
    except (_TORCH_OOM, MemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise  # a RuntimeError that is not about memory is a bug
        message = _out_of_memory_text(error, args)
    except OSError as error:  # FileNotFoundError, PermissionError, a full disk, CheckpointError, ...
        message = _one_line(_os_error_text(error))
    except ValueError as error:  # bad names and values, corrupt files, OutputLockedError, ...
        message = _one_line(str(error))
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
