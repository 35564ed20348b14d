"""Every tag name is written once, in pipeline/tags.py: no other module of the package spells a
tag it writes or reads (in RunTag, set_*_tag, tags mappings and lookups, search filters)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from pipeline import tags
from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
# The argument that names the tag, by the name of the call that writes it.
TAG_ARGUMENT = {
    "RunTag": 0,
    "set_tag": 1,
    "set_experiment_tag": 1,
    "set_registered_model_tag": 1,
    "set_model_version_tag": 2,
}
# A search filter naming a tag by a literal: tags.name or tags.`name`.
FILTER = re.compile(r"tags\.`?[A-Za-z_]")


def tag_values() -> list[str]:
    return [v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str)]


def holds_tags(node: ast.expr) -> bool:
    """Whether an expression names a mapping of tags (`run.data.tags`, `tags`, `marks`)."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name.endswith(("tags", "marks"))


def literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def spelled_tags(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, what) for each tag named by a string literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else ""
            called = called or getattr(node.func, "id", "")
            index = TAG_ARGUMENT.get(called)
            if index is not None and len(node.args) > index and literal(node.args[index]):
                yield node.lineno, f"{called}({literal(node.args[index])!r}, ...)"
            is_get = isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            if is_get and holds_tags(node.func.value) and node.args and literal(node.args[0]):
                yield node.lineno, f"tags.get({literal(node.args[0])!r})"
            for keyword in node.keywords:
                if keyword.arg == "tags" and isinstance(keyword.value, ast.Dict):
                    for key in keyword.value.keys:
                        if literal(key):
                            yield node.lineno, f"tags={{{literal(key)!r}: ...}}"
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            if any(holds_tags(target) for target in node.targets):
                for key in node.value.keys:
                    if literal(key):
                        yield node.lineno, f"tags = {{{literal(key)!r}: ...}}"
        elif isinstance(node, ast.Subscript) and holds_tags(node.value) and literal(node.slice):
            yield node.lineno, f"tags[{literal(node.slice)!r}]"
        elif isinstance(node, ast.Compare) and literal(node.left):
            if any(holds_tags(c) for c in node.comparators):
                yield node.lineno, f"{literal(node.left)!r} in tags"
        elif isinstance(node, ast.Constant) and FILTER.search(str(node.value)):
            yield node.lineno, f"a filter naming a tag: {node.value!r}"


def test_tag_names_are_distinct() -> None:
    values = tag_values()
    assert len(values) == len(set(values)), sorted(v for v in values if values.count(v) > 1)


def test_no_module_but_tags_spells_a_tag() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "tags.py"
        for line, what in spelled_tags(ast.parse(path.read_text()))
    ]
    assert not found, "\n".join(found)


def test_the_scan_finds_each_way_of_spelling_a_tag() -> None:
    """The scan is not blind: each form it looks for, written with a literal, is found."""
    source = """
RunTag("trial_state", "lost")
client.set_tag(run_id, "trial_state", "lost")
client.set_model_version_tag(name, version, "test_acc", "1")
run.data.tags.get("trial_id")
run.data.tags["trial_id"]
"trial_id" in run.data.tags
client.create_run(experiment, tags={"trial_id": trial})
marks = {"night.outcome": "failed"}
client.search_runs([experiment], filter_string=f"tags.sweep_path != ''")
client.search_model_versions(f"tags.`parent_run_id` = '{run}'")
"""
    assert len(list(spelled_tags(ast.parse(source)))) == 10
    clean = "RunTag(tags.TRIAL_STATE, 'lost')\nrun.data.tags.get(tags.TRIAL_ID)\n"
    clean += "client.search_runs([e], filter_string=f\"tags.{tags.SWEEP_PATH} != ''\")\n"
    assert not list(spelled_tags(ast.parse(clean)))
