"""Anthropic Messages <-> OpenAI chat completions: pure functions and one streaming state machine.

`request` maps a Messages request to a chat completions request (and back, for
round-trip checks), `response` maps a finished chat completion to a Message, and
`stream` turns a chat completion chunk stream into Anthropic's event sequence.
No I/O happens here.
"""
