"""Model presets, their weight files, and loading them (once per process) from the real formats.

A preset names a VQGAN (taming config + Lightning `.ckpt`) and a CLIP (state dict or TorchScript
archive as OpenAI ships it). The VQGAN is assembled here from taming's pure-torch Encoder/Decoder and
a codebook, because `taming.models.vqgan` imports `taming.main`, which breaks on pytorch-lightning 2.x.
Nothing is loaded at import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import pickle
import threading
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.model_facts import MODEL_NOTES
from shared.params import InitKind

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_SEED = 1234
# What torch.load raises for refused globals, truncated or corrupt files.
_LOAD_ERRORS = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    OSError,
    AttributeError,
    TypeError,
)
_VQGAN_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.weight")


class ModelsMissing(Exception):
    """A preset's weight files are not on disk; the message says how to get them."""


class ChecksumMismatch(Exception):
    """A weight file's SHA-256 differs from the one expected."""


class ModelLoadError(Exception):
    """A weight file exists but cannot be read as the preset's format."""


class UnknownModel(ValueError):
    """No preset has this name."""


# ------------------------------------------------------------------------------------------------
# Presets
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFile:
    """One file of a preset, stored as models_dir/<preset>/<filename> (or in the preset's bundled_dir)."""

    filename: str
    url: str | None = None  # None: shipped with the code, nothing to download
    # None: the publisher pins no hash; `pull` records the SHA-256 it downloaded in <filename>.sha256
    # and every later load checks against that record.
    sha256: str | None = None


@dataclass(frozen=True)
class VqganSpec:
    config: Mapping[str, Any]  # {"embed_dim", "n_embed", "ddconfig": taming's Encoder/Decoder kwargs}
    checkpoint: WeightFile | None = None  # Lightning .ckpt, plain state dict, or .safetensors
    config_file: WeightFile | None = None  # taming's yaml; when present it overrides `config`


@dataclass(frozen=True)
class ClipSpec:
    variant: str  # OpenAI's name, e.g. "ViT-B/32"
    config: Mapping[str, Any]  # clip.model.CLIP(...) keyword arguments
    checkpoint: WeightFile | None = None  # state dict, TorchScript archive, or .safetensors


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    vqgan: VqganSpec
    clip: ClipSpec
    random_seed: int | None = None  # set: random weights from this seed, no files (the `tiny` preset)
    bundled_dir: Path | None = None  # set: files ship in this folder of the package, not in models_dir
    # How a painting without an init image starts when its job does not say (GenerationConfig.init):
    # random codebook entries, as the notebook does, or VQGAN-encoded pixel noise (shared.params.INITS).
    noise_init: InitKind = "codes"

    @property
    def note(self) -> str | None:
        """Shown wherever the model is used; the table in shared.model_facts holds it."""
        return MODEL_NOTES.get(self.name)

    def files(self) -> list[WeightFile]:
        return [
            f for f in (self.vqgan.config_file, self.vqgan.checkpoint, self.clip.checkpoint) if f is not None
        ]

    def weights_dir(self, models_dir: Path) -> Path:
        return self.bundled_dir if self.bundled_dir is not None else Path(models_dir) / self.name


def _ddconfig(
    ch: int, z_channels: int, ch_mult: list[int], num_res_blocks: int, attn: list[int], res: int
) -> dict:
    return {
        "double_z": False, "z_channels": z_channels, "resolution": res, "in_channels": 3, "out_ch": 3,
        "ch": ch, "ch_mult": ch_mult, "num_res_blocks": num_res_blocks, "attn_resolutions": attn,
        "dropout": 0.0,
    }  # fmt: skip


