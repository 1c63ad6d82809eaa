"""The acp agent driven as an editor drives it: a real subprocess over stdio, against an echo neuron."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx
import pytest
from acp import RequestError, spawn_agent_process, text_block
from acp import schema as s
from neurons import running_neuron

from helexa.acp.sessions import compact, estimate_tokens

CALL = '<tool_call>{{"name": "{}", "arguments": {}}}</tool_call>'
SCRIPTS = {
    "echo/text": "Hello from the fleet.",
    "echo/reader": [CALL.format("read_file", '{"path": "notes.txt"}'), "The notes say: {last_tool}"],
    "echo/writer": [
        CALL.format("write_file", '{"path": "out.txt", "content": "written by the agent"}'),
        "Result: {last_tool}",
    ],
    "echo/bash": [CALL.format("bash", '{"command": "echo hi"}'), "Result: {last_tool}"],
    "echo/slow": "word " * 400,
}


class Editor:
    """The editor's side: records what the agent shows, answers permission requests and file reads."""

    def __init__(self, permission: str = "allow_once", buffers: dict[str, str] | None = None) -> None:
        self.updates: list = []
        self.asked: list = []
        self.permission = permission
        self.buffers = buffers or {}

    def on_connect(self, conn) -> None:
        pass

    async def session_update(self, session_id, update, **kwargs) -> None:
        self.updates.append(update)

    async def request_permission(self, session_id, tool_call, options, **kwargs):
        self.asked.append(tool_call)
        if self.permission == "reject":
            return s.RequestPermissionResponse(
                outcome=s.AllowedOutcome(option_id="reject_once", outcome="selected")
            )
        return s.RequestPermissionResponse(
            outcome=s.AllowedOutcome(option_id=self.permission, outcome="selected")
        )

    async def read_text_file(self, session_id, path, line=None, limit=None, **kwargs):
        if path in self.buffers:
            return s.ReadTextFileResponse(content=self.buffers[path])
        raise RequestError.resource_not_found(path)

    def text(self) -> str:
        return "".join(
            u.content.text for u in self.updates if getattr(u, "session_update", "") == "agent_message_chunk"
        )

    def tool_statuses(self) -> list[str]:
        return [
            u.status
            for u in self.updates
            if getattr(u, "session_update", "") in ("tool_call", "tool_call_update")
        ]


@pytest.fixture(scope="module")
def neuron():
    with running_neuron(
        simulated_devices=[{"name": "s", "memory_mb": 4000}],
        harness={"echo": {"tokens_per_second": 0, "size_mb": 10}},
    ) as (url, _):
        for model, script in SCRIPTS.items():
            options = {"script": script, **({"tokens_per_second": 20} if model == "echo/slow" else {})}
            httpx.post(f"{url}/models/load", json={"model_id": model, "options": options}).raise_for_status()
        yield url


@pytest.fixture
def env(tmp_path, neuron):
    return {
        "HELEXA_ACP_BASE_URL": f"{neuron}/v1",
        "HELEXA_ACP_MODEL": "echo/text",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "HELEXA_ACP_LOG_FILE": str(tmp_path / "acp.log"),
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }


async def start(editor, env, work):
    context = spawn_agent_process(
        lambda agent: editor, sys.executable, "-m", "helexa", "--role", "acp", env=env
    )
    conn, _ = await context.__aenter__()
    await conn.initialize(
        protocol_version=1,
        client_capabilities=s.ClientCapabilities(
            fs=s.FileSystemCapabilities(read_text_file=bool(editor.buffers), write_text_file=False)
        ),
    )
    session = await conn.new_session(cwd=str(work), mcp_servers=[])
    return context, conn, session


async def set_model(conn, session, model):
    await conn.set_config_option(config_id="model", session_id=session.session_id, value=model)


