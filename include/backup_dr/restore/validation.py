"""Validate a freshly restored PostgreSQL database with Great Expectations Core 1.x.

A restore test proves little unless the restored data is checked. Two suites run, and every
expectation yields one :class:`ExpectationResult` an auditor can read (what was checked, why,
what was found):

``manifest``
    Generated from the facts the backup recorded at dump time (``manifest_expectations``): every
    table exists and holds exactly the rows counted in the dump's snapshot, primary-key columns
    are not null and unique, and every foreign key resolves (no orphan rows).

``business rules (<target>)``
    Rules kept in the repository in ``include/expectations/<target>.yaml``
    (``load_business_rules``). The format, also described at the top of each file::

        # a comment saying what the rules protect
        expectations:
          - table: public.users                  # "schema.table", the batch the rule runs on
            expectation: expect_column_values_to_match_regex
            kwargs: {column: email, regex: '^[^@\\s]+@[^@\\s]+$'}
            description: every user has a plausible email address

    ``expectation`` is the snake_case name of a class in ``great_expectations.expectations``
    (``ExpectColumnValuesToMatchRegex`` -> ``expect_column_values_to_match_regex``), ``kwargs``
    are that class's arguments (optional, default ``{}``; not ``description``/``meta``, which
    this module sets), and ``description`` (required) says why the rule exists. Custom SQL uses
    ``unexpected_rows_expectation`` with ``kwargs: {unexpected_rows_query: ...}``: the query
    must read ``{batch}`` (the entry's table) and fails the rule if it returns any row. GX
    substitutes ``{batch}`` with a sub-select, so a query containing JOIN must alias it
    (``FROM {batch} AS t JOIN ...``), while one without JOIN must not (GX aliases it
    ``subselect``). Literal braces are doubled (``{{``). A file that cannot be used (bad YAML,
    unknown expectation, missing key, bad arguments) raises ``ValueError`` naming the file and
    the entry (``expectations[2]``).

Everything runs as SQL inside PostgreSQL (nothing is loaded into pandas): one ephemeral GX
context per call (no files written), one PostgreSQL data source, one table asset with a
whole-table batch per table, and each table's expectations from both suites validated as one
``ExpectationSuite`` in one call. A failed custom-SQL check is re-run alone with the COMPLETE
result format only to quote a few offending rows (GX fetches at most 200).

Great Expectations is imported lazily: it takes seconds to import and DAG files import this
package's modules.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import os
import re
import sys
import threading
import time
import types
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from great_expectations.core import ExpectationValidationResult
    from great_expectations.expectations import Expectation

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"

MANIFEST_SUITE = "manifest"
UNEXPECTED_ROWS = "unexpected_rows_expectation"
ROW_COUNT = "expect_table_row_count_to_equal"

#: Per-expectation counts and up to 10 example values; never the full list of bad rows.
_SUMMARY = {"result_format": "SUMMARY", "partial_unexpected_count": 10}
_EXAMPLES = 5  # offending values or rows quoted in ``observed``
_OBSERVED_MAX = 400  # characters
_RESERVED_KWARGS = frozenset({"description", "meta", "result_format", "catch_exceptions"})
_ENTRY_KEYS = frozenset({"table", "expectation", "kwargs", "description"})
_TABLE_RE = re.compile(r"^[^.\s]+\.[^.\s]+$")
_TARGET_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def business_suite(target: str) -> str:
    """Suite name of a target's business rules, as shown in results."""
    return f"business rules ({target})"


@dataclass(frozen=True)
class PlannedExpectation:
    """One expectation to run: plain data (testable without GX or a database)."""

    suite: str
    table: str  # "schema.table": the batch it runs on
    expectation: str  # snake_case GX expectation type
    kwargs: dict[str, Any]
    description: str
    #: Other tables the check reads (a foreign key's parent): missing ones fail it cleanly.
    needs: tuple[str, ...] = ()

    def build(self, index: int | None = None) -> Expectation:
        """The GX expectation; ``index`` goes into ``meta`` to match results back (GX reorders)."""
        cls = _expectation_classes()[self.expectation]
        meta = {} if index is None else {"index": index}
        return cls(**self.kwargs, description=self.description, meta=meta)


