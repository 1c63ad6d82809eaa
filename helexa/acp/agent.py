"""The ACP agent: sessions, prompts with a tool-calling loop, modes, models, cancel.

Assistant text and thinking stream to the editor as session updates as the model
produces them; each tool call is reported as it goes from pending to in progress to
completed or failed, with its output. Writes and commands ask the editor's
permission in default mode. Anything that goes wrong (an endpoint down, an unknown
model, a tool error) is told to the user in the session, and the agent keeps running.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from acp import (
    PROTOCOL_VERSION,
    RequestError,
    text_block,
    tool_content,
    update_agent_message_text,
    update_agent_thought_text,
    update_user_message_text,
)
from acp import schema as s

from helexa import __version__
from helexa.acp.providers import Call, EndpointError, Finish, Provider, Text, Thought
from helexa.acp.sessions import Session, SessionStore, compact, project_id, text_of, user_content
from helexa.acp.settings import AcpSettings, data_dir
from helexa.acp.tools import KINDS, SPECS, WRITES, ToolFailure, Workspace

log = logging.getLogger("helexa.acp")
MAX_ROUNDS = 24
MODES = [
    ("default", "Default", "Writes and commands ask for permission"),
    ("bypassPermissions", "Bypass permissions", "Writes and commands run without asking"),
    ("plan", "Plan", "Writes only into the session's plans folder; no commands"),
]
SYSTEM_PROMPT = """You are a coding assistant working in the folder {cwd}.
Use the tools to read, list, write and edit files and to run commands; paths are relative to that folder.
Read before you edit, keep changes small, and say what you changed."""
PERMISSION_OPTIONS = [
    s.PermissionOption(option_id="allow_once", name="Allow once", kind="allow_once"),
    s.PermissionOption(option_id="allow_always", name="Allow always", kind="allow_always"),
    s.PermissionOption(option_id="reject_once", name="Reject", kind="reject_once"),
]


class HelexaAgent:
    def __init__(self, settings: AcpSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.providers = {e.name: Provider(e, environ) for e in settings.endpoints}
        self.default = settings.default_endpoint or settings.endpoints[0].name
        self.data = data_dir(environ)
        self.store = SessionStore(self.data)
        self.sessions: dict[str, Session] = {}
        self.turns: dict[str, asyncio.Task[s.PromptResponse]] = {}
        self.conn: Any = None
        self.editor_reads = False
        self.known_models: list[str] = []

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    # --- models ----------------------------------------------------------------------

    def _label(self, endpoint: str, model: str) -> str:
        return model if len(self.providers) == 1 else f"{endpoint}:{model}"

    def resolve(self, label: str) -> tuple[Provider, str]:
        """``endpoint:model``, or a bare model (or ``:model``) on the default endpoint."""
        endpoint, sep, model = label.partition(":")
        if sep and endpoint in self.providers:
            return self.providers[endpoint], model
        return self.providers[self.default], label.removeprefix(":")

    async def refresh_models(self) -> None:
        found = []
        for name, provider in self.providers.items():
            found.append(self._label(name, provider.endpoint.default_model))
            try:
                found += [self._label(name, m) for m in await provider.models()]
            except EndpointError as exc:
                log.warning("cannot list models: %s", exc)
        self.known_models = list(dict.fromkeys(found))

    def config_options(self, session: Session) -> list[Any]:
        models = list(dict.fromkeys([session.model, *self.known_models]))
        return [
            s.SessionConfigOptionSelect(
                id="model",
                name="Model",
                category="model",
                type="select",
                current_value=session.model,
                options=[s.SessionConfigSelectOption(value=m, name=m) for m in models],
            ),
            s.SessionConfigOptionSelect(
                id="mode",
                name="Mode",
                category="mode",
                type="select",
                current_value=session.mode,
                options=[s.SessionConfigSelectOption(value=i, name=n, description=d) for i, n, d in MODES],
            ),
        ]

    def modes(self, session: Session) -> s.SessionModeState:
        return s.SessionModeState(
            current_mode_id=session.mode,
            available_modes=[s.SessionMode(id=i, name=n, description=d) for i, n, d in MODES],
        )

    # --- protocol: setup -----------------------------------------------------------------

    async def initialize(
        self, protocol_version: int, client_capabilities: Any = None, client_info: Any = None, **kwargs: Any
    ) -> s.InitializeResponse:
        fs = getattr(client_capabilities, "fs", None)
        self.editor_reads = bool(fs and fs.read_text_file)
        return s.InitializeResponse(
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=s.AgentCapabilities(
                load_session=True,
                prompt_capabilities=s.PromptCapabilities(image=True, embedded_context=True),
                session_capabilities=s.SessionCapabilities(list=s.SessionListCapabilities()),
            ),
            agent_info=s.Implementation(name="helexa", title="helexa", version=__version__),
        )

    async def authenticate(self, method_id: str, **kwargs: Any) -> None:
        return None

    async def new_session(self, cwd: str, **kwargs: Any) -> s.NewSessionResponse:
        if not Path(cwd).is_absolute():
            raise RequestError.invalid_params({"cwd": f"must be an absolute path, got {cwd!r}"})
        provider = self.providers[self.default]
        session = Session(
            id=self.store.new_id(), cwd=cwd, model=self._label(self.default, provider.endpoint.default_model)
        )
        self.sessions[session.id] = session
        self.store.save(session)
        await self.refresh_models()
        log.info("new session %s in %s with %s", session.id, cwd, session.model)
        return s.NewSessionResponse(
            session_id=session.id, modes=self.modes(session), config_options=self.config_options(session)
        )

    async def load_session(self, cwd: str, session_id: str, **kwargs: Any) -> s.LoadSessionResponse:
        session = self.sessions.get(session_id) or self.store.load(session_id)
        if session is None:
            raise RequestError.invalid_params({"session_id": f"no session {session_id!r}"})
        session.cwd = cwd
        self.sessions[session_id] = session
        await self.replay(session)
        await self.refresh_models()
        return s.LoadSessionResponse(modes=self.modes(session), config_options=self.config_options(session))

    async def replay(self, session: Session) -> None:
        """The transcript as session updates, as if it were happening again."""
        results = {
            m.get("tool_call_id"): m.get("content", "") for m in session.messages if m["role"] == "tool"
        }
        for message in session.messages:
            if message["role"] == "user":
                await self.update(session.id, update_user_message_text(text_of(message["content"])))
            elif message["role"] == "assistant":
                if message.get("content"):
                    await self.update(session.id, update_agent_message_text(text_of(message["content"])))
                for call in message.get("tool_calls") or []:
                    output = results.get(call["id"], "")
                    await self.update(
                        session.id,
                        s.ToolCallStart(
                            session_update="tool_call",
                            tool_call_id=call["id"],
                            title=call["function"]["name"],
                            kind=KINDS.get(call["function"]["name"], "other"),
                            status="failed" if str(output).startswith("Error:") else "completed",
                            content=[tool_content(text_block(str(output)))],
                        ),
                    )

    async def list_sessions(
        self, cwd: str | None = None, cursor: str | None = None, **kwargs: Any
    ) -> s.ListSessionsResponse:
        return s.ListSessionsResponse(
            sessions=[
                s.SessionInfo(session_id=x.id, cwd=x.cwd, title=x.title, updated_at=x.updated_at)
                for x in self.store.list(cwd)
            ]
        )

    def session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id) or self.store.load(session_id)
        if session is None:
            raise RequestError.invalid_params({"session_id": f"no session {session_id!r}"})
        self.sessions[session_id] = session
        return session

    async def set_session_mode(
        self, session_id: str, mode_id: str, **kwargs: Any
    ) -> s.SetSessionModeResponse:
        self._set_mode(self.session(session_id), mode_id)
        await self.update(
            session_id, s.CurrentModeUpdate(session_update="current_mode_update", current_mode_id=mode_id)
        )
        return s.SetSessionModeResponse()

    def _set_mode(self, session: Session, mode_id: str) -> None:
        if mode_id not in {m[0] for m in MODES}:
            raise RequestError.invalid_params({"mode_id": f"unknown mode {mode_id!r}"})
        session.mode = mode_id
        self.store.save(session)

    async def set_config_option(
        self, config_id: str, session_id: str, value: Any, **kwargs: Any
    ) -> s.SetSessionConfigOptionResponse:
        session = self.session(session_id)
        if config_id == "model":
            session.model = str(value)
            self.store.save(session)
        elif config_id == "mode":
            self._set_mode(session, str(value))
        else:
            raise RequestError.invalid_params({"config_id": f"unknown option {config_id!r}"})
        return s.SetSessionConfigOptionResponse(config_options=self.config_options(session))

    # --- protocol: prompting --------------------------------------------------------------

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> s.PromptResponse:
        session = self.session(session_id)
        turn = asyncio.create_task(self.turn(session, prompt))
        self.turns[session_id] = turn
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.cancelled():  # cancelled by the editor, not by our own shutdown
                self.store.save(session)
                return s.PromptResponse(stop_reason="cancelled")
            raise
        finally:
            self.turns.pop(session_id, None)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        turn = self.turns.get(session_id)
        if turn is not None:
            log.info("cancelling the turn of session %s", session_id)
            turn.cancel()

    async def update(self, session_id: str, update: Any) -> None:
        await self.conn.session_update(session_id=session_id, update=update)

    async def turn(self, session: Session, prompt: list[Any]) -> s.PromptResponse:
        session.messages.append({"role": "user", "content": user_content(prompt)})
        session.title = session.title or text_of(session.messages[-1]["content"])[:60]
        try:
            provider, model = self.resolve(session.model)
        except KeyError:
            await self.update(session.id, update_agent_message_text(f"Unknown model {session.model!r}."))
            return s.PromptResponse(stop_reason="end_turn")
        workspace = Workspace(
            Path(session.cwd),
            self.data / "plans" / project_id(session.cwd),
            session.mode,
            self._editor_reader(session.id) if self.editor_reads else None,
        )
        system = self._system_prompt(session)
        reason = "max_turn_requests"
        for _ in range(MAX_ROUNDS):
            messages = self._fit(session, provider)
            text, calls = [], []
            try:
                async for event in provider.stream(model, system, messages, SPECS):
                    if isinstance(event, Text):
                        text.append(event.text)
                        await self.update(session.id, update_agent_message_text(event.text))
                    elif isinstance(event, Thought):
                        await self.update(session.id, update_agent_thought_text(event.text))
                    elif isinstance(event, Call):
                        calls.append(event)
                    elif isinstance(event, Finish):
                        reason = "max_tokens" if event.reason == "max_tokens" else "end_turn"
            except EndpointError as exc:
                log.error("%s", exc)
                await self.update(
                    session.id, update_agent_message_text(f"\n\nCould not get an answer: {exc}")
                )
                self.store.save(session)
                return s.PromptResponse(stop_reason="end_turn")
            assistant: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
            if calls:
                assistant["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ]
            session.messages.append(assistant)
            self.store.save(session)
            if not calls:
                return s.PromptResponse(stop_reason=reason)
            for call in calls:
                output = await self.use_tool(session, workspace, call)
                session.messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
            self.store.save(session)
        return s.PromptResponse(stop_reason="max_turn_requests")

    def _system_prompt(self, session: Session) -> str:
        path = self.settings.system_prompt_path
        template = Path(path).read_text() if path and Path(path).exists() else SYSTEM_PROMPT
        return template.replace("{cwd}", session.cwd)

    def _fit(self, session: Session, provider: Provider) -> list[dict[str, Any]]:
        window = provider.endpoint.context_window
        if not window:
            return session.messages
        budget = window - provider.endpoint.max_tokens - 512
        fitted, changed = compact(session.messages, budget)
        if changed:
            log.info("session %s compacted: %d old messages shortened", session.id, changed)
            session.messages = fitted
        return fitted

    def _editor_reader(self, session_id: str):
        async def read(path: Path, line: int | None, limit: int | None) -> str | None:
            try:
                answer = await self.conn.read_text_file(
                    session_id=session_id, path=str(path), line=line, limit=limit
                )
            except Exception as exc:  # the editor could not: read from disk instead
                log.info("editor could not read %s (%s); reading from disk", path, exc)
                return None
            return answer.content

        return read

    async def use_tool(self, session: Session, workspace: Workspace, call: Call) -> str:
        kind = KINDS.get(call.name, "other")
        try:
            arguments = json.loads(call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("arguments are not an object")
        except ValueError as exc:
            arguments, failure = {}, f"Error: the arguments of {call.name} are not valid JSON ({exc})"
        else:
            failure = None
        title = f"{call.name} {arguments.get('path') or arguments.get('command') or ''}".strip()
        await self.update(
            session.id,
            s.ToolCallStart(
                session_update="tool_call",
                tool_call_id=call.id,
                title=title,
                kind=kind,
                status="pending",
                raw_input=arguments,
            ),
        )
        if failure is None and await self._denied(session, call, title, kind, arguments):
            failure = "Error: the user rejected this tool call."
        if failure is not None:
            await self._finish_tool(session, call, "failed", failure)
            return failure
        await self.update(
            session.id,
            s.ToolCallProgress(session_update="tool_call_update", tool_call_id=call.id, status="in_progress"),
        )
        try:
            output = await workspace.run(call.name, arguments)
            status = "completed"
        except ToolFailure as exc:
            output, status = f"Error: {exc}", "failed"
        await self._finish_tool(session, call, status, output)
        return output

    async def _finish_tool(self, session: Session, call: Call, status: str, output: str) -> None:
        await self.update(
            session.id,
            s.ToolCallProgress(
                session_update="tool_call_update",
                tool_call_id=call.id,
                status=status,
                raw_output=output,
                content=[tool_content(text_block(output))],
            ),
        )

    async def _denied(self, session: Session, call: Call, title: str, kind: str, arguments: dict) -> bool:
        needs = call.name in WRITES or call.name == "bash"
        if not needs or session.mode != "default" or call.name in session.allowed_always:
            return False
        answer = await self.conn.request_permission(
            session_id=session.id,
            options=PERMISSION_OPTIONS,
            tool_call=s.ToolCallUpdate(
                tool_call_id=call.id, title=title, kind=kind, status="pending", raw_input=arguments
            ),
        )
        outcome = answer.outcome
        chosen = getattr(outcome, "option_id", None)
        if chosen == "allow_always":
            session.allowed_always.append(call.name)
        return chosen not in ("allow_once", "allow_always")

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()
