"""Image input for Qwen3.5 vision checkpoints, and hybrid models under concurrent load, as a user meets
them: tiny random checkpoints saved to a folder, served by a torch neuron behind a gateway, asked with
the real openai and anthropic SDKs, and compared with transformers' greedy tokens."""

from __future__ import annotations

import asyncio
import base64
import io
import queue
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest
import torch
from fleet import running_fleet
from harness_helpers import load_folder, make_harness
from test_architectures import hf_greedy
from test_hybrid import SMALL, save_hybrid
from transformers import AutoTokenizer, Qwen3_5TextConfig
from vision_helpers import (
    MERGE,
    data_url,
    png,
    reference_greedy,
    save_vision_checkpoint,
    vision_config,
    vision_tokenizer,
)

from helexa.neuron.harness import ChatPrompt, SamplingParams
from helexa_torch.engine.engine import Engine
from helexa_torch.engine.hybrid_blocks import HybridBlockManager
from helexa_torch.engine.runner import ModelRunner
from helexa_torch.engine.scheduler import Plan
from helexa_torch.engine.sequence import Sequence
from helexa_torch.engine.state_cache import StateBudget
from helexa_torch.models.vision import MultimodalRotary, prompt_positions

OPTIONS = dict(kv_cache_mb=4, block_size=4, max_batched_tokens=16)  # images prefill across chunks
SYSTEM = "The weather is nice today. Paris is a city in France. Numbers: one two three four five."
QUESTION = "What is the capital of France?"
PICTURES = {"wide": png(128, 64, 1), "square": png(96, 96, 2)}
"""Two pictures: 8x4 and 6x6 patches, so 8 and 9 image tokens of different 3D layouts."""
REMOTE, BROKEN = "https://pictures.test/a.png", "data:image/png;base64,AAAA"


