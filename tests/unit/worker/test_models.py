"""Loading real checkpoint formats written by the tests, checksums, the cache, and `pull` over local HTTP."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.factories import (
    SMALL_VQGAN_CONFIG,
    file_preset,
    sha256,
    small_clip,
    small_vqgan,
    write_clip_state_dict,
    write_clip_torchscript,
    write_lightning_ckpt,
    write_vqgan_yaml,
)
from worker import models
from worker.models import (
    PRESETS,
    ChecksumMismatch,
    ModelLoadError,
    ModelsMissing,
    Preset,
    WeightFile,
    build_random,
    get_models,
    load_clip,
    load_models,
    load_vqgan,
    pull,
    resolve_device,
    weights_present,
)


def _register(monkeypatch: pytest.MonkeyPatch, preset: Preset) -> None:
    monkeypatch.setitem(PRESETS, preset.name, preset)


def _same_vqgan(a: torch.nn.Module, b: torch.nn.Module) -> None:
    pixels = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.quant_conv(a.encoder(pixels)), b.quant_conv(b.encoder(pixels)))
        z = torch.randn(1, 8, 16, 16)
        assert torch.equal(a.decoder(a.post_quant_conv(z)), b.decoder(b.post_quant_conv(z)))
    assert torch.equal(a.quantize.embedding.weight, b.quantize.embedding.weight)


def _same_clip(a: torch.nn.Module, b: torch.nn.Module) -> None:
    image, text = torch.rand(2, 3, 32, 32), torch.randint(0, 49408, (2, 77))
    with torch.no_grad():
        assert torch.equal(a.encode_image(image), b.encode_image(image))
        assert torch.equal(a.encode_text(text), b.encode_text(text))


def test_lightning_ckpt_yaml_and_clip_state_dict_round_trip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vqgan, clip_model = small_vqgan(1), small_clip(2)
    write_lightning_ckpt(tmp_path / "vq.ckpt", vqgan)
    write_vqgan_yaml(tmp_path / "vq.yaml")
    write_clip_state_dict(tmp_path / "clip.pt", clip_model)
    _register(monkeypatch, file_preset("t-sd", tmp_path, {"vq.ckpt": None, "clip.pt": None}, yaml="vq.yaml"))

    loaded = load_models("t-sd", tmp_path / "unused", device="cpu")
    _same_vqgan(vqgan, loaded.vqgan)
    _same_clip(clip_model, loaded.clip)
    assert loaded.clip_size == 32 and loaded.vqgan.factor == 2
    assert not any(p.requires_grad for p in loaded.vqgan.parameters())


def test_clip_torchscript_archive_loads_like_openai_ships_it(tmp_path: Path) -> None:
    clip_model = small_clip(3)
    path = write_clip_torchscript(tmp_path / "ViT-tiny.pt", clip_model)
    _same_clip(clip_model, load_clip(path))


def test_clip_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    clip_model = small_clip(4)
    save_file(
        {k: v.contiguous() for k, v in clip_model.state_dict().items()}, str(tmp_path / "clip.safetensors")
    )
    _same_clip(clip_model, load_clip(tmp_path / "clip.safetensors"))


def test_unpicklable_trainer_state_needs_a_verified_checksum(tmp_path: Path) -> None:
    vqgan = small_vqgan(5)
    path = write_lightning_ckpt(tmp_path / "vq.ckpt", vqgan, unpicklable_junk=True)
    with pytest.raises(ModelLoadError, match="not verified"):
        load_vqgan(SMALL_VQGAN_CONFIG, path, verified=False)
    _same_vqgan(vqgan, load_vqgan(SMALL_VQGAN_CONFIG, path, verified=True))


def test_corrupted_file_with_a_pinned_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_lightning_ckpt(tmp_path / "vq.ckpt", small_vqgan(6))
    write_clip_state_dict(tmp_path / "clip.pt", small_clip(6))
    good = {"vq.ckpt": sha256(tmp_path / "vq.ckpt"), "clip.pt": sha256(tmp_path / "clip.pt")}
    _register(monkeypatch, file_preset("t-hash", tmp_path, good))
    load_models("t-hash", tmp_path, device="cpu")  # intact: loads

    data = bytearray((tmp_path / "clip.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "clip.pt").write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match=r"clip\.pt has SHA-256 .* expected"):
        load_models("t-hash", tmp_path, device="cpu")


def test_truncated_file_without_a_hash_is_a_clear_load_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_lightning_ckpt(tmp_path / "vq.ckpt", small_vqgan(7))
    (tmp_path / "vq.ckpt").write_bytes((tmp_path / "vq.ckpt").read_bytes()[:5000])
    write_clip_state_dict(tmp_path / "clip.pt", small_clip(7))
    _register(monkeypatch, file_preset("t-trunc", tmp_path, {"vq.ckpt": None, "clip.pt": None}))
    with pytest.raises(ModelLoadError, match=r"vq\.ckpt"):
        load_models("t-trunc", tmp_path, device="cpu")


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    assert not weights_present("imagenet-16384", tmp_path)
    assert weights_present("tiny", tmp_path)
    with pytest.raises(ModelsMissing, match="artgen models pull imagenet-16384"):
        load_models("imagenet-16384", tmp_path, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error_not_a_fallback() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_tiny_is_deterministic_and_cached(tmp_path: Path) -> None:
    torch.manual_seed(0)
    before = torch.rand(1)
    a, b = build_random("tiny", "cpu", seed=1), build_random("tiny", "cpu", seed=1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), before)  # building did not consume the global RNG
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.vqgan.state_dict().values(), b.vqgan.state_dict().values(), strict=True)
    )
    assert get_models("tiny", tmp_path, "cpu") is get_models("tiny", tmp_path, "cpu")


# --- pull -----------------------------------------------------------------------------------------


class _Server:
    """A local HTTP server with Range support that records the Range headers it was sent."""

    def __init__(self, payload: bytes) -> None:
        self.payload, self.ranges = payload, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                header = self.headers.get("Range")
                owner.ranges.append(header)
                start = int(header.split("=")[1].split("-")[0]) if header else 0
                body = owner.payload[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(bytes(range(256)) * 4000)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _url_preset(name: str, url: str, sha: str | None) -> Preset:
    base = PRESETS["imagenet-16384"]
    vqgan = models.VqganSpec(config=base.vqgan.config, checkpoint=WeightFile("vq.ckpt", url, sha))
    clip = models.ClipSpec(variant="x", config=base.clip.config, checkpoint=WeightFile("clip.pt", url, sha))
    return Preset(name=name, description="test", vqgan=vqgan, clip=clip)


def test_pull_downloads_verifies_and_resumes(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = hashlib.sha256(server.payload).hexdigest()
    _register(monkeypatch, _url_preset("t-pull", server.url, sha))
    folder = tmp_path / "t-pull"
    folder.mkdir()
    (folder / "clip.pt.part").write_bytes(server.payload[:100_000])  # an interrupted download

    paths = pull("t-pull", tmp_path, progress=False)
    assert [p.name for p in paths] == ["vq.ckpt", "clip.pt"]
    assert all(p.read_bytes() == server.payload for p in paths)
    assert server.ranges == [None, "bytes=100000-"]
    assert not list(folder.glob("*.part"))
    assert weights_present("t-pull", tmp_path)
    pull("t-pull", tmp_path, progress=False)  # verified files are not fetched again
    assert len(server.ranges) == 2


def test_pull_refuses_a_checksum_mismatch(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(monkeypatch, _url_preset("t-bad", server.url, "0" * 64))
    with pytest.raises(ChecksumMismatch, match="expected 0000"):
        pull("t-bad", tmp_path, progress=False)
    assert not list((tmp_path / "t-bad").iterdir())  # neither the file nor a .part is left


def test_pull_without_a_published_hash_records_one(
    tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(monkeypatch, _url_preset("t-tofu", server.url, None))
    (path, _) = pull("t-tofu", tmp_path, progress=False)
    record = path.with_name(path.name + ".sha256").read_text().split()[0]
    assert record == hashlib.sha256(server.payload).hexdigest()
    path.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch):
        models.verify_file(PRESETS["t-tofu"].vqgan.checkpoint, path)


def test_every_preset_reads_its_note_from_the_model_facts() -> None:
    from shared.model_facts import MODEL_FACTS, MODEL_NOTES

    assert set(PRESETS) == set(MODEL_FACTS)
    assert {name: preset.note for name, preset in PRESETS.items()} == {
        name: MODEL_NOTES.get(name) for name in MODEL_FACTS
    }


def test_the_engine_takes_the_shared_config() -> None:
    from shared.params import GenerationConfig as Shared
    from worker.engine import GenerationConfig

    assert GenerationConfig is Shared
