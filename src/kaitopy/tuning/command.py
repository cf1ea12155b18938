"""`kaitopy tune fetch|train|push|pull`: the steps of the tuning Job (and `pull` to check an image).

The argv matches what the Workspace controller writes into the Job (controllers/workspace/job.py).
Each step exits 0 on success and 1 with one clear error line otherwise, which the pod's
termination message and the workspace's conditions then show.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from kaitopy.logconfig import configure

log = logging.getLogger("kaitopy.tuning")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="step", metavar="STEP", required=True)

    f = sub.add_parser("fetch", help="download the input URLs into the data directory")
    f.add_argument("--dest", type=Path, required=True, help="directory to download into")
    f.add_argument("--url", action="append", required=True, help="a URL to download (repeatable)")
    f.add_argument("--max-bytes", type=int, default=None, help="size limit per file (default 20 GiB)")
    f.add_argument(
        "--max-total-bytes", type=int, default=None, help="size limit of all files together (default 50 GiB)"
    )
    f.add_argument("--max-urls", type=int, default=None, help="most URLs one fetch takes (default 100)")
    f.add_argument("--attempts", type=int, default=4, help="tries per URL (default 4)")
    f.add_argument(
        "--allow-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="a private network the URLs may reach (repeatable; the controller passes its admin's "
        "--url-allow-network; metadata, link-local and loopback ranges are never allowed)",
    )
    f.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback/private addresses (tests only: the Job never passes it)",
    )

    t = sub.add_parser("train", help="LoRA/QLoRA fine-tune the model on the data")
    t.add_argument("--method", choices=("lora", "qlora"), required=True)
    t.add_argument("--model-dir", type=Path, required=True, help="base model weights (fetched if empty)")
    t.add_argument("--hf-model-id", required=True, help="the base model's Hugging Face id")
    t.add_argument("--data-dir", type=Path, required=True)
    t.add_argument("--output-dir", type=Path, required=True, help="the results directory")
    t.add_argument("--config", type=Path, default=None, help="training_config.yaml (Kaito's shape)")
    t.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    t.add_argument(
        "--stop-after-steps",
        type=int,
        default=None,
        help="checkpoint and stop after this many steps in this run (a rerun resumes)",
    )
    t.add_argument(
        "--check-only", action="store_true", help="validate config, output dir and data; load no model"
    )

    p = sub.add_parser("push", help="push the results directory as an adapter image")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument(
        "--data",
        action="store_true",
        help="the directory holds training data, not an adapter: push it as a data image for a "
        "tuning Workspace's input.image (its files land under /data)",
    )
    p.add_argument("--image", required=True)
    p.add_argument("--docker-config", type=Path, default=None, help=".dockerconfigjson with the credentials")
    p.add_argument("--plain-http", action="store_true", help="talk HTTP, not HTTPS, to the registry")
    p.add_argument(
        "--architecture",
        action="append",
        default=None,
        help="a platform the image lists (repeatable; default amd64 and arm64)",
    )

    q = sub.add_parser("pull", help="copy an adapter image's /data into a directory")
    q.add_argument("--image", required=True)
    q.add_argument("--dest", type=Path, required=True)
    q.add_argument("--docker-config", type=Path, default=None)
    q.add_argument("--plain-http", action="store_true")
    q.add_argument(
        "--max-bytes", type=int, default=None, help="most the layers may expand to together (default 20 GiB)"
    )


def _fetch(args: argparse.Namespace) -> int:
    from kaitopy.ssrf.addresses import allowed_network
    from kaitopy.tuning.fetch import (
        DEFAULT_MAX_BYTES,
        DEFAULT_MAX_TOTAL_BYTES,
        DEFAULT_MAX_URLS,
        FetchError,
        FetchOptions,
        fetch_all,
    )

    try:
        allowed = tuple(allowed_network(n) for n in args.allow_network)
    except ValueError as exc:
        log.error("--allow-network %s", exc)
        return 2
    options = FetchOptions(
        max_bytes=args.max_bytes or DEFAULT_MAX_BYTES,
        max_total_bytes=args.max_total_bytes or DEFAULT_MAX_TOTAL_BYTES,
        max_urls=args.max_urls or DEFAULT_MAX_URLS,
        attempts=max(1, args.attempts),
        allow_private=args.allow_private,
        allowed=allowed,
    )
    try:
        paths = asyncio.run(fetch_all(list(args.url), args.dest, options))
    except FetchError as exc:
        log.error("fetch failed: %s", exc)
        return 1
    log.info("fetched %d file(s) into %s", len(paths), args.dest)
    return 0


def _train(args: argparse.Namespace) -> int:
    from kaitopy.tuning.config import ConfigError
    from kaitopy.tuning.data import DataError
    from kaitopy.tuning.tokens import TokenizeError
    from kaitopy.tuning.train import TrainError, TrainRequest, prepare, train

    req = TrainRequest(
        method=args.method,
        model_dir=args.model_dir,
        hf_model_id=args.hf_model_id,
        data_dir=args.data_dir,
        results_dir=args.output_dir,
        config_path=args.config,
        metrics_port=args.metrics_port,
        stop_after_steps=args.stop_after_steps,
    )
    try:
        if args.check_only:
            prep = prepare(req)
            log.info("config, output dir %s and %d examples are valid", prep.output_dir, len(prep.examples))
            return 0
        outcome = train(req)
    except (TrainError, ConfigError, DataError, TokenizeError) as exc:
        log.error("training failed: %s", exc)
        return 1
    return 0 if outcome.completed or args.stop_after_steps else 143


def _push(args: argparse.Namespace) -> int:
    from kaitopy.tuning.oci import DEFAULT_ARCHITECTURES, OciError, push

    try:
        architectures = tuple(args.architecture) if args.architecture else DEFAULT_ARCHITECTURES
        digest = push(
            args.dir, args.image, args.docker_config, args.plain_http, architectures, adapter=not args.data
        )
    except OciError as exc:
        log.error("push failed: %s", exc)
        return 1
    print(f"{args.image}@{digest}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    from kaitopy.tuning.oci import DEFAULT_MAX_PULL_BYTES, OciError, pull

    try:
        files = pull(
            args.image,
            args.dest,
            args.docker_config,
            args.plain_http,
            args.max_bytes or DEFAULT_MAX_PULL_BYTES,
        )
    except OciError as exc:
        log.error("pull failed: %s", exc)
        return 1
    for f in files:
        print(f)
    return 0


STEPS = {"fetch": _fetch, "train": _train, "push": _push, "pull": _pull}


def run(args: argparse.Namespace) -> int:
    configure(args.log_format, args.log_level)
    return STEPS[args.step](args)
