"""The Go load generator of the benchmarks (tests/bench/loadgen): built on demand, run for one JSON result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "loadgen"
BINARY = Path.home() / ".cache" / "somaagent01" / "tools" / "loadgen"


def go() -> str:
    # the Go toolchain may be installed outside a non-login shell's PATH
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise RuntimeError("the Go toolchain (go) is needed to build tests/bench/loadgen and was not found")
    return found


def binary() -> Path:
    """The built load generator, rebuilt when any of its sources is newer than it."""
    newest = max(p.stat().st_mtime for p in SOURCE.iterdir() if p.suffix in (".go", ".mod", ".sum"))
    if BINARY.exists() and BINARY.stat().st_mtime >= newest:
        return BINARY
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename, so a concurrent user never runs a half-written file
    partial = BINARY.with_name(f"{BINARY.name}.{os.getpid()}.partial")
    done = subprocess.run(
        [go(), "build", "-o", str(partial), "."], cwd=SOURCE, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"go build of {SOURCE} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    partial.replace(BINARY)
    return BINARY


def run(*args: str, timeout: float | None = None) -> dict[str, Any]:
    """One workload: loadgen with these flags; its JSON result (stderr is passed through)."""
    done = subprocess.run([str(binary()), *args], stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(args)} exited with {done.returncode} (see its stderr above)")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