async def test_initialize_new_session_and_a_streamed_answer(env, tmp_path):
    editor = Editor()
    context = spawn_agent_process(
        lambda agent: editor, sys.executable, "-m", "helexa", "--role", "acp", env=env
    )
    conn, _ = await context.__aenter__()
    try:
        hello = await conn.initialize(protocol_version=1)
        capabilities = hello.agent_capabilities
        assert capabilities.load_session and capabilities.prompt_capabilities.image
        assert capabilities.session_capabilities.list is not None
        session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        assert session.session_id.startswith("hxa-")
        models = next(o for o in session.config_options if o.id == "model")
        assert "echo/reader" in [o.value for o in models.options]
        answer = await conn.prompt(session_id=session.session_id, prompt=[text_block("hi")])
        assert answer.stop_reason == "end_turn"
        chunks = [u for u in editor.updates if u.session_update == "agent_message_chunk"]
        assert len(chunks) > 3  # streamed as produced, not in one piece
        assert editor.text() == "Hello from the fleet."
        assert "new session" in (tmp_path / "acp.log").read_text()  # logs go to the file, not stdout
    finally:
        await context.__aexit__(None, None, None)


async def test_a_tool_call_reads_the_editors_buffer_and_the_answer_quotes_it(env, tmp_path):
    work = tmp_path / "project"
    work.mkdir()
    (work / "notes.txt").write_text("on disk, stale")
    editor = Editor(buffers={str(work / "notes.txt"): "unsaved buffer text"})
    context, conn, session = await start(editor, env, work)
    try:
        await set_model(conn, session, "echo/reader")
        answer = await conn.prompt(
            session_id=session.session_id, prompt=[text_block("what do the notes say?")]
        )
        assert answer.stop_reason == "end_turn"
        assert editor.text() == "The notes say: unsaved buffer text"
        assert editor.tool_statuses() == ["pending", "in_progress", "completed"]
        assert editor.asked == []  # reading needs no permission
    finally:
        await context.__aexit__(None, None, None)


@pytest.mark.parametrize(("permission", "written"), [("allow_once", True), ("reject", False)])
async def test_writes_in_default_mode_ask_permission(env, tmp_path, permission, written):
    work = tmp_path / "project"
    work.mkdir()
    editor = Editor(permission=permission)
    context, conn, session = await start(editor, env, work)
    try:
        await set_model(conn, session, "echo/writer")
        await conn.prompt(session_id=session.session_id, prompt=[text_block("write it")])
        assert len(editor.asked) == 1 and editor.asked[0].title.startswith("write_file out.txt")
        assert (work / "out.txt").exists() is written
        if written:
            assert (work / "out.txt").read_text() == "written by the agent"
            assert editor.tool_statuses()[-1] == "completed"
        else:
            assert "rejected" in editor.text()
            assert editor.tool_statuses()[-1] == "failed"
    finally:
        await context.__aexit__(None, None, None)


async def test_plan_mode_refuses_bash(env, tmp_path):
    editor = Editor()
    context, conn, session = await start(editor, env, tmp_path)
    try:
        await conn.set_session_mode(session_id=session.session_id, mode_id="plan")
        await set_model(conn, session, "echo/bash")
        await conn.prompt(session_id=session.session_id, prompt=[text_block("run it")])
        assert editor.asked == []
        assert "bash is disabled in plan mode" in editor.text()
        assert editor.tool_statuses()[-1] == "failed"
    finally:
        await context.__aexit__(None, None, None)


async def test_cancel_stops_the_stream_at_once(env, tmp_path):
    editor = Editor()
    context, conn, session = await start(editor, env, tmp_path)
    try:
        await set_model(conn, session, "echo/slow")
        turn = asyncio.create_task(conn.prompt(session_id=session.session_id, prompt=[text_block("talk")]))
        while len(editor.text()) < 20:
            await asyncio.sleep(0.02)
        cancelled_at = time.monotonic()
        await conn.cancel(session_id=session.session_id)
        answer = await asyncio.wait_for(turn, 5)
        assert answer.stop_reason == "cancelled"
        assert time.monotonic() - cancelled_at < 1.0
        seen = len(editor.text())
        await asyncio.sleep(0.3)
        assert len(editor.text()) == seen  # nothing more arrives
    finally:
        await context.__aexit__(None, None, None)


