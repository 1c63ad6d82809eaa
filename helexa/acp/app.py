"""``helexa --role acp``: the agent on stdin and stdout; logs go to a file, never to stdout."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from helexa import config

log = logging.getLogger("helexa.acp")


def log_to_file(path: Path, level: int) -> None:
    """stdout belongs to the protocol and stderr is not shown by every editor: log to a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def run(config_path: Path | None, overrides: dict[str, Any]) -> int:
    from acp import run_agent

    from helexa.acp.agent import HelexaAgent
    from helexa.acp.settings import data_dir, load

    environ = dict(os.environ)
    if config_path is not None:
        environ["HELEXA_ACP_CONFIG_PATH"] = str(config_path)
    level = logging.getLogger().level
    try:
        settings = load(environ)
    except config.ConfigError as exc:
        log_to_file(data_dir(environ) / "acp.log", level)
        log.error("%s", exc)
        return 2
    log_to_file(Path(settings.log_file) if settings.log_file else data_dir(environ) / "acp.log", level)
    agent = HelexaAgent(settings, environ)
    log.info("acp agent started: endpoints %s", ", ".join(e.name for e in settings.endpoints))

    async def main() -> None:
        try:
            await run_agent(agent)
        finally:
            await agent.close()

    asyncio.run(main())
    return 0
