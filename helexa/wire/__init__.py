"""msgspec Structs for everything that crosses HTTP. No logic lives here.

`openai`, `anthropic`, `fleet` (gateway <-> neuron control plane) and `errors`
(the two error envelopes). Field names follow the public APIs and the original
system's fleet protocol exactly, so operators and clients feel at home.
"""
