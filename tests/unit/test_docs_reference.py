"""The operators' reference pages against the code: every policy field with its default, every
environment variable, Airflow connection and Variable the code reads, every pool and queue, and
the pods of the scale-out page. The lists come from the code (the policy's models, a static scan
of include/, dags/ and plugins/), never from a hand-kept list, so a new field or variable
without its documentation fails here."""

from __future__ import annotations

import ast
import functools
import itertools
import re
import tomllib
import typing
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from include.backup_dr.deployment import DEFAULT_QUEUE, HEAVY, IO_QUEUE
from include.backup_dr.policy import DEFAULT_POLICY_PATH, Policy, format_duration, load_policy

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CODE_DIRS = ("include", "dags", "plugins")
REQUIRED = object()


# --- the policy's fields ------------------------------------------------------------------


def _models(annotation: object) -> list[type[BaseModel]]:
    """The policy models inside an annotation (`X | None`, `list[X]`, `dict[str, X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _item_suffix(annotation: object) -> str:
    """How a path goes on into a field's items: `[]` into a list, `.*` into a mapping."""
    for candidate in (annotation, *typing.get_args(annotation)):
        origin = typing.get_origin(candidate)
        if origin is list and _models(candidate):
            return "[]"
        if origin is dict and _models(candidate):
            return ".*"
    return ""


def policy_fields(model: type[BaseModel] = Policy, prefix: str = "") -> dict[str, object]:
    """Every field the validator accepts, by path (`*` a mapping's key, `[]` a list's item),
    with its default (`REQUIRED` when it has none)."""
    fields: dict[str, object] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if info.is_required():
            fields[path] = REQUIRED
        elif info.default is not PydanticUndefined:
            fields[path] = info.default
        else:
            fields[path] = info.default_factory()  # type: ignore[call-arg,misc]
        for sub in _models(info.annotation):
            fields |= policy_fields(sub, path + _item_suffix(info.annotation) + ".")
    return fields


def render_default(value: object) -> str:
    """A default as the policy page writes it."""
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "all defaults"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, timedelta):
        return f"`{format_duration(value)}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def documented_fields(text: str) -> dict[str, list[str]]:
    """Rows `| \\`path\\` | default | rule |` of a page: path (`<name>` made `*`) -> defaults."""
    rows: dict[str, list[str]] = {}
    for path, default in re.findall(r"^\| `([a-z_.<>\[\]]+)` \| ([^|]+) \|", text, re.M):
        rows.setdefault(re.sub(r"<[^>]+>", "*", path), []).append(default.strip())
    return rows


def _covers(doc_path: str, code_path: str) -> bool:
    doc, code = doc_path.split("."), code_path.split(".")
    return len(doc) == len(code) and all(d in ("*", c) for d, c in zip(doc, code, strict=True))


def test_every_policy_field_is_documented_with_its_default() -> None:
    rows = documented_fields((DOCS / "policy.md").read_text())
    fields = policy_fields()
    assert "targets[].since" in fields and "continuous.monitor.lag_alert_samples" in fields
    missing, wrong = [], []
    for path, default in fields.items():
        found = [d for doc, defaults in rows.items() if _covers(doc, path) for d in defaults]
        if not found:
            missing.append(path)
        wrong += [
            f"{path}: {d} != {render_default(default)}"
            for d in found
            if d != render_default(default)
        ]
    assert not missing, f"docs/policy.md lacks a row for: {missing}"
    assert not wrong, f"docs/policy.md states another default: {wrong}"


def test_the_policy_page_documents_no_field_the_code_lacks() -> None:
    rows = documented_fields((DOCS / "policy.md").read_text())
    fields = policy_fields()
    stale = [doc for doc in rows if not any(_covers(doc, path) for path in fields)]
    assert not stale, f"docs/policy.md documents fields the validator refuses: {stale}"


# --- a static scan of the code ----------------------------------------------------------


@functools.cache
def _code_files() -> tuple[tuple[Path, ast.Module], ...]:
    """Every module of include/, dags/ and plugins/, parsed once."""
    return tuple(
        (path, ast.parse(path.read_text(), str(path)))
        for folder in CODE_DIRS
        for path in sorted((REPO / folder).rglob("*.py"))
    )


@functools.cache
def _string_constants() -> dict[str, set[str]]:
    """Module-level `NAME = "text"` of every scanned module (imports resolve by name)."""
    found: dict[str, set[str]] = {}
    for _, module in _code_files():
        for node in module.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        found.setdefault(target.id, set()).add(node.value.value)
    return found


