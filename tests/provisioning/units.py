"""Reading the unit files in systemd/."""

from __future__ import annotations

from pathlib import Path

UNITS_DIR = Path(__file__).resolve().parents[2] / "systemd"
# The hardening every appliance-*.service shares: a prefix drop-in (systemd >= 246).
HARDENING_DROPIN = UNITS_DIR / "appliance-.service.d" / "hardening.conf"
# Unit names as systemd sees them (the template with two instances: a GPU and the CPU worker).
SERVICES = [
    "appliance-web.service",
    "appliance-watch.service",
    "appliance-text-worker.service",
    "appliance-worker@0.service",
    "appliance-worker@cpu.service",
]
# The unit files those come from.
SERVICE_FILES = [
    "appliance-web.service",
    "appliance-watch.service",
    "appliance-text-worker.service",
    "appliance-worker@.service",
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


def dropin_dirs(unit: str) -> list[Path]:
    """The drop-in folders of systemd/ that systemd reads for `unit` (a unit file name or an
    instance), least specific first: `appliance-.service.d` for `appliance-worker@0.service`,
    then `appliance-worker@.service.d`, then `appliance-worker@0.service.d`."""
    stem, _, suffix = unit.rpartition(".")
    prefix = stem.split("@")[0]
    names = [f"{prefix[: i + 1]}.{suffix}.d" for i, char in enumerate(prefix) if char == "-"]
    if "@" in stem:
        names.append(f"{prefix}@.{suffix}.d")
    names.append(f"{unit}.d")
    return [UNITS_DIR / name for name in dict.fromkeys(names) if (UNITS_DIR / name).is_dir()]


def effective(unit: str) -> dict[str, dict[str, list[str]]]:
    """What systemd reads for `unit` from systemd/: the unit file (the template for an
    instance), then its drop-ins ordered by file name, every value in the order read. A
    setting given once counts by its last value; a list setting by them all."""
    stem, _, suffix = unit.rpartition(".")
    source = UNITS_DIR / (f"{stem.split('@')[0]}@.{suffix}" if "@" in stem else unit)
    merged = parse_unit(source)
    dropins = sorted((p for d in dropin_dirs(unit) for p in d.glob("*.conf")), key=lambda p: p.name)
    for dropin in dropins:
        for section, keys in parse_unit(dropin).items():
            for key, values in keys.items():
                merged.setdefault(section, {}).setdefault(key, []).extend(values)
    return merged
