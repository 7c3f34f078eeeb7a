"""Shared by the benchmark scripts: the machine description and writing one section of bench/README.md."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hardware.protocol import cpu_identity, cpu_model

README = Path(__file__).parent / "README.md"
HEADER = "# Benchmarks\n\nMeasured on this machine; each section is written by its script (`make bench-<name>`).\n"


def environment(**versions: str) -> dict[str, object]:
    # cpu_id: the name with x86 family/model/stepping (ARM part): two different CPUs were both named "AMD EPYC"
    return {"cpu": cpu_model(), "cpu_id": cpu_identity(), "cores": os.cpu_count(), **versions, "date": time.strftime("%Y-%m-%d")}


def write_section(name: str, lines: list[str]) -> None:
    """Replace (or append) the section between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([begin, *lines, end])
    text = README.read_text() if README.exists() else HEADER
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)
