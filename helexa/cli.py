"""The `helexa` executable: ``--role`` picks what this process is; utility commands sit beside it.

Roles and everything heavy are imported only when chosen, so ``helexa --help``,
``helexa plugins`` and ``helexa config check`` never import torch, transformers or
litestar.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import rich_click as click

from helexa import __version__

# role -> "module:function"; the function takes (config: Path | None, overrides: dict).
ROLES: dict[str, str] = {
    "gateway": "helexa.gateway.app:run",
    "acp": "helexa.acp.app:run",
    "bench": "helexa.bench.app:run",
    "neuron": "helexa.neuron.app:run",
    "standalone": "helexa.standalone:run",
}


def setup_logging(level: str) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=True)
    logging.basicConfig(
        level=level.upper(), format="%(message)s", datefmt="[%X]", handlers=[handler], force=True
    )
    # Third-party chatter an operator does not need at info level.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def parse_overrides(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--set key.path=value`` pairs; values are read as TOML, else taken as text."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, found {pair!r}", param_hint="--set")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        result[key.strip()] = value
    return result


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="helexa")
@click.option("--role", metavar="ROLE", help="Run as this role: " + ", ".join(ROLES or ["(none yet)"]) + ".")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="Config file.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (beats file and environment), e.g. --set gateway.listen=127.0.0.1:9000.",
)
@click.option(
    "--model", help="standalone: the model to serve (hub id in the local cache, folder or GGUF file)."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), help="standalone: where to run the model."
)
@click.option("--dtype", help="standalone: float32, bfloat16, float16 or auto.")
@click.option(
    "--log-level",
    default=os.environ.get("HELEXA_LOG_LEVEL", "info"),
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.pass_context
def cli(
    ctx: click.Context,
    role: str | None,
    config_path: Path | None,
    settings: tuple[str, ...],
    model: str | None,
    device: str | None,
    dtype: str | None,
    log_level: str,
) -> None:
    """helexa: one OpenAI + Anthropic API for a fleet of GPU hosts.

    Run a role with --role, or use one of the commands below.
    """
    setup_logging(log_level)
    if ctx.invoked_subcommand is not None:
        return
    if role is None:
        click.echo(ctx.get_help())
        return
    if role not in ROLES:
        raise click.UsageError(f"unknown role {role!r}; choose one of: {', '.join(ROLES) or '(none yet)'}")
    overrides = parse_overrides(settings)
    shortcuts = {"standalone.model": model, "standalone.device": device, "standalone.dtype": dtype}
    given = {key: value for key, value in shortcuts.items() if value is not None}
    if given and role != "standalone":
        raise click.UsageError(
            "--model, --device and --dtype are for --role standalone; other roles take "
            "their models from their config files"
        )
    overrides.update(given)
    module, _, func = ROLES[role].partition(":")
    run = getattr(importlib.import_module(module), func)
    sys.exit(run(config_path, overrides) or 0)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def plugins(as_json: bool) -> None:
    """List installed plugins, what each registered, and why any failed."""
    import msgspec

    from helexa.plugins import load_plugins

    host = load_plugins()
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(host.plugins)).decode())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="helexa plugins")
    for column in ("plugin", "distribution", "version", "status", "registered"):
        table.add_column(column)
    for p in host.plugins:
        registered = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(p.registered.items()))
        status = {"loaded": "[green]loaded[/]", "disabled": "[yellow]disabled[/]"}.get(
            p.status, "[red]failed[/]"
        )
        detail = registered if p.error is None else f"[red]{p.error}[/]"
        table.add_row(p.name, p.distribution or "-", p.version or "-", status, detail)
    console = Console()
    console.print(table)
    runtimes = host.architecture_runtimes()
    if runtimes:
        kinds = Table(title="model architectures")
        kinds.add_column("architecture")
        kinds.add_column("runs")
        kinds.add_column("plugin")
        for name, runtime in runtimes.items():
            note = "natively" if runtime == "native" else "fallback: what transformers builds"
            kinds.add_row(name, note, host.architectures.entries[name].plugin)
        console.print(kinds)


@cli.group()
def config() -> None:
    """Work with helexa config files."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["gateway", "models", "neuron", "bench", "standalone"]),
    help="Which config this is (default: from the file name, else its tables).",
)
def config_check(file: Path, kind: str | None) -> None:
    """Validate FILE (gateway.toml, models.toml, neuron.toml or bench.toml)."""
    from helexa.config import ConfigError, check_file

    try:
        found, _ = check_file(file, kind)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{file}: valid {found} config")


@cli.command()
@click.option(
    "--gateway",
    "url",
    default=lambda: os.environ.get("HELEXA_GATEWAY_URL", "http://127.0.0.1:31313"),
    show_default="http://127.0.0.1:31313 or $HELEXA_GATEWAY_URL",
    help="The gateway to ask.",
)
@click.option(
    "--key", default=lambda: os.environ.get("HELEXA_API_KEY"), help="Admin key (or $HELEXA_API_KEY)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def status(url: str, key: str | None, as_json: bool) -> None:
    """Show the fleet: neurons, devices, free memory, models, and loads in progress."""
    import httpx

    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/fleet", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach the gateway at {url}: {exc}", err=True)
        sys.exit(1)
    if response.status_code != 200:
        message = response.json().get("error", {}).get("message", response.text)
        click.echo(f"error: {url} answered {response.status_code}: {message}", err=True)
        sys.exit(1)
    fleet = response.json()
    if as_json:
        click.echo(json.dumps(fleet, indent=2))
        return
    from helexa.fleet_table import render

    render(fleet)


@cli.group()
def bench() -> None:
    """The benchmark: one sweep now, or a report of what was measured."""


@bench.command("once")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="bench.toml")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
def bench_once(config_path: Path | None, settings: tuple[str, ...]) -> None:
    """Measure every target once (what each build still needs), then exit."""
    from helexa.bench.app import once

    sys.exit(once(config_path, parse_overrides(settings)))


@bench.command("report")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="bench.toml")
@click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), help="The database (default: from config)."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "md", "json", "html"]), default="table", show_default=True
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
def bench_report(config_path: Path | None, db: Path | None, fmt: str, output: Path | None) -> None:
    """Medians per target, model and scenario on the latest build, and the change since the previous."""
    from helexa.bench import report
    from helexa.bench.store import Store
    from helexa.config import load
    from helexa.settings import BenchSettings

    path = db or Path(load(BenchSettings, config_path).bench.db_path)
    if not path.exists():
        click.echo(f"error: no benchmark database at {path}", err=True)
        sys.exit(1)
    store = Store(path)
    items = report.summary(store)
    if fmt == "table" and output is None:
        from rich.console import Console

        Console().print(report.rich_table(items))
        return
    text = {"md": report.markdown, "json": lambda i: json.dumps(i, indent=2) + "\n"}.get(fmt)
    rendered = (
        text(items) if text else (report.html_report(store) if fmt == "html" else report.markdown(items))
    )
    if output:
        output.write_text(rendered)
        click.echo(f"wrote {output}")
    else:
        click.echo(rendered, nl=False)


def main() -> None:
    cli(prog_name="helexa")