def _clip_config(
    embed_dim: int, image: int, v_layers: int, v_width: int, patch: int, width: int, layers: int
) -> dict:
    # heads = width // 64, as clip.model.build_model infers them, so a saved state dict rebuilds identically.
    return {
        "embed_dim": embed_dim, "image_resolution": image, "vision_layers": v_layers, "vision_width": v_width,
        "vision_patch_size": patch, "context_length": 77, "vocab_size": 49408, "transformer_width": width,
        "transformer_heads": max(1, width // 64), "transformer_layers": layers,
    }  # fmt: skip


_F16_16384 = {
    "embed_dim": 256,
    "n_embed": 16384,
    "ddconfig": _ddconfig(128, 256, [1, 1, 2, 2, 4], 2, [16], 256),
}
_VIT_B32 = ClipSpec(
    variant="ViT-B/32",
    config=_clip_config(512, 224, 12, 768, 32, 512, 12),
    checkpoint=WeightFile(
        "ViT-B-32.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        # OpenAI publishes the SHA-256 as the URL's directory; the clip package checks the same value.
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    ),
)
_HEIBOX = "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?dl=1&p="

PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset, *, replace: bool = False) -> Preset:
    """Add a preset (e.g. `toyworld` from its own module); refuses to shadow one silently."""
    if preset.name in PRESETS and not replace:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


register_preset(
    Preset(
        name="imagenet-16384",
        description="VQGAN ImageNet f16 16384 codes + CLIP ViT-B/32 (the production default)",
        vqgan=VqganSpec(
            config=_F16_16384,
            checkpoint=WeightFile("vqgan_imagenet_f16_16384.ckpt", _HEIBOX + "%2Fckpts%2Flast.ckpt"),
            config_file=WeightFile("vqgan_imagenet_f16_16384.yaml", _HEIBOX + "%2Fconfigs%2Fmodel.yaml"),
        ),
        clip=_VIT_B32,
    )
)
register_preset(
    Preset(
        name="wikiart-16384",
        description="VQGAN WikiArt f16 16384 codes + CLIP ViT-B/32 (the original API's choice)",
        vqgan=VqganSpec(
            config=_F16_16384,
            checkpoint=WeightFile(
                "wikiart_f16_16384.ckpt",
                "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
            ),
            config_file=WeightFile(
                "wikiart_f16_16384.yaml",
                "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
            ),
        ),
        clip=_VIT_B32,
    )
)
register_preset(
    Preset(
        name="tiny",
        description="small random networks from a fixed seed: fast tests and CI, no files",
        vqgan=VqganSpec(
            config={
                "embed_dim": 32,
                "n_embed": 512,
                "ddconfig": _ddconfig(32, 32, [1, 1, 2, 2, 4], 1, [], 64),
            }
        ),
        clip=ClipSpec(variant="tiny-vit", config=_clip_config(64, 64, 2, 64, 16, 64, 2)),
        random_seed=TINY_SEED,
    )
)


def _toyworld_preset() -> Preset:
    from worker.toyworld import spec  # plain data (configs, file names, pinned SHA-256s): no torch work

    return Preset(
        name="toyworld",
        description="small VQGAN + CLIP trained on a world of shapes and colours; the files ship in the repo",
        vqgan=VqganSpec(
            config=spec.VQGAN_CONFIG, checkpoint=WeightFile(spec.VQGAN_FILE, sha256=spec.VQGAN_SHA256)
        ),
        clip=ClipSpec(
            variant="toyworld-vit",
            config=spec.CLIP_CONFIG,
            checkpoint=WeightFile(spec.CLIP_FILE, sha256=spec.CLIP_SHA256),
        ),
        bundled_dir=spec.WEIGHTS_DIR,
        # Its CLIP is fade-tuned for a grey start; from random codes the white circle came out as blobs at
        # the edges (MODELS.md).
        noise_init="pixels",
    )


register_preset(_toyworld_preset())


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; presets: {', '.join(sorted(PRESETS))}") from None


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------


class Codebook(nn.Module):
    """Taming's codebook, named so that `quantize.embedding.weight` loads straight in."""

    def __init__(self, n_embed: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)


class VQGAN(nn.Module):
    """Taming's VQModel minus training parts: encoder, quant_conv, codebook, post_quant_conv, decoder."""

    def __init__(self, ddconfig: Mapping[str, Any], n_embed: int, embed_dim: int) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder

        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = Codebook(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)  # pixels per latent cell, each side

    @property
    def codebook(self) -> torch.Tensor:
        return self.quantize.embedding.weight  # (n_embed, embed_dim)


