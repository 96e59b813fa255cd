"""The README and docs/ against the code: the DAG table, the store layout, the pod table and
every relative link. No services: DAGs are parsed, include/ is read as source."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
#: Pages written apart from this test's (policy fields, operators, generated figures): a link to
#: one of them is checked once the page exists; the README must link to every one.
EXPECTED_PAGES = (
    "policy.md",
    "production.md",
    "scale-out.md",
    "benchmarks.md",
    "capacity.md",
    "cli.md",
)
OWN_PAGES = ("concepts.md", "runbook.md", "restore.md")

#: Parses every DAG in a fresh interpreter (Airflow's configuration is read at import) and
#: prints each DAG's schedule.
PARSE = f"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(REPO / "dags")!r})
assert not bag.import_errors, bag.import_errors
print(json.dumps({{d.dag_id: d.schedule for d in bag.dags.values()}}))
"""


def _schedules() -> dict[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-c", PARSE],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a Markdown page."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def _resolve(document: dict, path: str) -> object:
    """`a.b.c` in the raw policy YAML; KeyError when any part is missing."""
    found: object = document
    for part in path.split("."):
        assert isinstance(found, dict), path
        found = found[part]
    return found


def _policy_strings(node: object) -> set[str]:
    if isinstance(node, dict):
        return set().union(*(_policy_strings(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_policy_strings(v) for v in node))
    return {node} if isinstance(node, str) else set()


def test_readme_dag_table_matches_the_generated_dags() -> None:
    """One row per DAG the policy generates: its id, its schedule, and the policy key that sets
    it (resolved in include/policy.yaml to that very schedule)."""
    table = _section(README.read_text(), "The DAGs")
    rows = [_cells(line) for line in table.splitlines() if line.startswith("| `")]
    policy = yaml.safe_load((REPO / "include" / "policy.yaml").read_text())
    schedules = _schedules()
    documented = {}
    for dag_cell, schedule_cell, key_cell, *_ in rows:
        dag_id = dag_cell.strip("`")
        assert dag_id not in documented, f"{dag_id} has two rows"
        documented[dag_id] = schedule_cell
        assert dag_id in schedules, f"{dag_id} is in the README but no DAG has that id"
        actual = schedules[dag_id]
        assert schedule_cell == ("manual" if actual is None else f"`{actual}`"), dag_id
        key = re.fullmatch(r"`([\w.]+)`", key_cell)
        if key is None:  # "not in the policy" must be true
            assert actual is not None and actual not in _policy_strings(policy), dag_id
            continue
        value = _resolve(policy, key[1])
        if actual is not None:
            assert value == actual, f"{dag_id}: {key[1]} is {value!r}, the DAG runs {actual!r}"
    assert set(documented) == set(schedules), "DAGs missing from the README's table"


# --- the store layout --------------------------------------------------------------------------

#: The top-level prefixes of the store that are not a backup category.
STORE_ROOTS = ("evidence/", "state/", "locks/", "replica/", "wal/", "catalogue-cache/")
#: Module-level constants whose names say they are part of a key...
KEY_CONSTANT = re.compile(r"^[A-Z_]*(_DIR|_NAME|_PREFIX|_SUFFIX|_KEY|_EVIDENCE)$")
#: ...except these, which are not store keys (a URL, a run id prefix, a local spool's files,
#: an Airflow context key, a report's placeholder).
NOT_STORE = {
    "URL_PREFIX",
    "BACKFILL_PREFIX",
    "PID_NAME",
    "FAILED_NAME",
    "TARGET_KEY",
    "NO_EVIDENCE",
}
#: File names the code writes on local disk, never in the store (a recovery's work directory).
LOCAL_FILES = {"prefetch-plan.json"}
#: A file name a key ends in.
FILE_NAME = re.compile(r"^-?[\w.-]+\.(json|jsonl|jsonl\.gz|md|html)$")


def _render(node: ast.JoinedStr) -> str:
    """An f-string with every placeholder as `<>`."""
    return "".join(v.value if isinstance(v, ast.Constant) else "<>" for v in node.values)


def _called(node: ast.Call) -> str | None:
    return getattr(node.func, "attr", None) or getattr(node.func, "id", None)


def _constants(trees: list[ast.Module]) -> dict[str, str]:
    """Module-level `NAME = "text"` of every module (to resolve a name passed as a kind)."""
    found = {}
    for tree in trees:
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        found[target.id] = node.value.value
    return found


def written_key_parts(root: Path) -> set[str]:
    """Every key prefix and file name the code under `root` spells out for the store."""
    trees = [ast.parse(path.read_text()) for path in sorted(root.rglob("*.py"))]
    constants = _constants(trees)
    parts: set[str] = set()
    for name, value in constants.items():
        if KEY_CONSTANT.match(name) and name not in NOT_STORE:
            parts.add(value)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):  # an engine's artifact: data.<extension>
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and [getattr(t, "id", None) for t in item.targets] == ["extension"]
                        and isinstance(item.value, ast.Constant)
                    ):
                        parts.add(f"data.{item.value.value}")
            if isinstance(node, ast.Call) and _called(node) == "evidence_key" and node.args:
                kind = node.args[0]  # evidence/<kind>/...: a literal, or a module constant
                if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                    parts.add(f"evidence/{kind.value}/")
                elif isinstance(kind, ast.Name) and kind.id in constants:
                    parts.add(f"evidence/{constants[kind.id]}/")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            elif isinstance(node, ast.JoinedStr):
                text = _render(node)
                tail = node.values[-1] if node.values else None
                if isinstance(tail, ast.Constant) and FILE_NAME.match(tail.value.lstrip("/")):
                    parts.add(tail.value.lstrip("/"))
            else:
                continue
            if text.startswith(STORE_ROOTS):
                literal = text.split("<>", 1)[0]
                parts.add(literal if "<>" not in text else literal[: literal.rfind("/") + 1])
            elif FILE_NAME.match(text) and "<>" not in text:
                parts.add(text)
    return {part for part in parts if part and part not in LOCAL_FILES}


def test_store_layout_names_every_key_prefix_the_code_writes() -> None:
    layout = _section((DOCS / "concepts.md").read_text(), "Store layout")
    parts = written_key_parts(REPO / "include")
    assert {"evidence/prune/", "state/continuous_monitor/", "locked.json", "-refused.json"} <= parts
    missing = sorted(part for part in parts if part not in layout)
    assert not missing, f"docs/concepts.md's store layout lacks {missing}"


# --- links and pages ---------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve()
        if not path.exists():
            if not (path.parent == DOCS and path.name in EXPECTED_PAGES):
                broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_readme_links_every_docs_page() -> None:
    readme = README.read_text()
    for name in (*OWN_PAGES, *EXPECTED_PAGES):
        assert f"](docs/{name})" in readme, name
    for name in OWN_PAGES:
        assert (DOCS / name).exists(), name
