"""The engine: continuous batching over a paged KV cache, one thread per loaded model.

`sequence` (a request's state), `block_manager` (the paged cache and prefix reuse),
`scheduler` (what runs each step), `runner` (one forward over the whole batch),
`sampler` (next tokens, on the device), `engine` (the step loop and its queues).
"""
