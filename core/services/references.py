"""What `cohort` and `tag` leaves name: checked at save against the project's rows (cohorts and tags share ids)."""

from __future__ import annotations

from cohort_engine.definition import DefinitionError
from cohort_engine.tag_column import comparator_problem
from core.data import cohorts


def leaves_with_paths(node: dict, path: str = ""):
    """(path, leaf) of every leaf of a tree, or of the trees of a values tag, paths as the schemas report them."""
    if "kind" in node:
        if node.get("kind") == "values":
            for i, entry in enumerate(node.get("values", [])):
                yield from leaves_with_paths(entry["definition"], f"values[{i}].definition")
        return
    if "children" in node:
        for i, child in enumerate(node["children"]):
            yield from leaves_with_paths(child, f"{path}.children[{i}]".lstrip("."))
    elif "child" in node:
        yield from leaves_with_paths(node["child"], f"{path}.child".lstrip("."))
    else:
        yield path, node


def check_leaf_targets(conn, project_id: int, definition: dict) -> None:
    """A cohort leaf must name a cohort, a tag leaf a tag whose type fits the comparator (DefinitionError)."""
    named = [(path, leaf) for path, leaf in leaves_with_paths(definition) if leaf.get("type") in ("cohort", "tag")]
    if not named:
        return
    found = cohorts.entities_of(conn, project_id, {leaf.get("cohort_id", leaf.get("tag_id")) for _, leaf in named})
    errors: dict[str, list[str]] = {}
    for path, leaf in named:
        prefix = f"{path}." if path else ""
        if leaf["type"] == "cohort":
            entity, _ = found.get(leaf["cohort_id"], ("cohort", None))
            if entity != "cohort":
                errors.setdefault(prefix + "cohort_id", []).append(
                    f"{leaf['cohort_id']} is a tag; select by it with a tag leaf")
            continue
        entity, value_type = found.get(leaf["tag_id"], ("tag", None))
        if entity != "tag":
            errors.setdefault(prefix + "tag_id", []).append(f"{leaf['tag_id']} is a cohort; use a cohort leaf")
        elif value_type is not None:
            problem = comparator_problem(leaf["cmp"], value_type)
            if problem:
                errors.setdefault(prefix + "cmp", []).append(f"{problem} (tag {leaf['tag_id']})")
    if errors:
        raise DefinitionError(errors)
