"""The `vllm` command line of 0.10.1.1, as far as the runbook and the project use it.

Why argparse with vLLM's structure (a top-level parser with subcommands): an
unknown flag must fail exactly like the real CLI — usage of the top-level
parser, `vllm: error: unrecognized arguments: ...`, exit 2 — and the
`non-default args` log line must list what the operator changed, in vLLM's
order.  Like vLLM's FlexibleArgumentParser, `--max_model_len` is accepted for
`--max-model-len`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .versions import DEFAULT_VERSION, behaviour

VERSION = DEFAULT_VERSION  # what `vllm --version` prints unless VLLM_SIM_VERSION says otherwise
DEFAULT_MODEL = "Qwen/Qwen3-0.6B"
SUBCOMMANDS = ("chat", "complete", "serve", "bench", "collect-env", "run-batch")


def human_readable_int(value: str) -> int:
    """vLLM's parser for sizes: 32000, 32k (x1000), 32K (x1024), 1m, 1M."""
    value = value.strip()
    units = {"k": 1000, "m": 1000**2, "g": 1000**3, "K": 1024, "M": 1024**2, "G": 1024**3}
    if value and value[-1] in units:
        try:
            return int(float(value[:-1]) * units[value[-1]])
        except ValueError:
            pass
    return int(value)


@dataclass(frozen=True)
class ServeArgs:
    """The parsed `vllm serve` arguments the imitation acts on."""

    model: str
    host: str | None
    port: int
    api_key: str | None
    served_model_name: list[str] | None
    revision: str | None
    download_dir: str | None
    max_model_len: int | None
    gpu_memory_utilization: float
    max_num_batched_tokens: int | None
    max_num_seqs: int | None
    enable_prefix_caching: bool | None
    trust_remote_code: bool
    quantization: str | None
    dtype: str
    seed: int | None
    enforce_eager: bool
    disable_log_stats: bool
    disable_uvicorn_access_log: bool
    non_default: dict[str, Any]
    load_format: str = "auto"
    safetensors_load_strategy: str | None = None

    @property
    def served_names(self) -> list[str]:
        return list(self.served_model_name) if self.served_model_name else [self.model]


def _add_serve_options(p: argparse.ArgumentParser, version: str) -> None:
    """Options in the order vLLM registers them (frontend first, then engine args); the version's
    load flags (versions.py `load_strategy_choices`)."""
    p.add_argument(
        "model_tag", nargs="?", default=None, help="The model tag to serve (optional if specified in config)"
    )
    p.add_argument("--host", type=str, default=None)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--uvicorn-log-level",
        type=str,
        default="info",
        choices=["debug", "info", "warning", "error", "critical", "trace"],
    )
    p.add_argument("--disable-uvicorn-access-log", action="store_true", default=False)
    p.add_argument("--api-key", type=str, default=None)
    p.add_argument("--model", type=str, default=DEFAULT_MODEL)
    p.add_argument("--tokenizer", type=str, default=None)
    p.add_argument("--trust-remote-code", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument(
        "--dtype", type=str, default="auto", choices=["auto", "bfloat16", "float", "float16", "float32", "half"]
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--revision", type=str, default=None)
    p.add_argument("--max-model-len", type=human_readable_int, default=None)
    p.add_argument("--quantization", "-q", type=str, default=None)
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--served-model-name", nargs="+", type=str, default=None)
    # engine/arg_utils.py:566 (0.10.1.1): `str | LoadFormats`, so any text (a metavar, not choices)
    p.add_argument("--load-format", type=str, default="auto")
    p.add_argument("--download-dir", type=str, default=None)
    b = behaviour(version)
    if b.load_strategy_choices is not None:  # 0.10.2+ (vllm PR 24469)
        p.add_argument(
            "--safetensors-load-strategy",
            type=str,
            default=b.load_strategy_default,
            choices=list(b.load_strategy_choices) or None,
        )
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-num-batched-tokens", type=human_readable_int, default=None)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--disable-log-stats", action="store_true", default=False)
    p.add_argument("--enable-log-requests", action="store_true", default=False)
    p.add_argument("--disable-log-requests", action="store_true", default=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm", description="vLLM CLI")
    version = os.environ.get("VLLM_SIM_VERSION", "").strip() or VERSION
    parser.add_argument("-v", "--version", action="version", version=version)
    subs = parser.add_subparsers(required=False, dest="subparser", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name in SUBCOMMANDS:
        if name == "serve":
            serve = subs.add_parser(
                "serve",
                help="Start the vLLM OpenAI Compatible API server.",
                description="Start the vLLM OpenAI Compatible API server.",
                usage="vllm serve [model_tag] [options]",
            )
            _add_serve_options(serve, version)
        else:
            subs.add_parser(name, help=f"{name} (not available in the imitation)")
    return parser


def normalize_flags(argv: Sequence[str]) -> list[str]:
    """FlexibleArgumentParser: `--max_model_len=1` -> `--max-model-len=1`."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            key, sep, val = arg.partition("=")
            arg = key.replace("_", "-") + sep + val
        out.append(arg)
    return out


def _non_default(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> dict[str, Any]:
    """vLLM's `non-default args` dict: every option whose value differs from its default."""
    serve = _serve_parser(parser)
    out: dict[str, Any] = {}
    for action in serve._actions:  # registration order, as vLLM iterates them
        if action.dest in ("help",) or action.dest not in vars(ns):
            continue
        value = getattr(ns, action.dest)
        if action.dest == "model" and ns.model_tag is not None:
            value = ns.model_tag
        if value != action.default:
            out[action.dest] = value
    return out


def _serve_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["serve"]
    raise RuntimeError("serve subparser missing")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse like `vllm` does; argparse exits 2 on unknown flags."""
    parser = build_parser()
    ns = parser.parse_args(normalize_flags(argv))
    if ns.subparser == "serve":
        ns.non_default = _non_default(parser, ns)
    ns.parser = parser
    return ns


def to_serve_args(ns: argparse.Namespace) -> ServeArgs:
    model = ns.model_tag or ns.model
    return ServeArgs(
        model=model,
        host=ns.host,
        port=ns.port,
        api_key=ns.api_key,
        served_model_name=ns.served_model_name,
        revision=ns.revision,
        download_dir=ns.download_dir,
        max_model_len=ns.max_model_len,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        max_num_seqs=ns.max_num_seqs,
        enable_prefix_caching=ns.enable_prefix_caching,
        trust_remote_code=ns.trust_remote_code,
        quantization=ns.quantization,
        dtype=ns.dtype,
        seed=ns.seed,
        enforce_eager=ns.enforce_eager,
        disable_log_stats=ns.disable_log_stats,
        disable_uvicorn_access_log=ns.disable_uvicorn_access_log,
        non_default=ns.non_default,
        load_format=ns.load_format,
        safetensors_load_strategy=getattr(ns, "safetensors_load_strategy", None),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vllm` command."""
    ns = parse(sys.argv[1:] if argv is None else argv)
    if ns.subparser is None:
        ns.parser.print_help()
        return 0
    if ns.subparser != "serve":
        print(f"vllm {ns.subparser}: not available in the vLLM imitation", file=sys.stderr)
        return 2
    from .runtime import serve  # imported late: `vllm --version` stays instant

    return serve(to_serve_args(ns))
