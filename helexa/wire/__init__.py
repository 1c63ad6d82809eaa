"""msgspec Structs for everything that crosses HTTP. No logic lives here.

`openai`, `anthropic` and `fleet` (the gateway <-> neuron control plane). The two
error envelopes are built by `helexa.errors.ApiError`. Field names follow the public APIs and the original
system's fleet protocol exactly, so operators and clients feel at home.
"""
