"""docker-compose.cpu.yml, the override for CPU-only hosts, parsed (tests/docker runs it for real)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]


class _ComposeLoader(yaml.SafeLoader):
    """Keeps Compose's merge tags visible: `!reset x` loads as ("!reset", x)."""


def _tagged(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> tuple[str, Any]:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node)
    else:
        value = loader.construct_scalar(node)
    return (f"!{tag_suffix}", value)


_ComposeLoader.add_multi_constructor("!", _tagged)


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.load((REPO / name).read_text(), Loader=_ComposeLoader)
    return data


def test_cpu_override_drops_the_gpu_and_paints_on_the_cpu() -> None:
    cpu = _load("docker-compose.cpu.yml")["services"]
    main = _load("docker-compose.yml")["services"]
    assert set(cpu) <= set(main), "it only adjusts services the main file defines"
    worker = cpu["worker"]
    assert worker["deploy"] == ("!reset", {}), "no GPU reservation"
    assert worker["environment"]["ARTGEN_DEVICE"] == "cpu"
    assert worker["environment"]["ARTGEN_MODEL"] == "${ARTGEN_MODEL:-tiny}", "small, needs no weights"
    for name in ("worker", "models"):
        assert cpu[name]["build"]["args"]["TORCH_VARIANT"] == "${TORCH_VARIANT:-cpu}"
    for name in ("api", "flower"):
        assert cpu[name]["environment"]["ARTGEN_MODEL"] == "${ARTGEN_MODEL:-tiny}", "the same default model"
    # Everything else (secrets, hardening, healthchecks) is the main file's.
    assert all(set(service) <= {"build", "deploy", "environment"} for service in cpu.values())
