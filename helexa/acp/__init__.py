"""The acp role: an Agent Client Protocol agent for editors (Zed and others), backed by the fleet.

The editor starts ``helexa --role acp`` and speaks JSON-RPC over its stdin and stdout.
`settings` finds the model endpoints, `providers` streams from them (OpenAI chat or
Anthropic messages), `tools` reads, writes and runs things in the session's folder,
`sessions` keeps and compacts conversations, `agent` ties them to the protocol.
"""