async def test_sessions_survive_a_restart_and_load_replays_them(env, tmp_path):
    editor = Editor()
    context, conn, session = await start(editor, env, tmp_path)
    try:
        await conn.prompt(session_id=session.session_id, prompt=[text_block("remember me")])
    finally:
        await context.__aexit__(None, None, None)
    again = Editor()
    context = spawn_agent_process(
        lambda agent: again, sys.executable, "-m", "helexa", "--role", "acp", env=env
    )
    conn, _ = await context.__aenter__()
    try:
        await conn.initialize(protocol_version=1)
        listed = await conn.list_sessions(cwd=str(tmp_path))
        assert [x.session_id for x in listed.sessions] == [session.session_id]
        assert listed.sessions[0].title == "remember me"
        assert (await conn.list_sessions(cwd="/somewhere/else")).sessions == []
        await conn.load_session(cwd=str(tmp_path), session_id=session.session_id, mcp_servers=[])
        kinds = [u.session_update for u in again.updates]
        assert kinds == ["user_message_chunk", "agent_message_chunk"]
        assert again.updates[0].content.text == "remember me"
        assert again.text() == "Hello from the fleet."
    finally:
        await context.__aexit__(None, None, None)


async def test_an_unreachable_endpoint_is_reported_and_the_agent_keeps_running(env, tmp_path):
    editor = Editor()
    broken = {**env, "HELEXA_ACP_BASE_URL": "http://127.0.0.1:9/v1"}
    context, conn, session = await start(editor, broken, tmp_path)
    try:
        answer = await conn.prompt(session_id=session.session_id, prompt=[text_block("anyone?")])
        assert answer.stop_reason == "end_turn"
        assert "is unreachable" in editor.text()
        again = await conn.prompt(session_id=session.session_id, prompt=[text_block("still there?")])
        assert again.stop_reason == "end_turn"
    finally:
        await context.__aexit__(None, None, None)


async def test_an_unknown_model_is_reported(env, tmp_path):
    editor = Editor()
    context, conn, session = await start(editor, env, tmp_path)
    try:
        await set_model(conn, session, "nobody/has-this")
        await conn.prompt(session_id=session.session_id, prompt=[text_block("hi")])
        assert "nobody/has-this" in editor.text() and "404" in editor.text()
    finally:
        await context.__aexit__(None, None, None)


def test_compaction_keeps_users_and_recent_messages_and_shortens_old_tool_output():
    messages = [{"role": "user", "content": "start"}]
    for i in range(10):
        messages += [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": f"c{i}", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": f"c{i}", "content": "x" * 3000},
            {"role": "user", "content": f"question {i}"},
        ]
    budget = 3000
    assert estimate_tokens(messages) > budget
    fitted, changed = compact(messages, budget)
    assert estimate_tokens(fitted) <= budget
    assert changed > 0
    assert [m["content"] for m in fitted if m["role"] == "user"] == [
        m["content"] for m in messages if m["role"] == "user"
    ]
    assert fitted[-4:] == messages[-4:]
    assert fitted[2]["content"].startswith("[elided")
    assert json.dumps(fitted).count("tool_call_id") == 10  # every tool result is still there, shortened


def test_compaction_happens_in_a_long_session(env, tmp_path):
    async def run():
        editor = Editor()
        small = {
            **env,
            "HELEXA_ACP_CONTEXT_WINDOW": "1200",
            "HELEXA_ACP_MAX_TOKENS": "100",
            "HELEXA_ACP_MODEL": "echo/reader",
        }
        (tmp_path / "notes.txt").write_text("n" * 2500)
        context, conn, session = await start(editor, small, tmp_path)
        try:
            for _ in range(3):
                await conn.prompt(session_id=session.session_id, prompt=[text_block("read the notes")])
        finally:
            await context.__aexit__(None, None, None)
        saved = json.loads(
            (tmp_path / "data" / "helexa-acp" / "sessions" / f"{session.session_id}.json").read_text()
        )
        return saved["messages"]

    messages = asyncio.run(run())
    assert any(str(m.get("content", "")).startswith("[elided") for m in messages)
    assert "compacted" in (tmp_path / "acp.log").read_text()