def build_vqgan(config: Mapping[str, Any]) -> VQGAN:
    # taming's Decoder prints its latent shape; keep stdout clean for the CLI's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        return VQGAN(dict(config["ddconfig"]), int(config["n_embed"]), int(config["embed_dim"]))


def import_clip() -> Any:
    """The `clip` package, without its pkg_resources deprecation warning on every CLI run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import clip
        import clip.model

    return clip


def build_clip(config: Mapping[str, Any]) -> nn.Module:
    return import_clip().model.CLIP(**config)


class Normalize(nn.Module):
    """CLIP's input normalisation for (N, 3, S, S) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass
class LoadedModels:
    """A preset's networks on a device, frozen (no parameter gradients), ready for any number of Painters."""

    name: str
    device: torch.device
    vqgan: VQGAN  # .encoder .decoder .quant_conv .post_quant_conv .codebook .factor
    clip: nn.Module  # clip.model.CLIP: encode_image, encode_text, context_length
    clip_size: int  # CLIP's input side in pixels
    normalize: Callable[[torch.Tensor], torch.Tensor]
    preset: Preset | None = field(default=None, repr=False)

    @property
    def note(self) -> str | None:
        return self.preset.note if self.preset else None


def _finish(name: str, vqgan: VQGAN, clip_model: nn.Module, device: torch.device) -> LoadedModels:
    # float32 throughout: byte-identical results on CPU, and no fp16 ops CPUs lack.
    vqgan = vqgan.float().eval().requires_grad_(False).to(device)
    clip_model = clip_model.float().eval().requires_grad_(False).to(device)
    return LoadedModels(
        name=name,
        device=device,
        vqgan=vqgan,
        clip=clip_model,
        clip_size=int(clip_model.visual.input_resolution),
        normalize=Normalize().to(device),
        preset=PRESETS.get(name),
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda when available else cpu; "cuda" without CUDA is an error, never a silent cpu."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else f"torch {torch.__version__} finds no GPU (no driver or device, or CUDA_VISIBLE_DEVICES)"
            )
            raise RuntimeError(
                f"device {device!r} requested but CUDA is not available here: {why}; "
                "use --device cpu or auto (ARTGEN_DEVICE)"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")


def build_random(name: str, device: str | torch.device = "cpu", seed: int = 0) -> LoadedModels:
    """The preset's real architecture with random weights from `seed` (same FLOPs; benchmarks, tests)."""
    preset = get_preset(name)
    # Module init draws from the global RNG; fork it so callers' random streams are left alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vqgan = build_vqgan(preset.vqgan.config)
        clip_model = build_clip(preset.clip.config)
    return _finish(name, vqgan, clip_model, resolve_device(device))


# ------------------------------------------------------------------------------------------------
# Files: presence, checksums, reading the real formats
# ------------------------------------------------------------------------------------------------


# Presets tried, best first, when no model is configured (`artgen up`, `artgen generate`).
_DEFAULT_PREFERENCE = ("imagenet-16384", "toyworld", "tiny")


def default_model(configured: str | None, models_dir: Path) -> str:
    """The configured model, else the best preset whose weights are here (`tiny` needs none)."""
    if configured:
        return configured
    for name in _DEFAULT_PREFERENCE:
        if name in PRESETS and weights_present(name, models_dir):
            return name
    raise ModelsMissing("no usable model preset; run `artgen models pull imagenet-16384`")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _recorded_sha(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _expected_sha(spec: WeightFile, path: Path) -> str | None:
    if spec.sha256:
        return spec.sha256.lower()
    record = _recorded_sha(path)
    return record.read_text().split()[0].lower() if record.exists() else None


def verify_file(spec: WeightFile, path: Path) -> bool:
    """True: matches its pinned (or recorded) SHA-256; False: no hash known. Raises on mismatch."""
    expected = _expected_sha(spec, path)
    if expected is None:
        return False
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"{path} has SHA-256 {actual}, expected {expected}: corrupt or not the published file; "
            f"delete it and run `artgen models pull`"
        )
    return True


def weights_present(name: str, models_dir: Path) -> bool:
    """Whether every file the preset needs is on disk (presence only; loading verifies checksums)."""
    preset = get_preset(name)
    folder = preset.weights_dir(models_dir)
    return all((folder / f.filename).is_file() for f in preset.files())


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _torch_load(path: Path, verified: bool) -> Any:
    """torch.load with weights_only=True first. Lightning checkpoints may pickle trainer objects that the
    safe loader refuses; only for a file whose SHA-256 matched the published (or pull-recorded) value do
    we then allow full unpickling, because unpickling can run code. Never for unverified files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as safe_error:
        if not verified:
            raise ModelLoadError(
                f"{path} cannot be read with torch.load(weights_only=True) ({type(safe_error).__name__}: "
                f"{_first_line(safe_error)}) and its checksum is not verified, so it is not unpickled"
            ) from safe_error
        log.warning("%s holds non-tensor objects; unpickling it fully because its SHA-256 is verified", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except _LOAD_ERRORS as error:
            raise ModelLoadError(f"{path} is not a readable checkpoint: {error}") from error


def _read_state_dict(path: Path, verified: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded = _torch_load(path, verified)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # a Lightning checkpoint
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def read_vqgan_yaml(path: Path) -> dict[str, Any]:
    """embed_dim, n_embed and ddconfig from a taming config (model.params.*)."""
    from omegaconf import OmegaConf

    try:
        params = OmegaConf.to_container(OmegaConf.load(path), resolve=True)["model"]["params"]
        return {
            "embed_dim": params["embed_dim"],
            "n_embed": params["n_embed"],
            "ddconfig": params["ddconfig"],
        }
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(
            f"{path} is not a taming VQGAN config (model.params.ddconfig): {error}"
        ) from error


def load_vqgan(config: Mapping[str, Any], path: Path, verified: bool = False) -> VQGAN:
    """A VQGAN from a Lightning .ckpt / state dict / safetensors; loss.* and trainer state are ignored."""
    state = _read_state_dict(path, verified)
    kept = {k: v for k, v in state.items() if k.startswith(_VQGAN_PREFIXES)}
    ignored = sorted({k.split(".")[0] for k in state if k not in kept})
    if ignored:
        log.debug("%s: ignoring %s", path, ", ".join(ignored))
    with torch.random.fork_rng(devices=[]):  # init is overwritten; don't consume the caller's RNG
        model = build_vqgan(config)
    try:
        model.load_state_dict(kept, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(f"{path} does not fit the VQGAN config: {str(error).splitlines()[0]}") from error
    return model


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def clip_from_state(state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A float32 CLIP with exactly these weights, its architecture inferred from the state dict."""
    clip = import_clip()
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    with torch.random.fork_rng(devices=[]):  # building draws random initial weights
        # build_model infers the architecture but rounds weights through fp16; reload them exactly.
        model = clip.model.build_model(dict(state)).float()
    model.load_state_dict(state)
    return model


def load_clip(path: Path, verified: bool = False, expected: Mapping[str, Any] | None = None) -> nn.Module:
    """CLIP from a TorchScript archive (as OpenAI ships it), a state dict, or safetensors."""
    if _is_torchscript(path):
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()  # no pickle: TorchScript
        except RuntimeError as error:
            raise ModelLoadError(f"{path} is not a readable TorchScript archive: {error}") from error
    else:
        state = _read_state_dict(path, verified)
    try:
        model = clip_from_state(state)
    except (KeyError, RuntimeError, AttributeError) as error:
        raise ModelLoadError(f"{path} is not a CLIP checkpoint: {error}") from error
    if expected is not None:
        got = (model.visual.input_resolution, model.text_projection.shape[1], model.context_length)
        want = (expected["image_resolution"], expected["embed_dim"], expected["context_length"])
        if got != want:
            raise ModelLoadError(
                f"{path} is a CLIP with (input, embed, context) {got}, the preset expects {want}"
            )
    return model


def load_models(name: str, models_dir: Path, device: str | torch.device = "auto") -> LoadedModels:
    """Load a preset from disk (verifying checksums); random presets are built from their seed."""
    preset = get_preset(name)
    torch_device = resolve_device(device)
    if preset.random_seed is not None:
        return build_random(name, torch_device, seed=preset.random_seed)
    folder = preset.weights_dir(models_dir)
    missing = [f.filename for f in preset.files() if not (folder / f.filename).is_file()]
    if missing:
        how = (
            f"run `artgen models pull {name}`"
            if preset.bundled_dir is None
            else "they ship with the package: reinstall it"
        )
        raise ModelsMissing(
            f"weights for model {name!r} are missing in {folder} ({', '.join(missing)}): {how}"
        )
    verified = {f.filename: verify_file(f, folder / f.filename) for f in preset.files()}

    vq = preset.vqgan
    config = read_vqgan_yaml(folder / vq.config_file.filename) if vq.config_file else vq.config
    assert vq.checkpoint is not None and preset.clip.checkpoint is not None  # a file preset names both
    vqgan = load_vqgan(config, folder / vq.checkpoint.filename, verified[vq.checkpoint.filename])
    clip_model = load_clip(
        folder / preset.clip.checkpoint.filename,
        verified[preset.clip.checkpoint.filename],
        preset.clip.config,
    )
    log.info("loaded model %s on %s", name, torch_device)
    return _finish(name, vqgan, clip_model, torch_device)


_CACHE: dict[tuple[str, str, str], LoadedModels] = {}
_CACHE_LOCK = threading.Lock()


def get_models(name: str, models_dir: Path, device: str | torch.device = "auto") -> LoadedModels:
    """Load once per process and keep warm: later calls with the same arguments return the same object."""
    key = (name, str(Path(models_dir).expanduser().resolve()), str(resolve_device(device)))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_models(name, models_dir, device)
        return _CACHE[key]


# ------------------------------------------------------------------------------------------------
# Downloading
# ------------------------------------------------------------------------------------------------


def _download(url: str, dest: Path, expected: str | None, progress: bool) -> None:
    """Download to dest.part (resuming with an HTTP Range request), check SHA-256, then move into place."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "artgen", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:  # 416 with a partial file: it is already complete
            raise
        response = None
    if response is not None:
        with response:
            if offset and response.status != 206:
                log.info("%s: server ignored the range request; starting over", url)
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            from tqdm import tqdm

            with (
                open(part, "ab" if offset else "wb") as out,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    actual = sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise ChecksumMismatch(
            f"{url} downloaded with SHA-256 {actual}, expected {expected}; the file was deleted"
        )
    part.replace(dest)
    if expected is None:
        _recorded_sha(dest).write_text(f"{actual}  {dest.name}\n")
        log.warning("%s: no published checksum; recorded SHA-256 %s for later loads", dest.name, actual)


def pull(name: str, models_dir: Path, progress: bool = True) -> list[Path]:
    """Download a preset's files into models_dir/<name>/ (resumable, SHA-256 checked); returns the paths."""
    preset = get_preset(name)
    if preset.random_seed is not None or preset.bundled_dir is not None:
        return []  # nothing to download: built from a seed, or shipped with the package
    folder = preset.weights_dir(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in preset.files():
        dest = folder / spec.filename
        if dest.is_file():
            try:
                verify_file(spec, dest)
                paths.append(dest)
                continue
            except ChecksumMismatch as error:
                log.warning("%s; downloading it again", error)
                dest.unlink()
        if spec.url is None:
            raise ModelsMissing(f"{dest} is missing and has no download address")
        _download(spec.url, dest, spec.sha256.lower() if spec.sha256 else None, progress)
        paths.append(dest)
    return paths
