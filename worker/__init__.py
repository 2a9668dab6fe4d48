"""The torch side of artgen: model presets and loading, the VQGAN+CLIP engine, the worker's CLI."""
