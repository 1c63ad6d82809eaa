"""The gateway role: the fleet's one OpenAI + Anthropic API.

It routes by model, loads models lazily where they fit, evicts to make room,
streams without buffering and meters every request. It never imports torch or
transformers (a test checks `sys.modules`).
"""