@dataclass(frozen=True)
class ExpectationResult:
    """The outcome of one expectation, readable without GX."""

    suite: str  # "manifest" or "business rules (platform_core)"
    table: str  # "public.users"
    expectation: str  # GX expectation type, e.g. "expect_table_row_count_to_equal"
    kwargs: dict[str, Any]  # JSON-able arguments (no batch objects)
    success: bool
    observed: str  # e.g. "12000 rows" or '3 unexpected of 9000 rows: ["not-an-email"]'
    description: str  # why this expectation exists


@dataclass
class ValidationResult:
    """Every result of one validation run, in suite/table order."""

    results: list[ExpectationResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Passed only if something was checked and nothing failed."""
        return bool(self.results) and all(result.success for result in self.results)

    def failures(self) -> list[ExpectationResult]:
        return [result for result in self.results if not result.success]

    def to_document(self) -> dict[str, Any]:
        """JSON-able evidence: verdict, counts and every result."""
        failed = len(self.failures())
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "evaluated": len(self.results),
            "passed": len(self.results) - failed,
            "failed": failed,
            "suites": sorted({result.suite for result in self.results}),
            "results": [asdict(result) for result in self.results],
        }


# ---- the manifest suite ---------------------------------------------------------------------


def _ident(name: str) -> str:
    """A quoted SQL identifier, braces doubled so GX's ``str.format`` leaves them alone."""
    quoted = '"' + name.replace('"', '""') + '"'
    return quoted.replace("{", "{{").replace("}", "}}")


def _qualified(table: str) -> str:
    schema, _, name = _split(table)
    return f"{_ident(schema)}.{_ident(name)}"


def _split(table: str) -> tuple[str, str, str]:
    schema, dot, name = table.partition(".")
    return (schema, dot, name) if dot else ("public", ".", table)


def orphan_query(columns: list[str], references: str, referenced_columns: list[str]) -> str:
    """Child rows whose (non-null) foreign key matches no parent row: MATCH SIMPLE semantics."""
    on = " AND ".join(
        f"child.{_ident(c)} = parent.{_ident(p)}"
        for c, p in zip(columns, referenced_columns, strict=True)
    )
    not_null = " AND ".join(f"child.{_ident(c)} IS NOT NULL" for c in columns)
    select = ", ".join(f"child.{_ident(c)}" for c in columns)
    return (
        f"SELECT {select} FROM {{batch}} AS child "
        f"LEFT JOIN {_qualified(references)} AS parent ON {on} "
        f"WHERE {not_null} AND parent.{_ident(referenced_columns[0])} IS NULL"
    )


def manifest_expectations(tables: dict[str, dict]) -> list[PlannedExpectation]:
    """The suite implied by the backup manifest's facts, table by table in name order.

    ``tables`` maps "schema.table" to ``{"rows": int, "primary_key": [col, ...],
    "foreign_keys": [{"columns": [...], "references": "schema.table",
    "referenced_columns": [...]}]}``; a missing key means that fact was not recorded.
    """
    planned: list[PlannedExpectation] = []

    def add(table: str, expectation: str, kwargs: dict[str, Any], why: str, *needs: str) -> None:
        planned.append(PlannedExpectation(MANIFEST_SUITE, table, expectation, kwargs, why, needs))

    for table in sorted(tables):
        facts = tables[table] or {}
        rows = facts.get("rows")
        if rows is not None:
            add(
                table,
                ROW_COUNT,
                {"value": int(rows)},
                f"the table exists and holds the {int(rows)} rows counted in the backup's snapshot",
            )
        key = list(facts.get("primary_key") or [])
        for column in key:
            add(
                table,
                "expect_column_values_to_not_be_null",
                {"column": column},
                f"primary-key column {column} has no NULLs",
            )
        if len(key) == 1:
            add(
                table,
                "expect_column_values_to_be_unique",
                {"column": key[0]},
                f"primary key ({key[0]}) identifies each row once",
            )
        elif key:
            add(
                table,
                "expect_compound_columns_to_be_unique",
                {"column_list": key},
                f"primary key ({', '.join(key)}) identifies each row once",
            )
        for fk in facts.get("foreign_keys") or []:
            columns, parent = list(fk["columns"]), fk["references"]
            referenced = list(fk["referenced_columns"])
            add(
                table,
                UNEXPECTED_ROWS,
                {"unexpected_rows_query": orphan_query(columns, parent, referenced)},
                f"every ({', '.join(columns)}) refers to an existing {parent} "
                f"({', '.join(referenced)}): no orphan rows",
                parent,
            )
    return planned


# ---- the business-rule suites ---------------------------------------------------------------


def load_business_rules(
    target: str, directory: Path = EXPECTATIONS_DIR
) -> list[PlannedExpectation]:
    """The rules in ``<directory>/<target>.yaml``, checked now so a bad file fails early; [] if none."""
    if not _TARGET_RE.match(target):
        raise ValueError(f"target name {target!r} cannot name a rules file")
    path = directory / f"{target}.yaml"
    if not path.is_file():
        return []
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("expectations"), list):
        raise ValueError(f"{path}: expected a mapping with an 'expectations' list")
    if extra := sorted(set(document) - {"expectations"}):
        raise ValueError(f"{path}: unknown top-level key(s) {extra}; only 'expectations'")
    suite = business_suite(target)
    return [
        _rule(path, index, entry, suite) for index, entry in enumerate(document["expectations"])
    ]


