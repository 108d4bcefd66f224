"""Reading the unit files in systemd/."""

from __future__ import annotations

from pathlib import Path

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
# Unit names as systemd sees them (the template with two instances: a GPU and the CPU worker).
SERVICES = [
    "appliance-web.service",
    "appliance-watch.service",
    "appliance-text-worker.service",
    "appliance-worker@0.service",
    "appliance-worker@cpu.service",
]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections
