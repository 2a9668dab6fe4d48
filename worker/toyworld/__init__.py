"""The `toyworld` preset's shipped files: spec.py (architectures, file names, pinned SHA-256s), the two
safetensors files and manifest.json. The training code that made them is the top-level `toyworld/`
folder (`python -m toyworld.train`), which is not installed.
"""
