"""`gibsey bench image`: the SD image's figures as the last `make image`, `gibsey image boot`
and `gibsey image mesh` on this machine recorded them (images/out/build.json, boot.json,
mesh.json). Building takes ~36 minutes cold and booting several: this suite reads the figures,
it does not build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gibsey.bench.report import Row

OUT = Path(__file__).resolve().parent.parent / "images" / "out"
MIB = 1024 * 1024


def _load(name: str) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((OUT / name).read_text())
    except (OSError, ValueError):
        return {}
    return doc


def run() -> list[Row]:
    build, boot = _load("build.json"), _load("boot.json")
    rows: list[Row] = []
    seconds = build.get("seconds", {})
    if seconds:
        how = "base root cached" if build.get("base_root_cached") else "cold: base root built"
        rows.append(Row("image build", seconds["total_s"], None, "s", note=how))
        rows.append(Row("  of which base root", seconds["base_root_s"], None, "s"))
        if build.get("base_root_cold_s") is not None:
            cold = build["base_root_cold_s"]
            rows.append(Row("base root built cold (mmdebstrap)", cold, None, "s"))
            rows.append(Row("image build, cold", cold + seconds["total_s"] - seconds["base_root_s"],
                            None, "s", note="base root cold + the rest of this build"))  # fmt: skip
        rows.append(Row("image size", build["image_bytes"] / MIB, None, "MiB"))
        rows.append(Row("  blocks written", build["image_allocated_bytes"] / MIB, None, "MiB"))
    else:
        rows.append(Row("image build", float("nan"), None, "s", note="not built: make image"))
    if boot.get("boot_to_ready_s") is not None:
        rows.append(Row("emulated boot-to-READY", boot["boot_to_ready_s"], None, "s",
                        note="qemu virt, TCG, 2 vCPU"))  # fmt: skip
    else:
        rows.append(Row("emulated boot-to-READY", float("nan"), None, "s",
                        note="not booted: gibsey image boot IMG"))  # fmt: skip
    if boot.get("second_boot_to_ready_s") is not None:
        rows.append(Row("  second boot of the same copy", boot["second_boot_to_ready_s"], None,
                        "s", note="read-only root; data kept"))  # fmt: skip
    if boot.get("node_rss_kib") is not None:
        rows.append(Row("node RSS in the image", boot["node_rss_kib"] / 1024, None, "MiB"))
    return rows + _mesh_rows(_load("mesh.json"))


def _mesh_rows(mesh: dict[str, Any]) -> list[Row]:
    """`gibsey image mesh`: two copies booted side by side, and how long a gift took to cross."""
    if not mesh.get("gift_seen_s"):
        return [Row("two images: gift crosses the mesh", float("nan"), None, "s",
                    note="not run: gibsey image mesh IMG")]  # fmt: skip
    rows = [Row(f"two images: gift on {giver} seen at the other", seconds, None, "s")
            for giver, seconds in mesh["gift_seen_s"].items()]  # fmt: skip
    ready = mesh.get("ready_s", {})
    if ready:
        rows.append(Row("two images: slowest boot-to-READY", max(ready.values()), None, "s",
                        note="two qemus at once on the same cores"))  # fmt: skip
    return rows
