"""`mmgdino train`: its arguments (generated from TrainConfig's table, so the command and the Python API cannot
drift apart) and its run function. `register(subparsers)` adds the subcommand to mmgdino's parser.

Exit codes (mmgdino's): 0 done; 1 done, but some training images could not be used (each named on its own line
at the start); 2 a usage or setup error, one line, before any training; 130 interrupted (checkpoints so far are
kept: rerun the same command to continue).
"""

import argparse
import json
import sys
import typing

from ..errors import EXIT_CODES
from .config import TrainConfig, config_fields

EXAMPLES = """examples:
  mmgdino train --train-annotations train.json --train-images images/ --val-annotations val.json \\
      --val-images images/ --model openmmlab-community/mm_grounding_dino_tiny_o365v1_goldg_v3det --out run/
  mmgdino train ... --nproc-per-node 2                  # two processes on this machine (torchrun)
  torchrun --nnodes 2 --node-rank 0 --master-addr HOST --nproc-per-node 8 --no-python mmgdino train ...
"""


def _numbers(text):
    try:
        return tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None


def _flag(name):
    return "--" + name.replace("_", "-")


def register(subparsers):
    parser = subparsers.add_parser("train", help="fine-tune on a COCO detection dataset (transformers' Trainer)",
                                   epilog=EXAMPLES + "\n" + EXIT_CODES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    for name, kind, default, meta in config_fields():
        if meta.get("cli") is False:
            continue
        kind = typing.get_args(kind)[0] if typing.get_args(kind) else kind
        help_text = meta["help"] + ("" if default is None or kind is bool else f" (default: {default})")
        if kind is bool:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        options = {"help": help_text, "default": default}
        if kind is tuple:
            options["type"] = _numbers
        elif kind in (int, float):
            options["type"] = kind
        for key in ("choices", "nargs", "const", "required"):
            if key in meta:
                options[key] = meta[key]
        parser.add_argument(_flag(name), **options)
    parser.add_argument("--nproc-per-node", type=int, default=1,
                        help="train in this many processes on this machine (torchrun; default 1)")  # fmt: skip
    parser.set_defaults(fn=run)
    return parser


def config_from(args):
    names = [name for name, _, _, meta in config_fields() if meta.get("cli") is not False]
    return TrainConfig(**{name: getattr(args, name) for name in names})


def to_argv(config):
    """The command line that gives `config` (each setting that differs from its default)."""
    argv = ["train"]
    for name, _, default, meta in config_fields():
        value = getattr(config, name)
        if meta.get("cli") is False or value == default:
            continue
        if isinstance(value, bool):
            argv.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (tuple, list)):
            argv += [_flag(name), ",".join(str(v) for v in value)]
        else:
            argv += [_flag(name), str(value)]
    return argv


def run(args):
    from .launch import check_processes, launch
    from .run import check_before_launch, train

    config = config_from(args).check()
    if args.nproc_per_node != 1:
        check_processes(args.nproc_per_node)
        check_before_launch(config)
        return launch(args.nproc_per_node, to_argv(config))
    report = train(config)
    if report is None:  # a process other than the first of a multi-process run
        return 0
    print(json.dumps({"model": report["model_dir"], "epochs": report["epochs"][-1:] or None,
                      "metrics": str(config.out) + "/metrics.json"}))  # fmt: skip
    for line in report["skipped_images"]:
        print(f"mmgdino train: {line}", file=sys.stderr)
    return 1 if report["skipped_images"] else 0