def messages(image: bytes, openai_style: bool) -> list[dict]:
    part = {"type": "image_url", "image_url": {"url": data_url(image)}} if openai_style else {"type": "image"}
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": [part, {"type": "text", "text": QUESTION}]},
    ]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A gateway in front of a torch neuron that serves the vision model and a text-only hybrid."""
    root = tmp_path_factory.mktemp("vision")
    vl = save_vision_checkpoint(root / "vl")
    text = save_hybrid(root / "text", Qwen3_5TextConfig(**SMALL))
    section = {"default_harness": "torch", "model_roots": [str(root)], "memory_mb": 4096}
    entries = [
        {
            "id": f"tiny/{name}",
            "harness": "torch",
            "vram_mb": 64,
            "options": {"path": str(root / name), **OPTIONS},
        }
        for name in ("vl", "text")
    ]
    with running_fleet({"n": {"neuron": section}}, {"models": entries}) as running:
        yield running, vl, text, root


def openai_client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)


def expected_text(vl, image: bytes, n: int) -> str:
    model, tok, processor = vl
    tokens = reference_greedy(model, tok, processor, messages(image, openai_style=False), [image], n)
    assert len(tokens) >= 4, "the reference answer should be long enough to tell answers apart"
    return tok.decode(tokens, skip_special_tokens=True)


@pytest.mark.slow
def test_images_through_openai_and_anthropic_answer_as_transformers(fleet):
    running, vl, _, _ = fleet
    expected = {name: expected_text(vl, image, 16) for name, image in PICTURES.items()}
    assert expected["wide"] != expected["square"]  # the answer depends on the picture
    client = openai_client(running.url)
    for name, image in PICTURES.items():  # the second shares the first's text: no cached block may be reused
        answer = client.chat.completions.create(
            model="tiny/vl", messages=messages(image, openai_style=True), max_tokens=16, temperature=0
        )
        assert answer.choices[0].message.content == expected[name], name
    claude = anthropic.Anthropic(base_url=running.url, api_key="x", max_retries=0, timeout=300)
    for name in ("square", "wide"):
        source = {
            "type": "base64",
            "media_type": "image/png",
            "data": base64.b64encode(PICTURES[name]).decode(),
        }
        reply = claude.messages.create(
            model="tiny/vl",
            system=SYSTEM,
            max_tokens=16,
            extra_body={"temperature": 0},  # this SDK's signature has no temperature; the API does
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": source}, {"type": "text", "text": QUESTION}],
                }
            ],
        )
        assert reply.content[0].text == expected[name], name
    listed = {m["id"]: m for m in httpx.get(f"{running.url}/v1/models").json()["data"]}
    assert "vision" in listed["tiny/vl"]["capabilities"]
    assert "vision" not in listed["tiny/text"]["capabilities"]


@pytest.mark.slow
def test_remote_and_broken_images_are_refused_and_the_model_keeps_serving(fleet):
    running, *_ = fleet
    client = openai_client(running.url)
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": REMOTE}}]}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny/vl", messages=remote, max_tokens=4)
    assert "data: URL" in refused.value.message
    assert refused.value.body["param"] == "messages[0].content[0].image_url"
    broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BROKEN}}]}]
    with pytest.raises(openai.BadRequestError) as unreadable:
        client.chat.completions.create(model="tiny/vl", messages=broken, max_tokens=4)
    assert "not a readable image" in unreadable.value.message
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(openai.BadRequestError) as unheard:
        client.chat.completions.create(
            model="tiny/vl", messages=[{"role": "user", "content": [audio]}], max_tokens=4
        )
    assert unheard.value.code == "content_unsupported" and "'input_audio'" in unheard.value.message
    claude = anthropic.Anthropic(base_url=running.url, api_key="x", max_retries=0, timeout=300)
    with pytest.raises(anthropic.BadRequestError) as by_url:
        claude.messages.create(
            model="tiny/vl",
            max_tokens=4,
            messages=[
                {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": REMOTE}}]}
            ],
        )
    assert by_url.value.body["type"] == "error" and "data: URL" in by_url.value.body["error"]["message"]
    answer = client.chat.completions.create(
        model="tiny/vl", messages=messages(PICTURES["wide"], True), max_tokens=2
    )
    assert answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_an_image_to_a_text_only_hybrid_is_refused(fleet):
    running, *_ = fleet
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(running.url).chat.completions.create(
            model="tiny/text", messages=messages(PICTURES["wide"], openai_style=True), max_tokens=4
        )
    assert refused.value.code == "vision_unsupported"
    assert "only reads text" in refused.value.message


@pytest.mark.slow
def test_a_hybrid_serves_concurrent_requests_as_transformers(fleet):
    """Six chat requests at once through the gateway: each gets transformers' greedy tokens for its prompt."""
    running, _, text_model, root = fleet
    tok = AutoTokenizer.from_pretrained(root / "text")
    questions = [f"{QUESTION} {'Paris is a city in France. ' * i}" for i in range(6)]
    chats = [[{"role": "user", "content": q}] for q in questions]
    prompts = [
        tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)["input_ids"] for c in chats
    ]
    expected = [tok.decode(hf_greedy(text_model, p, 12), skip_special_tokens=True) for p in prompts]
    client = openai_client(running.url)

    def ask(chat: list[dict]) -> str:
        answer = client.chat.completions.create(
            model="tiny/text", messages=chat, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(len(chats)) as pool:
        assert list(pool.map(ask, chats)) == expected
    manager = running.neurons["n"][1].manager
    blocks = manager.harness_of(manager.get("tiny/text")).models["tiny/text"].engine.blocks
    assert blocks.free_state_slots == blocks.budget.slots  # every state slot came back


@pytest.fixture(scope="module")
def harness_vl(tmp_path_factory):
    """The vision checkpoint loaded by a torch harness (no server), with transformers' model beside it."""
    root = tmp_path_factory.mktemp("harness-vl")
    model, tok, processor = save_vision_checkpoint(root / "vl")
    harness = make_harness(root)
    load_folder(harness, root / "vl", model_id="vl", **OPTIONS)
    yield model, tok, processor, harness.models["vl"]
    asyncio.run(harness.close())


def render(served, image: bytes):
    return served.images.render(ChatPrompt(messages=messages(image, openai_style=True)))


def counting_tower(model) -> list[int]:
    """Count the vision tower's runs on ``model`` (one entry per run: the images it encoded)."""
    runs: list[int] = []
    encode = model.encode_images

    def counted(pixel_values, grids):
        runs.append(len(grids))
        return encode(pixel_values, grids)

    model.encode_images = counted
    return runs


def test_image_prompt_logits_match_transformers(harness_vl):
    """The prompt's logits in three chunks (the image split between two of them) equal transformers',
    and so do those of tokens after the prompt (answer tokens recomputed after a preemption): their
    positions continue at the prompt's offset."""
    from PIL import Image

    model, _, processor, served = harness_vl
    image = PICTURES["wide"]
    prompt = render(served, image)
    ((start, end, _),) = prompt.media.spans
    assert end - start == (128 // 16) * (64 // 16) // MERGE**2
    pixels = processor(images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")
    answer = [5, 77, 120, 31, 9, 250]
    ids = torch.tensor([prompt.token_ids + answer])
    with torch.no_grad():
        expected = model(
            input_ids=ids,
            pixel_values=pixels["pixel_values"],
            image_grid_thw=pixels["image_grid_thw"],
            mm_token_type_ids=(ids == model.config.image_token_id).int(),
        ).logits[0]
    ours = served.engine.runner.model
    runs = counting_tower(ours)
    blocks = HybridBlockManager(64, 4, StateBudget(slots=1, snapshots=1))
    runner = ModelRunner(ours, 64, 4, torch.float32, torch.device("cpu"), blocks)  # not the engine's
    seq = Sequence("p", ids[0].tolist(), SamplingParams(max_tokens=1), emit=lambda *_: None)
    seq.prompt_len, seq.media = len(prompt.token_ids), prompt.media
    blocks.allocate(seq)
    logits, done = [], 0
    for cut in (start + 3, end + 5, ids.shape[1]):
        plan = Plan(prefill=[(seq, cut - done)])
        with torch.inference_mode():
            ids_t, positions, ctx, _, _ = runner.prepare(plan)
            logits.append(ours.compute_logits(ours(ids_t, positions, ctx, runner.caches)))
        runner.commit(plan)
        seq.num_computed = done = cut
    del ours.encode_images
    assert runs == [1]  # the tower ran once, for the chunk where the image starts
    scale = max(1.0, expected.abs().max().item())
    assert (torch.cat(logits) - expected).abs().max().item() < 1e-4 * scale


def test_preempted_image_prompts_recompute_without_the_tower_and_answer_alike(harness_vl):
    """Three pictures at once in a cache too small for them: preempted sequences recompute from the
    embeddings they kept (their generated tokens at the prompt's position offset), and every answer
    is transformers' greedy answer."""
    model, tok, processor, served = harness_vl
    images = [PICTURES["wide"], PICTURES["square"], png(64, 96, 3)]
    prompts = [render(served, image) for image in images]
    expected = [
        reference_greedy(model, tok, processor, messages(image, False), [image], 16, eos_token_id=None)
        for image in images
    ]
    ours = served.engine.runner.model
    runs = counting_tower(ours)
    engine = Engine(
        "vl",
        lambda: ours,
        num_blocks=36,  # two 65-token prompts fit, their 16 answer tokens do not: one is preempted
        block_size=4,
        dtype=torch.float32,
        device=torch.device("cpu"),
        eos_ids=set(),
        max_model_len=128,
        state_cache=StateBudget(slots=3, snapshots=2),
        max_batched_tokens=16,
    )
    try:
        engine.ready.result(timeout=60)
        done: queue.Queue[str | None] = queue.Queue()
        seqs = [
            Sequence(
                str(i),
                list(p.token_ids),
                SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True),
                emit=lambda tokens, finish, error: done.put(error) if finish or error else None,
                media=p.media,
            )
            for i, p in enumerate(prompts)
        ]
        for seq in seqs:
            engine.submit(seq)
        assert [done.get(timeout=120) for _ in seqs] == [None] * 3
        assert engine.scheduler.preemptions > 0
        assert [seq.output_ids for seq in seqs] == expected
        assert sorted(runs) == [1, 1, 1]  # once per prompt, not again after a preemption
    finally:
        engine.stop()
        del ours.encode_images


def test_image_keys_keep_prefix_blocks_apart(harness_vl):
    """Same text, another picture: blocks with image tokens are keyed by the picture, text is shared."""
    *_, served = harness_vl
    a, b, c = (render(served, image) for image in (PICTURES["wide"], PICTURES["wide"], png(128, 64, 9)))
    assert a.token_ids == c.token_ids  # the same ids: only the picture differs
    first = a.media.spans[0][0]
    seqs = [
        Sequence(str(i), p.token_ids, SamplingParams(max_tokens=1), emit=lambda *_: None, media=p.media)
        for i, p in enumerate((a, b, c))
    ]
    assert seqs[0].block_tokens(0, first) == seqs[2].block_tokens(0, first)
    assert seqs[0].block_tokens(0, len(a.token_ids)) == seqs[1].block_tokens(0, len(a.token_ids))
    assert seqs[0].block_tokens(first, first + 4) != seqs[2].block_tokens(first, first + 4)


def test_multimodal_rotary_turns_as_transformers():
    """Each frequency at its own axis's position (interleaved T H W), partial rotary, as Qwen3.5 does."""
    from transformers.models.qwen3_5 import modeling_qwen3_5 as reference

    config = vision_config(vision_tokenizer()).text_config
    head_dim = config.head_dim
    ours = MultimodalRotary(config, head_dim, 512, torch.device("cpu"))
    positions = torch.randint(0, 500, (3, 11), generator=torch.Generator().manual_seed(0))
    q, k = torch.randn(11, 4, head_dim), torch.randn(11, 2, head_dim)
    cos, sin = reference.Qwen3_5TextRotaryEmbedding(config)(q, positions[:, None, :])
    # transformers' layout is [batch, heads, tokens, dim]; ours is [tokens, heads, dim]
    want_q, want_k = reference.apply_rotary_pos_emb(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin
    )
    got_q, got_k = ours(positions, q, k)
    assert torch.allclose(got_q, want_q[0].transpose(0, 1), atol=1e-5)
    assert torch.allclose(got_k, want_k[0].transpose(0, 1), atol=1e-5)
    same = positions[0]  # text: one position on all three axes is plain rope
    assert torch.allclose(ours(same.expand(3, -1), q, k)[0], ours(same, q, k)[0], atol=1e-6)


def test_prompt_positions_match_transformers_rope_index():
    """Two images of different grids, text around and between them: transformers' 3D positions, delta."""
    from functools import partial
    from types import SimpleNamespace

    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Model

    config = vision_config(vision_tokenizer())
    grids = [(1, 8, 4), (1, 6, 10)]
    counts = [t * h * w // MERGE**2 for t, h, w in grids]
    spans = [(5, 5 + counts[0]), (5 + counts[0] + 3, 5 + counts[0] + 3 + counts[1])]
    length = spans[1][1] + 7
    ids = torch.zeros(1, length, dtype=torch.long)
    for first, end in spans:
        ids[0, first:end] = config.image_token_id
    model = SimpleNamespace(config=config)
    model.get_vision_position_ids = partial(Qwen3_5Model.get_vision_position_ids, model)
    want, want_delta = Qwen3_5Model.get_rope_index(
        model, ids, mm_token_type_ids=(ids == config.image_token_id).int(), image_grid_thw=torch.tensor(grids)
    )
    got, delta = prompt_positions(length, spans, grids, MERGE)
    assert torch.equal(got, want[:, 0]) and delta == int(want_delta)