def _rule(path: Path, index: int, entry: Any, suite: str) -> PlannedExpectation:
    where = f"{path}: expectations[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a mapping with table, expectation, description")
    if missing := sorted(k for k in ("table", "expectation", "description") if k not in entry):
        raise ValueError(f"{where}: missing key(s) {missing}")
    if extra := sorted(set(entry) - _ENTRY_KEYS):
        raise ValueError(f"{where}: unknown key(s) {extra}; allowed: {sorted(_ENTRY_KEYS)}")
    table, name, description = entry["table"], entry["expectation"], entry["description"]
    kwargs = entry.get("kwargs") or {}
    if not isinstance(table, str) or not _TABLE_RE.match(table):
        raise ValueError(f"{where}: table must be 'schema.table', got {table!r}")
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"{where}: description must say why the rule exists")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{where}: kwargs must be a mapping, got {type(kwargs).__name__}")
    known = _expectation_classes()
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"{where}: unknown expectation {name!r} (not a class in "
            f"great_expectations.expectations, in snake_case){hint}"
        )
    if reserved := sorted(_RESERVED_KWARGS & set(kwargs)):
        raise ValueError(f"{where}: kwargs may not set {reserved}")
    if name == UNEXPECTED_ROWS:
        _check_query(where, table, kwargs.get("unexpected_rows_query"))
    rule = PlannedExpectation(suite, table, name, dict(kwargs), description.strip())
    try:
        rule.build()
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{where}: invalid arguments for {name}: {exc}") from exc
    return rule


def _check_query(where: str, table: str, query: Any) -> None:
    """Catch now what GX would only report mid-validation: no {batch}, or a stray brace."""
    if not isinstance(query, str) or "{batch}" not in query:
        raise ValueError(f"{where}: unexpected_rows_query must read {{batch}} ({table})")
    try:
        query.format(batch=table)
    except (IndexError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{where}: unexpected_rows_query has a brace other than {{batch}} ({exc!r}); "
            "double literal braces: {{ and }}"
        ) from exc


# ---- running them ---------------------------------------------------------------------------


