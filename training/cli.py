"""Training subcommands of `vlmforge`, registered into the main parser by pipeline/cli.py."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the training subcommands to `sub` (each sets `handler`)."""
    _add_train(sub)
    _add_train_tokenizer(sub)
    _add_eval(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train with DeepSpeed: text_lm, clip, stage 1 or stage 2 (the task is in the config)",
        description="Run the training config CONFIG on NPROC processes per node with the DeepSpeed "
        "launcher (torchrun where it cannot be used). Without a GPU it runs on the CPU (gloo).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  vlmforge train configs/train/stage1.yaml --nproc 8\n"
        "  vlmforge train configs/train/stage1.yaml --nproc 8 --hostfile hosts.txt   # several nodes\n"
        "  vlmforge train configs/train/stage1.yaml --resume                         # after a stop\n"
        "  vlmforge train configs/train/stage1.yaml --set train.steps=50 --set data.path=demo/curated",
    )
    p.add_argument("config", help="train config YAML, e.g. configs/train/stage1.yaml")
    p.add_argument("--nproc", type=int, default=1, help="processes (devices) per node (default 1)")
    p.add_argument("--hostfile", help="DeepSpeed hostfile for a multi-node run ('host slots=N' lines)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in train.output"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.steps=100 (repeatable)",
    )
    p.add_argument(
        "--launcher",
        choices=("auto", "deepspeed", "torchrun"),
        default="auto",
        help="process launcher (default: deepspeed when installed)",
    )
    p.set_defaults(handler=_train)


def _add_train_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-tokenizer",
        help="train a byte-level BPE tokenizer.json on the captions of a curated output",
        description="Train a byte-level BPE on the captions (and synthetic captions) of a curated "
        "output, with <|begin_of_text|> = 0, <|end_of_text|> = 1 and <|image|> right after the vocabulary "
        "(the fused model's image token). For the offline tiny recipe; full-scale runs use Llama 3's.",
    )
    p.add_argument("curated", help="output directory of `vlmforge curate`")
    p.add_argument("--output", required=True, help="tokenizer.json to write")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=512,
        help="text ids incl. BOS and EOS; must equal the model's vocab_size (tiny: 512)",
    )
    p.set_defaults(handler=_train_tokenizer)


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="held-out caption loss with the matching and with a shuffled image (the image gap)",
        description="Evaluate a vlm weights file (model.safetensors of stage 1 or 2) on the held-out rows "
        "of the config's data, in this process.",
    )
    p.add_argument("config", help="the train config of the stage (data, tokenizer, eval settings)")
    p.add_argument("--weights", required=True, help="model.safetensors written by a vlm run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(handler=_eval)


def _train(args: argparse.Namespace) -> int:
    from vlmforge.training.config import load_train_config
    from vlmforge.training.launch import launch
    from vlmforge.training.train import model_config

    # config errors here, before any process starts (model.hf_* dirs: config.json and weights present)
    model_config(load_train_config(args.config, args.set))
    return launch(args.config, args.nproc, args.hostfile, args.resume, args.set, args.launcher)


def _train_tokenizer(args: argparse.Namespace) -> int:
    from vlmforge.training.tokenizer import caption_texts, train_tokenizer

    tok = train_tokenizer(caption_texts(args.curated), args.vocab_size, args.output)
    print(f"wrote {args.output}: {tok.vocab_size} text ids, <|image|> = {tok.image_id}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vlmforge.training import video, vlm
    from vlmforge.training.config import load_train_config

    task = video if load_train_config(args.config, args.set).task == "video" else vlm
    print(json.dumps(task.evaluate_weights(args.config, args.weights, args.set), indent=2))
    return 0
