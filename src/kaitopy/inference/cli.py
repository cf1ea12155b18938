"""`kaitopy serve`: the flags the Workspace controller passes to the model server pod."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from kaitopy import logconfig
from kaitopy.inference.settings import (
    DEFAULT_LEADER_PORT,
    DTYPES,
    ENGINES,
    ServeSettings,
    SettingsError,
    default_served_name,
    env_flag,
    load_config,
    node_rank_from_pod_name,
    parse_images,
    parse_memory,
    parse_strengths,
    read_api_key,
    role_of,
)

log = logging.getLogger(__name__)

# transformers generates one request at a time; vLLM batches, so it takes many at once.
API_KEY_ENV = "KAITOPY_API_KEY"
DEFAULT_CONCURRENCY = {"transformers": 1, "vllm": 256}


def _optional(text: str) -> str | None:
    # The controller always passes --hf-model-id= and --dtype=, sometimes with an empty value.
    return text or None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="transformers", help="the inference engine")
    parser.add_argument("--model-dir", type=Path, required=True, help="the base model (Hugging Face layout)")
    parser.add_argument("--hf-model-id", type=_optional, default=None, help="where the weights come from")
    parser.add_argument("--served-model-name", default="", help="the model name clients send (default: id)")
    parser.add_argument("--dtype", default="auto", help=f"one of {', '.join(DTYPES)} (empty: auto)")
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--adapter-dir", type=Path, default=None, help="one LoRA adapter per subdirectory")
    parser.add_argument(
        "--adapter-strength",
        action="append",
        default=[],
        metavar="NAME=F",
        help="scale adapter NAME by F (repeatable)",
    )
    parser.add_argument(
        "--adapter-desired-file",
        type=Path,
        default=None,
        help="hot-load: the adapter list the controller delivers (JSON); the server pulls, loads and "
        "unloads adapters to follow it",
    )
    parser.add_argument(
        "--adapter-image",
        action="append",
        default=[],
        metavar="NAME=IMAGE",
        help="hot-load: the image an adapter in --adapter-dir was copied from (repeatable)",
    )
    parser.add_argument(
        "--adapter-pull-secrets-dir",
        type=Path,
        default=None,
        help="hot-load: one directory per pull secret (its .dockerconfigjson), named after the Secret",
    )
    parser.add_argument(
        "--adapter-work-dir",
        type=Path,
        default=None,
        help="hot-load: where pulled adapters are kept (default: .hot under --adapter-dir)",
    )
    parser.add_argument(
        "--plain-http-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="hot-load: a registry that speaks HTTP, not HTTPS (repeatable)",
    )
    parser.add_argument("--allow-loopback-registry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--hot-lora-slots", type=int, default=4, help="vLLM: LoRAs one batch may use when hot-loading"
    )
    parser.add_argument(
        "--hot-lora-max-rank", type=int, default=64, help="vLLM: the largest LoRA rank a hot-load accepts"
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (prompt + output)")
    parser.add_argument("--tool-call-parser", type=_optional, default=None)
    parser.add_argument("--reasoning-parser", type=_optional, default=None)
    parser.add_argument("--config", type=Path, default=None, help="inference_config.yaml")
    parser.add_argument(
        "--role-from-pod-name",
        action="store_true",
        help="multi-node: the StatefulSet ordinal in $POD_NAME is the node rank; pod 0 leads and "
        "serves, the others run their pipeline stage for it",
    )
    parser.add_argument("--leader-address", default=None, help="multi-node: the leader pod's DNS name")
    parser.add_argument(
        "--leader-port",
        type=int,
        default=DEFAULT_LEADER_PORT,
        help="multi-node: the port of the leader's torch.distributed rendezvous",
    )
    parser.add_argument(
        "--group-peer",
        action="append",
        default=[],
        metavar="URL",
        help="multi-node: each rank's model server (http://host:port), in rank order; the leader "
        "watches the workers and a worker its leader, and a restarted or silent peer restarts the group",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="requests generating at once (default: 1 for transformers, 256 for vllm, which batches)",
    )
    parser.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 429")
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=1024,
        help="max_tokens for a request that gives none (less when the context has less room left)",
    )
    parser.add_argument(
        "--max-tokens-limit", type=int, default=4096, help="the largest max_tokens a request may ask for"
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds a request may take, queue wait included (504 after); 0: no limit",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="require `Authorization: Bearer <token>` with the token in this file (a mounted Secret); "
        "$KAITOPY_API_KEY works too. /health, / and /metrics stay open",
    )
    parser.add_argument(
        "--memory-limit",
        default=os.environ.get("KAITOPY_MEMORY_LIMIT") or None,
        help="the container's memory limit (4Gi, 512Mi, bytes) when cgroup memory.max does not show it",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        default=env_flag("KAITOPY_ALLOW_DOWNLOAD"),
        help="fetch --hf-model-id into an empty --model-dir (also $KAITOPY_ALLOW_DOWNLOAD=1)",
    )
    parser.add_argument("--log-level", default=os.environ.get("KAITOPY_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=os.environ.get("KAITOPY_LOG_FORMAT", "text")
    )


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    dtype = args.dtype or "auto"
    if dtype not in DTYPES:
        raise SettingsError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    max_concurrency = (
        DEFAULT_CONCURRENCY[args.engine] if args.max_concurrency is None else args.max_concurrency
    )
    for flag, value in (
        ("--tensor-parallel-size", args.tensor_parallel_size),
        ("--pipeline-parallel-size", args.pipeline_parallel_size),
        ("--max-concurrency", max_concurrency),
        ("--hot-lora-slots", args.hot_lora_slots),
        ("--hot-lora-max-rank", args.hot_lora_max_rank),
    ):
        if value < 1:
            raise SettingsError(f"{flag} must be >= 1, not {value}")
    if args.max_queue < 0:
        raise SettingsError(f"--max-queue must be >= 0, not {args.max_queue}")
    if args.max_model_len is not None and args.max_model_len < 1:
        raise SettingsError(f"--max-model-len must be >= 1, not {args.max_model_len}")
    for flag, value in (
        ("--default-max-tokens", args.default_max_tokens),
        ("--max-tokens-limit", args.max_tokens_limit),
    ):
        if value < 1:
            raise SettingsError(f"{flag} must be >= 1, not {value}")
    if args.default_max_tokens > args.max_tokens_limit:
        raise SettingsError(
            f"--default-max-tokens {args.default_max_tokens} exceeds "
            f"--max-tokens-limit {args.max_tokens_limit}"
        )
    if not args.request_timeout >= 0:
        raise SettingsError(f"--request-timeout must be >= 0 seconds, not {args.request_timeout}")
    if not 0 < args.port < 65536:
        raise SettingsError(f"--port {args.port} is not a TCP port")
    config = load_config(args.config) if args.config is not None else None
    node_rank = node_rank_from_pod_name(os.environ.get("POD_NAME")) if args.role_from_pod_name else 0
    role = role_of(node_rank) if args.role_from_pod_name else "single"
    if role != "single" and not args.leader_address:
        raise SettingsError("--role-from-pod-name needs --leader-address (the leader pod's DNS name)")
    if not 0 < args.leader_port < 65536:
        raise SettingsError(f"--leader-port {args.leader_port} is not a TCP port")
    for url in args.group_peer:
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"--group-peer {url!r}: expected http://host:port")
    if args.group_peer and role != "single" and len(args.group_peer) <= node_rank:
        raise SettingsError(
            f"--group-peer names {len(args.group_peer)} servers, but this pod is rank {node_rank}"
        )
    max_model_len = args.max_model_len or (config.max_model_len if config else None)
    kwargs = {"config": config} if config is not None else {}
    return ServeSettings(
        engine=args.engine,
        model_dir=args.model_dir,
        served_model_name=args.served_model_name or default_served_name(args.model_dir, args.hf_model_id),
        hf_model_id=args.hf_model_id,
        dtype=dtype,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        adapter_dir=args.adapter_dir,
        host=args.host,
        port=args.port,
        max_model_len=max_model_len,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
        adapter_strengths=parse_strengths(args.adapter_strength),
        role=role,
        leader_address=args.leader_address,
        node_rank=node_rank,
        leader_port=args.leader_port,
        group_peers=tuple(u.rstrip("/") for u in args.group_peer) if role != "single" else (),
        max_concurrency=max_concurrency,
        max_queue=args.max_queue,
        allow_download=args.allow_download,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        request_timeout_s=args.request_timeout,
        api_key=read_api_key(args.api_key_file, os.environ.get(API_KEY_ENV)),
        memory_limit_bytes=parse_memory(args.memory_limit) if args.memory_limit else None,
        adapter_desired_file=args.adapter_desired_file,
        adapter_images=parse_images(args.adapter_image),
        adapter_pull_secrets_dir=args.adapter_pull_secrets_dir,
        adapter_work_dir=args.adapter_work_dir,
        plain_http_registries=tuple(args.plain_http_registry),
        allow_loopback_registry=args.allow_loopback_registry,
        hot_lora_slots=args.hot_lora_slots,
        hot_lora_max_rank=args.hot_lora_max_rank,
        **kwargs,
    )


def run(args: argparse.Namespace) -> int:
    logconfig.configure(args.log_format, str(args.log_level))
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        log.error("cannot start: %s", exc)
        return 2
    from kaitopy.inference.app import serve

    return serve(settings)