def validate_database(
    sqlalchemy_url: str,
    target: str,
    tables: dict[str, dict],
    *,
    rules_dir: Path = EXPECTATIONS_DIR,
) -> ValidationResult:
    """Run the manifest suite and ``target``'s business rules against the restored database.

    A missing table or a check that errors is a failed result. Only an unusable rules file
    (``ValueError``) or an unreachable database (GX's ``TestConnectionError``, a
    ``ConnectionError``) raises: then there is nothing trustworthy to report.
    """
    started = time.monotonic()
    planned = manifest_expectations(tables) + load_business_rules(target, rules_dir)
    results: list[ExpectationResult | None] = [None] * len(planned)
    by_table: dict[str, list[int]] = {}
    for index, item in enumerate(planned):
        by_table.setdefault(item.table, []).append(index)

    gx = _gx()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = _no_progress_bars()
    source = context.data_sources.add_postgres(name="restored", connection_string=sqlalchemy_url)
    engine = source.get_engine()
    try:
        present = _existing_tables(engine, {*by_table, *(t for p in planned for t in p.needs)})
        for table, indexes in by_table.items():
            runnable = []
            for index in indexes:
                item = planned[index]
                if table not in present:
                    results[index] = _failed(item, "table missing from the restored database")
                elif absent := [t for t in item.needs if t not in present]:
                    results[index] = _failed(item, f"referenced table {absent[0]} is missing")
                else:
                    runnable.append(index)
            if runnable:
                _validate_table(gx, source, table, runnable, planned, results)
    finally:
        # The drill drops this database next: leave no idle connections. GX keeps two pools,
        # the data source's (connection tests) and its execution engine's (validation).
        source.get_execution_engine().close()
        engine.dispose()
    return ValidationResult(
        results=[r for r in results if r is not None], seconds=time.monotonic() - started
    )


def _validate_table(
    gx: Any,
    source: Any,
    table: str,
    indexes: list[int],
    planned: list[PlannedExpectation],
    results: list[ExpectationResult | None],
) -> None:
    """All of one table's expectations in one GX call; fills ``results`` at their indexes."""
    from great_expectations.datasource.fluent.interfaces import TestConnectionError

    schema, _, name = _split(table)
    try:
        asset = source.add_table_asset(name=table, table_name=name, schema_name=schema)
    except TestConnectionError as exc:  # exists, but e.g. cannot be read
        for index in indexes:
            results[index] = _failed(planned[index], f"table cannot be read: {_first_line(exc)}")
        return
    batch = asset.add_batch_definition_whole_table("whole table").get_batch()
    suite = gx.ExpectationSuite(name=table, expectations=[planned[i].build(i) for i in indexes])
    for gx_result in batch.validate(suite, result_format=_SUMMARY).results:
        index = int(gx_result.expectation_config.meta["index"])
        item = planned[index]
        examples = None
        failed_sql = item.expectation == UNEXPECTED_ROWS and not gx_result.success
        if failed_sql and _error(gx_result) is None:
            # Only now fetch some offending rows (GX caps them at 200), as evidence.
            detail = batch.validate(item.build(), result_format="COMPLETE").result
            examples = (detail.get("details") or {}).get("unexpected_rows")
        results[index] = _result(item, gx_result, examples)
    for index in indexes:  # never let an expectation vanish from the evidence
        if results[index] is None:
            results[index] = _failed(planned[index], "Great Expectations returned no result")


def _existing_tables(engine: Any, tables: Iterable[str]) -> set[str]:
    import sqlalchemy as sa

    inspector = sa.inspect(engine)
    present = set()
    for table in tables:
        schema, _, name = _split(table)
        if inspector.has_table(name, schema=schema):
            present.add(table)
    return present


def _result(
    item: PlannedExpectation, gx_result: ExpectationValidationResult, examples: list | None
) -> ExpectationResult:
    error = _error(gx_result)
    if error is not None:
        return _failed(item, f"error: {error}")
    observed = _observed(item, dict(gx_result.result or {}), examples)
    return _make(item, bool(gx_result.success), observed)


def _failed(item: PlannedExpectation, observed: str) -> ExpectationResult:
    return _make(item, False, observed)


def _make(item: PlannedExpectation, success: bool, observed: str) -> ExpectationResult:
    if len(observed) > _OBSERVED_MAX:
        observed = observed[: _OBSERVED_MAX - 1] + "…"
    return ExpectationResult(
        suite=item.suite,
        table=item.table,
        expectation=item.expectation,
        kwargs=json.loads(json.dumps(item.kwargs, default=str)),
        success=success,
        observed=observed,
        description=item.description,
    )


