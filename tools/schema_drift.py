"""Schema drift check: does a change to ``schemas/`` reject events that the released version accepted?"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator, SchemaError, ValidationError
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
RELEASED_DIR = SCHEMA_DIR / "released"
SUFFIX = ".schema.json"
EXAMPLES_PER_SCHEMA = 200
REJECTED_SAMPLES_SHOWN = 3

# keywords whose value is one subschema, a list of them, or a name -> subschema map
_SCHEMA_KEYS = tuple(
    "additionalProperties propertyNames items contains not if then else unevaluatedItems "
    "unevaluatedProperties contentSchema".split()
)
_SCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_MAP_KEYS = ("properties", "patternProperties", "dependentSchemas", "$defs")
# never make an instance invalid (contentSchema & co. are annotations in draft 2020-12)
_ANNOTATIONS = frozenset(
    "$schema $id $anchor $comment $defs $vocabulary title description default examples deprecated "
    "readOnly writeOnly contentEncoding contentMediaType contentSchema".split()
)
# the keywords compared by meaning below; any other assertion counts as drift as soon as its value changes
_HANDLED = frozenset(
    "$ref allOf type enum const maxLength minLength pattern format maximum exclusiveMaximum minimum "
    "exclusiveMinimum multipleOf maxItems minItems uniqueItems items prefixItems contains minContains "
    "maxContains maxProperties minProperties required properties patternProperties additionalProperties "
    "propertyNames dependentRequired dependentSchemas anyOf oneOf not if then else".split()
)
_ALL_TYPES = ("array", "boolean", "null", "number", "object", "string")
_KIND_TYPES = {"string": {"string"}, "number": {"number", "integer"}, "object": {"object"}, "array": {"array"}}
# hypothesis-jsonschema has no generator for "uuid": without one nearly every sample would be filtered out
_CUSTOM_FORMATS: dict[str, st.SearchStrategy[str]] = {"uuid": st.uuids().map(str)}


class _Unresolvable(Exception):
    """A $ref that does not lead to a schema in its folder."""


@dataclass(frozen=True)
class _Folder:
    """One folder of schema files: the unit inside which relative $refs resolve."""

    path: Path
    docs: Mapping[str, Any]
    registry: Registry[Any]

    @classmethod
    def load(cls, path: Path) -> _Folder:
        docs = {p.name: json.loads(p.read_text()) for p in sorted(path.glob(f"*{SUFFIX}"))}
        resources: list[tuple[str, Resource[Any]]] = []
        for name, doc in docs.items():
            resource = Resource.from_contents(doc, default_specification=DRAFT202012)
            # by file name too, so that a document without $id still finds its siblings
            resources.append((name, resource))
            if isinstance(doc, dict) and isinstance(doc.get("$id"), str):
                resources.append((doc["$id"], resource))
        return cls(path, docs, Registry().with_resources(resources))

    def document(self, uri: str) -> Any:
        # a released copy keeps its $id, so looking $ids up in this folder only keeps each version to itself
        for doc in self.docs.values():
            if isinstance(doc, dict) and doc.get("$id") == uri:
                return doc
        name = uri.rsplit("/", 1)[-1]
        if name in self.docs:
            return self.docs[name]
        raise _Unresolvable(f"no schema {uri!r} in {self.path}")


@dataclass(frozen=True)
class _Place:
    """Where a subschema lives: the document its local $refs resolve in, and that document's folder."""

    doc: Any
    folder: _Folder


@dataclass(frozen=True)
class _Part:
    """One conjunct of a schema: its own keywords, or what one of its $refs / allOf branches adds."""

    schema: Any
    place: _Place
    suffix: str


def _escape(segment: object) -> str:
    return str(segment).replace("~", "~0").replace("/", "~1")


def _resolve(ref: str, place: _Place) -> tuple[Any, _Place]:
    target, _, fragment = ref.partition("#")
    doc = place.doc
    if target:
        base = doc.get("$id") if isinstance(doc, dict) else None
        doc = place.folder.document(urljoin(base, target) if isinstance(base, str) else target)
    node = doc
    fragment = unquote(fragment)
    if fragment and not fragment.startswith("/"):
        raise _Unresolvable(f"$ref {ref!r}: plain-name fragments ($anchor) are not followed")
    for raw in fragment.split("/")[1:]:
        segment = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and segment in node:
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit() and int(segment) < len(node):
            node = node[int(segment)]
        else:
            raise _Unresolvable(f"$ref {ref!r}: nothing at {fragment!r}")
    return node, _Place(doc, place.folder)


