"""Special tokens that carry meaning (tool and think markers) reach the parsers; the rest stay hidden."""

from __future__ import annotations

import copy

from harness_helpers import tiny_tokenizer

from helexa.neuron.toolformats import ToolFormats
from helexa_torch.text import Detokenizer, hidden_specials


def test_tool_markers_survive_detokenization_and_eos_does_not():
    tokenizer = copy.deepcopy(tiny_tokenizer())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|python_tag|>", "[TOOL_CALLS]"]})
    hidden = hidden_specials(tokenizer, ToolFormats().markers())
    tag, calls, eos = (
        tokenizer.convert_tokens_to_ids(t) for t in ("<|python_tag|>", "[TOOL_CALLS]", "<|eos|>")
    )
    assert tag not in hidden and calls not in hidden and eos in hidden
    body = tokenizer('{"name": "f"}', add_special_tokens=False)["input_ids"]
    ids = [tag, *body, eos]
    text = "".join(Detokenizer(tokenizer, [], hidden).add([i], final=i == eos) for i in ids)
    assert text == '<|python_tag|>{"name": "f"}'
    # Without the marker list (the old behaviour), the tag would be lost and the call with it.
    skipped = "".join(Detokenizer(tokenizer, []).add([i], final=i == eos) for i in ids)
    assert "<|python_tag|>" not in skipped
