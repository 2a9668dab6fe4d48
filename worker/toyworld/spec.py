"""The `toyworld` models' architectures, file names and pinned SHA-256s (plain data: no torch import).

`python -m toyworld.train` (the top-level training folder, not installed) trains exactly these
architectures and writes the two files below plus `manifest.json` (the same configs, hashes and the
evaluation figures) into an output folder; the shipped files live beside this module and their hashes
are pinned here, as the real presets pin theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent
VQGAN_FILE = "toyworld_vqgan.safetensors"
CLIP_FILE = "toyworld_clip.safetensors"
MANIFEST_FILE = "manifest.json"

# f = 2 ** (len(ch_mult) - 1) = 8: a 64x64 picture is an 8x8 grid of codes. ch 64, not 32: taming's
# GroupNorm has 32 groups, and with one channel per group the decoder's last norm erases every
# flat colour (a plain red picture normalises to zero); two per group keep it. No attention but the
# mid block's own.
VQGAN_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "n_embed": 512,
    "ddconfig": {
        "double_z": False, "z_channels": 32, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 64,
        "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
    },
}  # fmt: skip

# clip.model.CLIP keyword arguments. Heads are width // 64, as clip.model.build_model infers them.
# context_length and vocab_size are CLIP's own so that clip.tokenize works unchanged; the text width
# is 64 because the 49408-row token embedding is most of the file.
CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64, "image_resolution": 64, "vision_layers": 4, "vision_width": 128, "vision_patch_size": 8,
    "context_length": 77, "vocab_size": 49408, "transformer_width": 64, "transformer_heads": 1,
    "transformer_layers": 4,
}  # fmt: skip

# Pinned hashes of the shipped files (the training command prints them and writes manifest.json).
VQGAN_SHA256 = "1131fd9a9560b7c658ae33584550f1ebb14bc1ccc56dbdcf510e977744b440ef"
CLIP_SHA256 = "8d1dc676df703620c28103ce6dd37ecd29ab60f3f1286d9e72ed8db6ae31311e"
