"""Structured output: grammars compiled once per constraint (`compiler`), one matcher per constrained engine
request advancing with each accepted token (`manager`), and the OpenAI-facing constraint builders (`specs`).
The token masks they produce are applied in the batched sampler (yaie.sampling.allowed_tokens)."""