def _resolve(node: ast.expr, constants: dict[str, set[str]], where: str) -> set[str]:
    """The names an argument stands for; an argument the scan cannot read fails the test
    (make it a literal or a module constant) rather than pass unseen."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", None)
    if name in constants:
        return constants[name]
    raise AssertionError(f"{where}: cannot read the name in {ast.unparse(node)!r}")


def _environment_argument(node: ast.AST) -> ast.expr | None:
    """The name argument when `node` reads the environment, else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        if node.func.attr == "getenv":
            return node.args[0]
        if node.func.attr in ("get", "setdefault", "pop"):
            return node.args[0] if "environ" in ast.unparse(node.func.value) else None
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        return node.slice if ast.unparse(node.value).endswith("environ") else None
    return None


def environment_reads() -> dict[str, str]:
    """Every environment variable the code reads, with where: `os.environ.get/setdefault/pop`,
    `os.environ[...]` and `os.getenv`, literal or through a module constant."""
    reads: dict[str, str] = {}
    for path, module in _code_files():
        for node in ast.walk(module):
            argument = _environment_argument(node)
            if argument is not None:
                where = f"{path.relative_to(REPO)}:{node.lineno}"  # type: ignore[attr-defined]
                reads |= dict.fromkeys(_resolve(argument, _string_constants(), where), where)
    return reads


def _bindings(loops: list[ast.For]) -> list[dict[str, object]]:
    """Every assignment of the loop variables of enclosing `for` loops over literal tuples."""
    choices = []
    for loop in loops:
        names = [loop.target] if isinstance(loop.target, ast.Name) else loop.target.elts
        values = ast.literal_eval(loop.iter)
        choices.append(
            [
                dict(zip([n.id for n in names], item if len(names) > 1 else (item,), strict=True))
                for item in values
            ]
        )
    return [
        dict(itertools.chain.from_iterable(c.items() for c in combo))
        for combo in itertools.product(*choices)
    ]


def _literal_loops(node: ast.AST, loops: list[ast.For]) -> Iterator[tuple[ast.AST, list[ast.For]]]:
    yield node, loops
    for child in ast.iter_child_nodes(node):
        inner = loops
        if isinstance(node, ast.For) and child in node.body:
            try:
                ast.literal_eval(node.iter)
                inner = [*loops, node]
            except ValueError:
                pass
        yield from _literal_loops(child, inner)


def variable_keys() -> dict[str, str]:
    """Every Airflow Variable key the code reads (`Variable.get`), f-strings included when
    their fields are loop variables over literal tuples."""
    keys: dict[str, str] = {}
    for path, module in _code_files():
        for node, loops in _literal_loops(module, []):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Variable.get")):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            argument = node.args[0]
            if isinstance(argument, ast.JoinedStr):
                template = "".join(
                    part.value
                    if isinstance(part, ast.Constant)
                    else "{" + ast.unparse(part.value) + "}"
                    for part in argument.values
                )
                try:
                    found = {template.format(**b) for b in _bindings(loops)}
                except KeyError as exc:
                    raise AssertionError(f"{where}: cannot read the key {template!r}") from exc
            else:
                found = _resolve(argument, _string_constants(), where)
            keys |= dict.fromkeys(found, where)
    return keys


def _conn_strings(node: ast.expr) -> set[str]:
    """The non-empty string literals an expression can give (`a or "x"`, `x if c else "y"`)."""
    if isinstance(node, ast.Constant):
        return {node.value} if isinstance(node.value, str) and node.value else set()
    if isinstance(node, ast.BoolOp):
        return set().union(*(_conn_strings(v) for v in node.values))
    if isinstance(node, ast.IfExp):
        return _conn_strings(node.body) | _conn_strings(node.orelse)
    if isinstance(node, ast.Dict):
        return set().union(set(), *(_conn_strings(v) for v in node.values if v is not None))
    return set()


def _name(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")


def connection_ids_in_code() -> dict[str, str]:
    """Connection ids written into the code: keyword arguments, names and parameters called
    `*conn_id*`, and DAG params about a connection (`"bucket_connection": Param("...")`)."""
    found: dict[str, str] = {}
    for path, module in _code_files():
        for node in ast.walk(module):
            values: set[str] = set()
            if isinstance(node, ast.keyword) and node.arg and "conn_id" in node.arg:
                values = _conn_strings(node.value)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any("conn_id" in _name(t).lower() for t in targets):
                    values = _conn_strings(node.value)
            elif isinstance(node, ast.arguments):
                params = [*node.posonlyargs, *node.args][-len(node.defaults) or len(node.args) :]
                pairs = list(zip(params, node.defaults, strict=False))
                pairs += [
                    (a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults, strict=True) if d
                ]
                values = set().union(
                    set(), *(_conn_strings(d) for a, d in pairs if "conn_id" in a.arg)
                )
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and "conn" in str(key.value)
                        and isinstance(value, ast.Call)
                        and value.args
                    ):
                        values |= _conn_strings(value.args[0])
            if values:
                found |= dict.fromkeys(
                    values, f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
                )
    return found