def _validator(place: _Place, node: Any) -> Validator:
    root = Draft202012Validator(
        place.doc, registry=place.folder.registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    # evolve keeps the root document's resolver, so $refs inside ``node`` resolve as they do in the file
    return root if node is place.doc else root.evolve(schema=node)


def _trivial(schema: Any) -> bool:
    """True when the schema accepts everything (annotations only)."""
    return schema is True or (isinstance(schema, dict) and not (set(schema) - _ANNOTATIONS))


def _key(value: Any) -> str:
    # JSON equality: 1 and 1.0 are one value, True and 1 are not
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True)


def _types(schema: Mapping[str, Any]) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    return {declared} if isinstance(declared, str) else set(declared)


def _covered(kind: str, types: set[str]) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


def _bound(schema: Mapping[str, Any], inclusive: str, exclusive: str, sign: int) -> tuple[float, bool, str] | None:
    """The effective bound (sign-adjusted so that lower is tighter), whether it is exclusive, and its keyword."""
    found = [(sign * schema[k], k == exclusive, k) for k in (inclusive, exclusive) if k in schema]
    # of an inclusive and an exclusive bound, the tighter one rules; at equal values the exclusive one
    return min(found, key=lambda b: (b[0], not b[1])) if found else None


def _closest(tried: list[list[str]]) -> list[str]:
    """Of the findings against each candidate (none fitted), those against the closest one: the fewest, earliest."""
    return min(tried, key=len) if tried else []


