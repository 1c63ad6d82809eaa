"""The agent's tools: read, list, write and edit files in the session's folder, and run commands.

Paths are resolved against the session's folder; nothing is written outside it (in
plan mode, outside the session's plans folder). A tool's failure is a `ToolFailure`
whose message the model sees, so it can correct itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTPUT_CAP = 20_000
BASH_TIMEOUT_S = 120.0

SPECS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a text file. Optional 1-based start line and line limit.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "line": {"type": "integer"},
                "limit": {"type": "integer"},
            },
            "required": ["path"],
        },
    },
    {
        "name": "list_dir",
        "description": "List a folder's entries (folders end with /).",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
    {
        "name": "write_file",
        "description": "Create or replace a text file with the given content.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "edit_file",
        "description": "Replace old_text, which must occur exactly once, with new_text.",
        "parameters": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_text": {"type": "string"},
                "new_text": {"type": "string"},
            },
            "required": ["path", "old_text", "new_text"],
        },
    },
    {
        "name": "bash",
        "description": "Run a shell command (120 s limit; long output is cut).",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string"}, "cwd": {"type": "string"}},
            "required": ["command"],
        },
    },
]
WRITES = {"write_file", "edit_file"}
KINDS = {
    "read_file": "read",
    "list_dir": "search",
    "write_file": "edit",
    "edit_file": "edit",
    "bash": "execute",
}


class ToolFailure(Exception):
    """What went wrong, in words the model can act on."""


@dataclass
class Workspace:
    root: Path
    plans: Path
    mode: str = "default"  # default | bypassPermissions | plan
    reader: Callable[[Path, int | None, int | None], Awaitable[str | None]] | None = None
    """The editor's file reader (unsaved buffers included), when it offers one."""

    def resolve(self, raw: str, base: Path | None = None) -> Path:
        text = os.path.expandvars(os.path.expanduser(raw))
        path = Path(text)
        return (path if path.is_absolute() else (base or self.root) / path).resolve()

    def writable(self, raw: str) -> Path:
        if self.mode == "plan":
            path = self.resolve(raw, self.plans)
            if not path.is_relative_to(self.plans.resolve()):
                raise ToolFailure(
                    f"plan mode writes only into the plans folder {self.plans}; {raw!r} is outside it"
                )
            return path
        path = self.resolve(raw)
        if not path.is_relative_to(self.root.resolve()):
            raise ToolFailure(
                f"{raw!r} is outside the session's folder {self.root}; writes there are refused"
            )
        return path

    async def run(self, name: str, arguments: dict[str, Any]) -> str:
        handler = getattr(self, f"_{name}", None)
        if handler is None:
            raise ToolFailure(
                f"there is no tool named {name!r}; tools: {', '.join(s['name'] for s in SPECS)}"
            )
        try:
            return await handler(**arguments)
        except TypeError as exc:
            raise ToolFailure(f"{name}: bad arguments: {exc}") from None
        except OSError as exc:
            raise ToolFailure(f"{name}: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None

    async def _read_file(self, path: str, line: int | None = None, limit: int | None = None) -> str:
        target = self.resolve(path)
        if self.reader is not None:
            text = await self.reader(target, line, limit)
            if text is not None:
                return text
        lines = target.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        start = max(0, (line or 1) - 1)
        return "".join(lines[start : start + limit] if limit else lines[start:])

    async def _list_dir(self, path: str = ".") -> str:
        target = self.resolve(path)
        entries = sorted(target.iterdir(), key=lambda p: (not p.is_dir(), p.name))
        return "\n".join(p.name + ("/" if p.is_dir() else "") for p in entries) or "(empty)"

    async def _write_file(self, path: str, content: str) -> str:
        target = self.writable(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"wrote {len(content)} characters to {target}"

    async def _edit_file(self, path: str, old_text: str, new_text: str) -> str:
        target = self.writable(path)
        text = target.read_text(encoding="utf-8")
        count = text.count(old_text) if old_text else 0
        if count == 0:
            raise ToolFailure(
                f"edit_file: old_text was not found in {path}; read the file and copy it exactly"
            )
        if count > 1:
            raise ToolFailure(f"edit_file: old_text occurs {count} times in {path}; include more context")
        target.write_text(text.replace(old_text, new_text, 1), encoding="utf-8")
        return f"edited {target}"

    async def _bash(self, command: str, cwd: str | None = None) -> str:
        if self.mode == "plan":
            raise ToolFailure("bash is disabled in plan mode")
        process = await asyncio.create_subprocess_shell(
            command,
            cwd=self.resolve(cwd) if cwd else self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), BASH_TIMEOUT_S)
        except TimeoutError:
            _kill(process)
            raise ToolFailure(
                f"bash: {command!r} ran longer than {BASH_TIMEOUT_S:.0f} s and was stopped"
            ) from None
        except asyncio.CancelledError:  # the user cancelled the turn: stop the command with it
            _kill(process)
            raise
        text = output.decode(errors="replace")
        if len(text) > OUTPUT_CAP:
            text = text[:OUTPUT_CAP] + f"\n[... {len(text) - OUTPUT_CAP} more characters cut]"
        return f"exit status {process.returncode}\n{text}"


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
