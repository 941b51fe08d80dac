"""The machine a benchmark ran on: CPU, cores, memory, OS, Python and the packages that matter."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "hypercorn",
    "h2",
    "h11",
    "grpcio",
    "protobuf",
    "sonora",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "pgserver",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> str:
    total = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    return f"{total} cores" + (f" ({usable} usable)" if usable != total else "")


def memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "memory unknown"


def package_versions() -> str:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(versions)


def description() -> list[tuple[str, str]]:
    return [
        ("machine", f"{cpu_model()}, {cores()}, {memory()}, {platform.platform()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("packages", package_versions()),
    ]