def _show(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Comparer:
    """Walks a released (old) and a current (new) schema side by side, collecting ``<path>: <what>`` findings.

    A finding is reported unless the walk proves that every instance valid under old stays valid under new.
    """

    def __init__(self, active: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.findings: list[str] = []
        # pairs being compared further up: a recursive schema meets them again, and assuming they hold is sound
        self._active = set(active)

    def report(self, path: str, what: str) -> None:
        self.findings.append(f"{path}: {what}")

    def trial(self, old: Any, op: _Place, new: Any, np: _Place, path: str) -> list[str]:
        sub = _Comparer(frozenset(self._active))
        sub.compare(old, op, new, np, path)
        return sub.findings

    def equivalent(self, a: Any, ap: _Place, b: Any, bp: _Place, path: str) -> bool:
        return not self.trial(a, ap, b, bp, path) and not self.trial(b, bp, a, ap, path)

    def compare(self, old: Any, op: _Place, new: Any, np: _Place, path: str) -> None:
        pair = (id(old), id(new))
        if pair in self._active:
            return
        self._active.add(pair)
        try:
            try:
                olds = self._parts(old, op, "", set())
                news = self._parts(new, np, "", set())
            except _Unresolvable as error:
                self.report(path, str(error))
                return
            if any(part.schema is False for part in olds):
                return  # nothing was valid before
            for part in news:
                if not _trivial(part.schema):
                    self._cover(olds, part, path)
        finally:
            self._active.discard(pair)

    def _parts(self, node: Any, place: _Place, suffix: str, seen: set[int]) -> list[_Part]:
        # a schema is the conjunction of its own keywords, its $ref target and its allOf branches:
        # splitting them lets each new conjunct be matched with the old one that implies it
        if not isinstance(node, dict):
            return [_Part(node, place, suffix)]
        parts = [_Part({k: v for k, v in node.items() if k not in ("$ref", "allOf")}, place, suffix)]
        if isinstance(node.get("$ref"), str):
            target, target_place = _resolve(node["$ref"], place)
            if id(target) not in seen:  # a $ref cycle adds no constraint the first visit did not
                parts += self._parts(target, target_place, f"{suffix} -> {node['$ref']}", seen | {id(target)})
        for index, branch in enumerate(node.get("allOf", [])):
            parts += self._parts(branch, place, f"{suffix}/allOf/{index}", seen)
        return parts

    def _cover(self, olds: list[_Part], new: _Part, path: str) -> None:
        """Report unless some old conjunct implies ``new``; the one at the same place is tried (and reported) first."""
        where = path + new.suffix
        same = [o for o in olds if o.suffix == new.suffix] or [o for o in olds if o.suffix == ""]
        ordered = same[:1] + [o for o in olds if o is not same[0]] if same else olds
        if len(ordered) == 1:
            self._simple(ordered[0].schema, ordered[0].place, new.schema, new.place, where)
            return
        tried: list[list[str]] = []
        for old in ordered:
            sub = _Comparer(frozenset(self._active))
            sub._simple(old.schema, old.place, new.schema, new.place, where)
            if not sub.findings:
                return
            tried.append(sub.findings)
        self.findings += _closest(tried)

    def _simple(self, old: Any, op: _Place, new: Any, np: _Place, path: str) -> None:
        """Compare two conjuncts (neither has $ref or allOf of its own)."""
        if _trivial(new) or old is False:
            return
        if new is False:
            self.report(path, "schema is now false: rejects every value")
            return
        if not isinstance(new, dict):
            self.report(path, f"not a schema: {_show(new)}")
            return
        old = {} if old is True or not isinstance(old, dict) else old
        finite = self._finite(old)
        if finite is not None:
            # old accepts a known, finite set of values: check each of them instead of reasoning
            self._values(finite, old, op, new, np, path)
            return
        old_types = _types(old)
        self._type(old_types, _types(new), path)
        if "enum" in new or "const" in new:
            which = "enum" if "enum" in new else "const"
            self.report(f"{path}/{which}", f"{which} added: only {_show(new[which])} accepted now")

        def applies(kind: str) -> bool:
            return old_types is None or bool(old_types & _KIND_TYPES[kind])

        if applies("string"):
            self._upper(old, new, "maxLength", path)
            self._lower(old, new, "minLength", path)
            for key in ("pattern", "format"):
                if key in new and new[key] != old.get(key):
                    if key in old:
                        what = f"{key} changed from {old[key]!r} to {new[key]!r}: cannot prove compatible"
                    else:
                        what = f"{key} added: {new[key]!r}"
                    self.report(f"{path}/{key}", what)
        if applies("number"):
            self._numeric(old, new, path)
        if applies("object"):
            self._object(old, op, new, np, path)
        if applies("array"):
            self._array(old, op, new, np, path)
        self._combinators(old, op, new, np, path)
        for key in sorted((set(old) | set(new)) - _HANDLED - _ANNOTATIONS):
            if old.get(key) != new.get(key):
                self.report(f"{path}/{_escape(key)}", f"{key} changed: cannot prove compatible")

    @staticmethod
    def _finite(old: Mapping[str, Any]) -> list[Any] | None:
        values: list[Any] | None = list(old["enum"]) if isinstance(old.get("enum"), list) else None
        if "const" in old:
            const = old["const"]
            values = [const] if values is None else [v for v in values if _key(v) == _key(const)]
        return values

    def _values(self, values: list[Any], old: Any, op: _Place, new: Mapping[str, Any], np: _Place, path: str) -> None:
        try:
            before = _validator(op, old)
            after = _validator(np, new)
            for value in values:
                if not before.is_valid(value):
                    continue  # listed but never valid (e.g. excluded by "type")
                errors = list(after.iter_errors(value))
                if not errors:
                    continue
                if "enum" in new and _key(value) not in {_key(v) for v in new["enum"]}:
                    self.report(f"{path}/enum", f"enum lost value {_show(value)}")
                elif "const" in new and _key(value) != _key(new["const"]):
                    was = "const" if "const" in old else "enum"
                    self.report(f"{path}/const", f"const changed: {was} value {_show(value)} no longer accepted")
                else:
                    self.report(path, f"released value {_show(value)} is now rejected: {errors[0].message}")
        except Unresolvable as error:
            self.report(path, f"cannot resolve a $ref: {error}")

    def _type(self, old_types: set[str] | None, new_types: set[str] | None, path: str) -> None:
        if new_types is None:
            return
        lost = sorted(t for t in (old_types or _ALL_TYPES) if not _covered(t, new_types))
        if not lost:
            return
        if old_types is None:
            self.report(f"{path}/type", f"type added: only {sorted(new_types)} accepted now, no longer {lost}")
        else:
            self.report(f"{path}/type", f"type narrowed from {sorted(old_types)} to {sorted(new_types)}: lost {lost}")

    def _upper(self, old: Mapping[str, Any], new: Mapping[str, Any], key: str, path: str) -> None:
        if key not in new:
            return
        if key not in old:
            self.report(f"{path}/{key}", f"{key} added: {new[key]}")
        elif new[key] < old[key]:
            self.report(f"{path}/{key}", f"{key} decreased from {old[key]} to {new[key]}")

    def _lower(self, old: Mapping[str, Any], new: Mapping[str, Any], key: str, path: str, default: int = 0) -> None:
        if new.get(key, default) <= old.get(key, default):
            return
        if key in old:
            self.report(f"{path}/{key}", f"{key} increased from {old[key]} to {new[key]}")
        else:
            self.report(f"{path}/{key}", f"{key} added: {new[key]}")

    def _numeric(self, old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
        for inclusive, exclusive, sign in (("maximum", "exclusiveMaximum", 1), ("minimum", "exclusiveMinimum", -1)):
            before, after = _bound(old, inclusive, exclusive, sign), _bound(new, inclusive, exclusive, sign)
            if after is None:
                continue
            if before is None:
                self.report(f"{path}/{after[2]}", f"{after[2]} added: {new[after[2]]}")
            elif after[0] < before[0] or (after[0] == before[0] and after[1] and not before[1]):
                now, was = after[2], before[2]
                if now == was:
                    what = f"{now} {'decreased' if sign == 1 else 'increased'} from {old[was]} to {new[now]}"
                else:
                    what = f"{now} {new[now]} is tighter than the released {was} {old[was]}"
                self.report(f"{path}/{now}", what)
        if "multipleOf" in new:
            step = Fraction(str(new["multipleOf"]))
            if "multipleOf" not in old:
                self.report(f"{path}/multipleOf", f"multipleOf added: {new['multipleOf']}")
            elif (Fraction(str(old["multipleOf"])) / step).denominator != 1:
                self.report(f"{path}/multipleOf", f"multipleOf changed from {old['multipleOf']} to {new['multipleOf']}")

    def _object(self, old: Mapping[str, Any], op: _Place, new: Mapping[str, Any], np: _Place, path: str) -> None:
        self._upper(old, new, "maxProperties", path)
        self._lower(old, new, "minProperties", path)
        for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
            self.report(f"{path}/required", f"property {name!r} newly required")
        old_dep, new_dep = old.get("dependentRequired", {}), new.get("dependentRequired", {})
        for name, needs in sorted(new_dep.items()):
            for need in sorted(set(needs) - set(old_dep.get(name, []))):
                self.report(f"{path}/dependentRequired/{_escape(name)}", f"{need!r} newly required with {name!r}")
        for name, schema in sorted(new.get("dependentSchemas", {}).items()):
            old_schema = old.get("dependentSchemas", {}).get(name, True)
            self.compare(old_schema, op, schema, np, f"{path}/dependentSchemas/{_escape(name)}")
        if "propertyNames" in new:
            self.compare(old.get("propertyNames", True), op, new["propertyNames"], np, f"{path}/propertyNames")
        self._properties(old, op, new, np, path)

    @staticmethod
    def _for_name(schema: Mapping[str, Any], name: str) -> list[tuple[Any, str]]:
        """What constrains the value of property ``name``, with the path suffix of each constraint."""
        found = (
            [(schema["properties"][name], f"/properties/{_escape(name)}")]
            if name in schema.get("properties", {})
            else []
        )
        for pattern, sub in schema.get("patternProperties", {}).items():
            if re.search(pattern, name):
                found.append((sub, f"/patternProperties/{_escape(pattern)}"))
        return found or [(schema.get("additionalProperties", True), "/additionalProperties")]

    def _properties(self, old: Mapping[str, Any], op: _Place, new: Mapping[str, Any], np: _Place, path: str) -> None:
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        for name in sorted(set(old_props) | set(new_props)):
            befores = self._for_name(old, name)
            for schema, suffix in self._for_name(new, name):
                if name in old_props and name not in new_props and schema is False:
                    self.report(
                        f"{path}/properties/{_escape(name)}",
                        f"property {name!r} removed while additionalProperties is false",
                    )
                    continue
                where = f"{path}/properties/{_escape(name)}" if name in old_props else path + suffix
                self._any_of_olds(
                    [(s, op) for s, _ in sorted(befores, key=lambda b: b[1] != suffix)], schema, np, where
                )
        old_patterns, new_patterns = old.get("patternProperties", {}), new.get("patternProperties", {})
        for pattern, schema in new_patterns.items():
            where = f"{path}/patternProperties/{_escape(pattern)}"
            if pattern in old_patterns:
                self.compare(old_patterns[pattern], op, schema, np, where)
            elif old_patterns and not _trivial(schema):
                self.report(where, "patternProperties entry added: cannot prove compatible")
            else:  # the names it matches were additional properties before
                self.compare(old.get("additionalProperties", True), op, schema, np, where)
        for pattern, schema in old_patterns.items():
            if pattern not in new_patterns:
                where = f"{path}/patternProperties/{_escape(pattern)}"
                if new_patterns:
                    self.report(where, "patternProperties entry removed: cannot prove compatible")
                else:  # the names it matched fall to additionalProperties now
                    self.compare(schema, op, new.get("additionalProperties", True), np, where)
        before, after = old.get("additionalProperties", True), new.get("additionalProperties", True)
        if after is False and before is not False:
            self.report(
                f"{path}/additionalProperties",
                "additionalProperties tightened to false: properties not listed are now rejected",
            )
        else:
            self.compare(before, op, after, np, f"{path}/additionalProperties")

    def _any_of_olds(self, olds: list[tuple[Any, _Place]], new: Any, np: _Place, path: str) -> None:
        """Report unless one of the old constraints (all of which held) implies ``new``."""
        tried: list[list[str]] = []
        for old, op in olds:
            findings = self.trial(old, op, new, np, path)
            if not findings:
                return
            tried.append(findings)
        self.findings += _closest(tried)

    def _array(self, old: Mapping[str, Any], op: _Place, new: Mapping[str, Any], np: _Place, path: str) -> None:
        self._upper(old, new, "maxItems", path)
        self._lower(old, new, "minItems", path)
        if new.get("uniqueItems") is True and old.get("uniqueItems") is not True:
            self.report(f"{path}/uniqueItems", "uniqueItems added: repeated items are now rejected")
        old_prefix, new_prefix = old.get("prefixItems", []), new.get("prefixItems", [])
        old_items, new_items = old.get("items", True), new.get("items", True)
        for index in range(max(len(old_prefix), len(new_prefix))):
            before = old_prefix[index] if index < len(old_prefix) else old_items
            after, where = (
                (new_prefix[index], f"/prefixItems/{index}") if index < len(new_prefix) else (new_items, "/items")
            )
            self.compare(before, op, after, np, path + where)
        self.compare(old_items, op, new_items, np, f"{path}/items")
        if "contains" in new:
            if "contains" not in old:
                self.report(f"{path}/contains", "contains added")
                return
            self.compare(old["contains"], op, new["contains"], np, f"{path}/contains")
            self._lower(old, new, "minContains", path, default=1)
            if "maxContains" in new:
                if not self.equivalent(old["contains"], op, new["contains"], np, f"{path}/contains"):
                    self.report(f"{path}/maxContains", "contains changed under maxContains: cannot prove compatible")
                self._upper(old, new, "maxContains", path)

    def _combinators(self, old: Mapping[str, Any], op: _Place, new: Mapping[str, Any], np: _Place, path: str) -> None:
        if "anyOf" in new:
            branches = list(enumerate(new["anyOf"]))
            if "anyOf" in old:
                # each old branch must fit into some new branch; the one at the same index is tried first
                for index, branch in enumerate(old["anyOf"]):
                    ordered = [b for b in branches if b[0] == index] + [b for b in branches if b[0] != index]
                    self._fits_one(branch, op, ordered, np, f"{path}/anyOf", index)
            else:
                rest = {k: v for k, v in old.items() if k not in ("anyOf", "oneOf")}
                self._fits_one(rest, op, branches, np, f"{path}/anyOf", None)
        if "oneOf" in new:
            same = "oneOf" in old and len(old["oneOf"]) == len(new["oneOf"])
            if not same or not all(
                self.equivalent(a, op, b, np, f"{path}/oneOf/{i}")
                for i, (a, b) in enumerate(zip(old["oneOf"], new["oneOf"], strict=True))
            ):
                self.report(f"{path}/oneOf", "oneOf added or changed: cannot prove compatible")
        if "not" in new:
            # "not N" admits more than "not O" exactly when N admits less than O
            if "not" not in old or self.trial(new["not"], np, old["not"], op, f"{path}/not"):
                self.report(f"{path}/not", "not added or changed: cannot prove compatible")
        if "if" in new and not (_trivial(new.get("then", True)) and _trivial(new.get("else", True))):
            if "if" in old and self.equivalent(old["if"], op, new["if"], np, f"{path}/if"):
                for key in ("then", "else"):
                    self.compare(old.get(key, True), op, new.get(key, True), np, f"{path}/{key}")
            else:
                self.report(f"{path}/if", "if/then/else added or changed: cannot prove compatible")

    def _fits_one(
        self, old: Any, op: _Place, branches: list[tuple[int, Any]], np: _Place, path: str, index: int | None
    ) -> None:
        same_index: list[str] | None = None
        for position, branch in branches:
            findings = self.trial(old, op, branch, np, f"{path}/{position}")
            if not findings:
                return
            same_index = findings if position == index else same_index
        if index is None:
            self.report(path, "anyOf added: no branch provably accepts everything accepted before")
        elif same_index is None:
            self.report(f"{path}/{index}", "anyOf branch removed: no current branch provably accepts what it accepted")
        else:
            self.findings += same_index


def incompatibilities(old: Mapping[str, Any], new: Mapping[str, Any], old_root: Path, new_root: Path) -> list[str]:
    """Every change from schema document ``old`` to ``new`` that can make a valid instance invalid.

    ``old_root`` / ``new_root`` are the folders whose sibling files their cross-file $refs name.
    Each finding reads ``<path>: <what>``; a path follows $refs as ``... -> <ref>`` into the referenced schema.
    """
    comparer = _Comparer()
    comparer.compare(old, _Place(old, _Folder.load(old_root)), new, _Place(new, _Folder.load(new_root)), "#")
    return list(dict.fromkeys(comparer.findings))


def _name(file: str) -> str:
    return file.removesuffix(SUFFIX)


def structural_drift(released: Path, current: Path) -> list[str]:
    """``<schema>: <path>: <what>`` for each incompatibility the structural walk finds between two folders."""
    before, after = _Folder.load(released), _Folder.load(current)
    findings: list[str] = []
    for file, old in before.docs.items():
        if file not in after.docs:
            findings.append(f"{_name(file)}: #: schema file removed ({file})")
            continue
        new = after.docs[file]
        try:
            Draft202012Validator.check_schema(new)
        except SchemaError as error:
            findings.append(f"{_name(file)}: #: not a valid draft 2020-12 schema: {error.message}")
            continue
        comparer = _Comparer()
        comparer.compare(old, _Place(old, before), new, _Place(new, after), "#")
        findings += [f"{_name(file)}: {finding}" for finding in dict.fromkeys(comparer.findings)]
    return findings


def _inline(node: Any, place: _Place, seen: tuple[int, ...] = ()) -> Any:
    """``node`` with every $ref replaced by what it points at, for a generator that cannot follow them."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("$ref", "$defs"):
            continue  # $defs are dead once their users are inlined
        if key in _SCHEMA_KEYS:
            out[key] = _inline(value, place, seen)
        elif key in _SCHEMA_LIST_KEYS and isinstance(value, list):
            out[key] = [_inline(v, place, seen) for v in value]
        elif key in _SCHEMA_MAP_KEYS and isinstance(value, dict):
            out[key] = {k: _inline(v, place, seen) for k, v in value.items()}
        else:
            out[key] = value
    if not isinstance(node.get("$ref"), str):
        return out
    target, target_place = _resolve(node["$ref"], place)
    if id(target) in seen:
        raise _Unresolvable(f"recursive $ref {node['$ref']!r}: cannot be inlined for sampling")
    resolved = _inline(target, target_place, (*seen, id(target)))
    if isinstance(resolved, dict):
        resolved = {k: v for k, v in resolved.items() if k not in ("$id", "$schema")}
    return resolved if _trivial(out) else {**out, "allOf": [*out.get("allOf", []), resolved]}


def samples(folder: Path, name: str, examples: int = EXAMPLES_PER_SCHEMA) -> list[Any]:
    """Distinct instances valid under ``folder/<name>.schema.json``, generated deterministically."""
    schemas = _Folder.load(folder)
    doc = schemas.docs[name + SUFFIX]
    place = _Place(doc, schemas)
    strategy = from_schema(_inline(doc, place), custom_formats=_CUSTOM_FORMATS)
    drawn: list[Any] = []

    # derandomize: the same schema always yields the same samples; generate only: nothing here fails to shrink
    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(strategy)
    def draw(instance: Any) -> None:
        drawn.append(instance)

    draw()
    # the generator only approximates some keywords (format, ECMA regexes): keep what the released schema accepts
    valid = _validator(place, doc)
    return list({_key(i): i for i in drawn if valid.is_valid(i)}.values())


def empirical_drift(
    released: Path, current: Path, *, names: Iterable[str] | None = None, examples: int = EXAMPLES_PER_SCHEMA
) -> list[str]:
    """``<schema>: <instance path>: <what>`` for generated instances valid under released but rejected now."""
    before, after = _Folder.load(released), _Folder.load(current)
    wanted = None if names is None else set(names)
    findings: list[str] = []
    for file in before.docs:
        name = _name(file)
        if file not in after.docs or (wanted is not None and name not in wanted):
            continue
        try:
            instances = samples(released, name, examples)
        except (_Unresolvable, HypothesisException) as error:
            findings.append(f"{name}: #: cannot sample the released schema: {error}")
            continue
        check = _validator(_Place(after.docs[file], after), after.docs[file])
        rejected: list[tuple[Any, ValidationError]] = []
        try:
            for instance in instances:
                errors = list(check.iter_errors(instance))
                if errors:
                    rejected.append((instance, errors[0]))
        except Unresolvable as error:
            findings.append(f"{name}: #: cannot resolve a $ref of the current schema: {error}")
            continue
        for instance, failure in rejected[:REJECTED_SAMPLES_SHOWN]:
            findings.append(
                f"{name}: {failure.json_path}: sample valid under the released schema is rejected: {failure.message}"
                f" (instance {_show(instance)})"
            )
        if len(rejected) > REJECTED_SAMPLES_SHOWN:
            findings.append(f"{name}: $: {len(rejected) - REJECTED_SAMPLES_SHOWN} more such samples rejected")
    return findings


def changed(released: Path, current: Path) -> list[str]:
    """Names of the schemas whose meaning may differ: their $ref-inlined forms differ, or cannot be built."""
    before, after = _Folder.load(released), _Folder.load(current)
    names = []
    for file, old in before.docs.items():
        if file not in after.docs:
            continue
        new = after.docs[file]
        try:
            same = _inline(old, _Place(old, before)) == _inline(new, _Place(new, after))
        except _Unresolvable:
            same = False
        if not same:
            names.append(_name(file))
    return names


def drift(released: Path, current: Path, *, examples: int = EXAMPLES_PER_SCHEMA) -> list[str]:
    """Structural findings, then those of the empirical net over the schemas that changed."""
    return structural_drift(released, current) + empirical_drift(
        released, current, names=changed(released, current), examples=examples
    )


def newest_release(released: Path) -> Path:
    """``released`` itself when it holds schema files, else its highest-numbered ``vN`` folder."""
    if any(released.glob(f"*{SUFFIX}")):
        return released
    versions = [p for p in released.glob("v*") if p.is_dir() and p.name[1:].isdigit()]
    if not versions:
        raise FileNotFoundError(f"no released version (v1, v2, ...) under {released}")
    return max(versions, key=lambda p: int(p.name[1:]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.schema_drift", description=__doc__)
    parser.add_argument(
        "--released", type=Path, default=RELEASED_DIR, metavar="DIR", help="a version folder, or a folder of vN folders"
    )
    parser.add_argument("--current", type=Path, default=SCHEMA_DIR, metavar="DIR", help="the schemas to check")
    args = parser.parse_args(argv)
    try:
        version = newest_release(args.released)
    except FileNotFoundError as error:
        print(f"schema drift: {error}", file=sys.stderr)
        return 2
    findings = drift(version, args.current)
    if findings:
        for finding in findings:
            print(finding)
        print(f"schema drift: {len(findings)} incompatibilities with released {version.name}")
        return 1
    count = len(list(version.glob(f"*{SUFFIX}")))
    print(f"schema drift: OK ({count} schemas compared against released {version.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