def connection_ids_in_policy() -> set[str]:
    """Every connection the shipped policy names (any field called `*conn_id`)."""

    def walk(value: object) -> Iterator[str]:
        if isinstance(value, BaseModel):
            for name in type(value).model_fields:
                field = getattr(value, name)
                if name.endswith("conn_id") and isinstance(field, str):
                    yield field
                yield from walk(field)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from walk(item)

    return set(walk(load_policy(DEFAULT_POLICY_PATH)))


def local_settings() -> dict[str, list[dict[str, object]]]:
    return yaml.safe_load((REPO / "airflow_settings.yaml").read_text())["airflow"]


@pytest.fixture(scope="module")
def production() -> str:
    return (DOCS / "production.md").read_text()


def test_every_environment_variable_the_code_reads_is_documented(production: str) -> None:
    reads = environment_reads()
    assert {"BACKUP_POLICY_PATH", "BACKUP_LEASE_TTL_SECONDS", "BACKUP_PG_OS_USER"} <= set(reads)
    missing = {name: where for name, where in reads.items() if f"`{name}`" not in production}
    assert not missing, f"docs/production.md lacks environment variables: {missing}"


def test_every_connection_is_documented(production: str) -> None:
    code = connection_ids_in_code()
    assert {"smtp_oncall", "slack_oncall", "pagerduty_oncall"} <= set(code)
    wanted = dict.fromkeys(connection_ids_in_policy(), "include/policy.yaml") | code
    wanted |= dict.fromkeys(
        (c["conn_id"] for c in local_settings()["connections"]), "airflow_settings.yaml"
    )
    missing = {conn: where for conn, where in wanted.items() if f"`{conn}`" not in production}
    assert not missing, f"docs/production.md lacks connections: {missing}"


def test_every_airflow_variable_is_documented(production: str) -> None:
    keys = variable_keys()
    assert {"backup_alert_notifier", "backup_alert_fallback_conn_id"} <= set(keys)
    keys |= dict.fromkeys(
        (v["variable_name"] for v in local_settings()["variables"]), "airflow_settings.yaml"
    )
    missing = {key: where for key, where in keys.items() if f"`{key}`" not in production}
    assert not missing, f"docs/production.md lacks Airflow Variables: {missing}"


def test_every_pool_and_queue_is_documented(production: str) -> None:
    policy = load_policy(DEFAULT_POLICY_PATH)
    pools = {s.dump_pool for s in policy.servers} | {d.pool for d in policy.recovery().destinations}
    pools |= {p["pool_name"] for p in local_settings()["pools"]} | {"default_pool"}
    missing = sorted(p for p in pools | {DEFAULT_QUEUE, IO_QUEUE} if f"`{p}`" not in production)
    assert not missing, f"docs/production.md lacks pools or queues: {missing}"


def test_the_scale_out_page_shows_the_pods_the_code_requests() -> None:
    text = (DOCS / "scale-out.md").read_text()
    for step, pod in HEAVY.items():
        row = f"| `{step}` | {pod.cpu[0]} / {pod.cpu[1]} | {pod.memory[0]} / {pod.memory[1]} |"
        assert row in text, row
    rows = re.findall(r"^\| `([a-z_]+)` \| [0-9m]+ / [0-9m]+ \|", text, re.M)
    assert sorted(rows) == sorted(HEAVY), "a pod row for a step the code does not place"
    assert f"-q {DEFAULT_QUEUE},{IO_QUEUE}" in text


def test_the_code_page_places_every_module_the_import_contracts_place() -> None:
    """docs/code.md's floors name every module the layers contract places (and the contract is
    exhaustive, so a new module must appear in both)."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in contracts["contracts"] if c["type"] == "layers"]
    modules = {name.strip() for layer in layers for name in re.split(r"[|:]", layer)}
    text = (DOCS / "code.md").read_text()
    missing = sorted(m for m in modules if f"`{m}.py`" not in text and f"`{m}/`" not in text)
    assert not missing, f"docs/code.md does not place {missing}"