def _error(gx_result: ExpectationValidationResult) -> str | None:
    """The exception GX caught while computing this expectation, if any, as one line."""
    info = gx_result.exception_info or {}
    if "raised_exception" in info:  # the expectation's own exception
        return _first_line(info.get("exception_message")) if info["raised_exception"] else None
    for metric_error in info.values():  # keyed by the metric that failed
        if isinstance(metric_error, dict) and metric_error.get("exception_message"):
            return _first_line(metric_error["exception_message"])
    return None


def _first_line(message: Any) -> str:
    text = str(message or "").strip().removeprefix("Error: ")
    return text.splitlines()[0] if text else "unknown error"


def _observed(item: PlannedExpectation, result: dict[str, Any], examples: list | None) -> str:
    """GX's result as a short sentence: a count, and a few offending values if any."""
    if "unexpected_count" in result:
        count = result["unexpected_count"] or 0
        text = f"{count} unexpected of {result.get('element_count')} rows"
        if count:
            counts = result.get("partial_unexpected_counts")
            values = (
                [c["value"] for c in counts]
                if counts
                else list(result.get("partial_unexpected_list") or [])
            )
            text += f": {_show(values[:_EXAMPLES])}"
        return text
    if "observed_value" in result:
        value = result["observed_value"]
        if item.expectation == ROW_COUNT:
            expected = item.kwargs.get("value")
            return f"{value} rows" + ("" if value == expected else f" (expected {expected})")
        if item.expectation == UNEXPECTED_ROWS:
            text = f"{value} unexpected row{'' if value == 1 else 's'}"
            return f"{text}: {_show(examples[:_EXAMPLES])}" if examples else text
        return _show(value)
    return _show(result) if result else "no result"


def _show(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


# ---- Great Expectations -------------------------------------------------------------------


#: Imported by GX's start-up only for expectations these suites do not run (KL divergence, KS
#: tests, charts): about 95 MB of the task's 300 MB. They load for real on first use.
DEFERRED_IMPORTS = ("scipy.stats", "altair")


def _gx() -> Any:
    """Import GX with analytics off (GX_ANALYTICS_ENABLED is GX's documented switch), its
    statistics and charting libraries deferred, and its per-expectation INFO chatter out of the
    task log: our own lines say what was checked."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    if "great_expectations" not in sys.modules:
        for name in DEFERRED_IMPORTS:
            _defer_import(name)
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    return gx


class _DeferredModule(types.ModuleType):
    """A module whose code runs on first use of a name it defines. Its metadata (``__file__``,
    ``__spec__``, ``__path__``...) is already in its namespace, so scans of ``sys.modules``
    (``inspect.getmodule``, which Airflow's AWS hook runs at every client creation) leave it
    unloaded; the standard library's ``LazyLoader`` loads on any attribute, those included."""

    def __getattr__(self, name: str) -> Any:
        with _DEFERRED_LOCK:
            if isinstance(self, _DeferredModule):  # not loaded by another thread meanwhile
                spec = self.__spec__
                self.__class__ = types.ModuleType
                spec.loader.exec_module(self)
        return getattr(self, name)


_DEFERRED_LOCK = threading.Lock()


def _defer_import(name: str) -> None:
    """Register ``name`` in ``sys.modules`` unloaded, so ``import name`` costs nothing until
    one of its names is used."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)  # imports the parent package of a dotted name
    if spec is None or spec.loader is None:
        return  # not installed: GX's own import then says so
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredModule
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _no_progress_bars() -> Any:
    """Validators read this from the context; otherwise tqdm writes bars to task logs."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    return ProgressBarsConfig(globally=False, metric_calculations=False)


@cache
def _expectation_classes() -> dict[str, type]:
    """snake_case type -> class, for every expectation ``great_expectations.expectations`` exports."""
    _gx()
    import great_expectations.expectations as gxe
    from great_expectations.expectations.expectation import Expectation

    classes = (getattr(gxe, name) for name in dir(gxe))
    return {
        cls.expectation_type: cls
        for cls in classes
        if isinstance(cls, type) and issubclass(cls, Expectation) and cls.expectation_type
    }
