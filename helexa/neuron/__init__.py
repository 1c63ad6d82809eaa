"""The neuron role: one per GPU host. Discovers hardware, loads models through harness
plugins, and serves OpenAI chat and completions for what it has loaded."""
