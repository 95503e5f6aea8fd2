"""Pure PyTorch re-ranker: config, transformer, KV cache, tokenizer and prompt format, the AR and
block-diffusion decoders, and the validity guard. Knows nothing of HTTP, checkpoints on disk or training."""
