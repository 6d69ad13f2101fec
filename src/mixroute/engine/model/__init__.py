"""Model code: HF-directory loader, the Llama-family network, the packaged SmolLM2."""
