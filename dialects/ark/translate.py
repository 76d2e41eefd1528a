"""Analysys Ark cohort API (4.5): the request body and the translation of its rules into the canonical tree.

Every function, relation and time form, and what was chosen where Ark's documents are silent:
docs/dialects/ark.md.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from cohort_engine.definition import MAX_DATE, MIN_DATE, DefinitionError, check_values, parse_definition
from core.fields import numeric

# Ark's user id (`user.xwho`): the service's user key, not a profile property.
USER_KEY = "xwho"
ANY_EVENT = "$Anything"
# Caps on one body, so that no request builds an unbounded tree.
MAX_GROUPS, MAX_RULES, MAX_CONDITIONS, MAX_VALUES = 100, 100, 100, 10000

# Ark condition function -> canonical comparator; the time functions and EMPTY are built by _parts.
PROPERTY_FUNCTIONS = {
    "EQ": "eq", "NOT_EQ": "ne", "GT": "gt", "GTE": "gte", "LT": "lt", "LTE": "lte", "RANGE": "between",
    "CONTAIN": "contains", "NOT_CONTAIN": "not_contains", "NULL": "not_set", "NOT_NULL": "is_set",
    "TRUE": "is_true", "FALSE": "is_false", "EMPTY": None, "NOT_EMPTY": "not_empty",
    "ABSOLUTE_TIME": None, "RELATIVE_TIME_OF_CUURENT": None, "RELATIVE_TIME_RANGE_CUURENT": None,
}
REFUSED_FUNCTIONS = {
    "RELATIVE_TIME_OF_EVENT": "not supported: RELATIVE_TIME_OF_EVENT (a time relative to each event's time);"
                              " use ABSOLUTE_TIME or a RELATIVE_TIME_*_CUURENT function",
}
# Event rules compare a count with numbers: the numeric functions, without NULL / NOT_NULL (seed).
METRIC_FUNCTIONS = {"EQ": "eq", "NOT_EQ": "ne", "GT": "gt", "GTE": "gte", "LT": "lt", "LTE": "lte", "RANGE": "between"}
AGGREGATORS = ("TOTAL_COUNT", "REMOVE_DUMPLICATE")
RULE_RELATIONS = {"AND": "and", "OR": "or"}
GROUP_RELATIONS = ("AND", "AND_NOT")
WINDOW_UNITS = ("day", "week", "month")
DURATION_UNITS = ("minute", "hour", "day", "week", "month")
NO_PARAMS = ("NULL", "NOT_NULL", "TRUE", "FALSE", "EMPTY", "NOT_EMPTY")
ONE_PARAM = ("GT", "GTE", "LT", "LTE", "CONTAIN", "NOT_CONTAIN")
RULE_FIELDS = {
    "user": ("type", "expression", "function", "params"),
    "event": ("type", "expression", "eventAbsoluteTimeParams", "eventRelativeTimeParam", "aggregator", "function",
              "params", "filter"),
}
_DAY = r"(\d{4})[-/](\d{1,2})[-/](\d{1,2})"
_MOMENT = re.compile(_DAY + r"(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?")


class Problems:
    """Errors keyed by the path of the field in the request body, raised together."""

    def __init__(self):
        self.errors: dict[str, list[str]] = {}

    def add(self, path: str, message: str) -> None:
        self.errors.setdefault(path, []).append(message)

    def raise_any(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


class Refused(Exception):
    """One field's problem (message), turned into a Problems entry by the caller, which knows the path."""


def _upper(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Refused(f"{what} must be a string")
    return value.strip().upper()


def _list(value, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Refused(f"{what} must be an array")
    if len(value) > MAX_VALUES:
        raise Refused(f"{what} holds at most {MAX_VALUES} values")
    return value


# -- scalar params ------------------------------------------------------------------------------


def _whole(value, what: str) -> int:
    """A non-negative whole number given as a JSON number or a digit string ("30")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,9}", value.strip()):
        return int(value)
    raise Refused(f"{what} must be a whole number >= 0, got {value!r}")


def _number(value) -> int | float:
    """A count to compare with: a JSON number or a numeric string ("1", "2.5")."""
    number = numeric(value)
    if number is not None:
        return number
    raise Refused(f"must be numbers (or numeric strings), got {value!r}")


def _unit(value, units: tuple[str, ...]) -> str:
    unit = value.strip().lower() if isinstance(value, str) else value
    if unit not in units:
        raise Refused(f"the unit must be one of: {', '.join(units)}, got {value!r}")
    return unit


def _moment(value) -> tuple[date | datetime, str]:
    """(moment, precision) of "yyyy-MM-dd", "yyyy/MM/dd", with " HH:mm" or " HH:mm:ss": day, minute or second."""
    match = _MOMENT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match:
        year, month, day, hour, minute, second = match.groups()
        try:
            moment: date | datetime = date(int(year), int(month), int(day))
            precision = "day"
            if hour is not None:
                moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
                precision = "minute" if second is None else "second"
        except ValueError:
            pass
        else:
            day_of = moment.date() if isinstance(moment, datetime) else moment
            if not MIN_DATE <= day_of <= MAX_DATE:
                raise Refused(f"{value!r} is outside {MIN_DATE} .. {MAX_DATE}")
            return moment, precision
    raise Refused(f"{value!r} is not a time like 2019-05-01, 2019/05/01 00:00 or 2019-05-01 00:00:00")


def _absolute(params: list) -> list[tuple[str, list]]:
    """ABSOLUTE_TIME [start, end], both inclusive: whole days for two dates, else inclusive to the precision given."""
    if len(params) != 2:
        raise Refused("takes [start, end] with ABSOLUTE_TIME")
    (start, start_precision), (end, end_precision) = _moment(params[0]), _moment(params[1])
    if start_precision == end_precision == "day":
        if end < start:
            raise Refused("the end is before the start")
        return [("date_between", [start.isoformat(), end.isoformat()])]
    if start_precision == "day":
        start = datetime.combine(start, datetime.min.time())
    if end_precision == "day":
        end = datetime.combine(end, datetime.min.time()) + timedelta(days=1)
    else:
        end = end + (timedelta(minutes=1) if end_precision == "minute" else timedelta(seconds=1))
    end -= timedelta(microseconds=1)  # the last instant the end's precision still covers
    if end < start:
        raise Refused("the end is before the start")
    return [("between", [start.isoformat(timespec="seconds"), end.isoformat(timespec="microseconds")])]


def _parts(function: str, params: list) -> list[tuple[str, list]]:
    """The (canonical comparator, values) conditions an Ark function and its params stand for (all must hold)."""
    if function in REFUSED_FUNCTIONS:
        raise Refused(REFUSED_FUNCTIONS[function])
    if function not in PROPERTY_FUNCTIONS:
        raise Refused("must be one of: " + ", ".join(PROPERTY_FUNCTIONS))
    if function in NO_PARAMS:
        if params:
            raise Refused(f"no params with {function}")
        return [("eq", [""])] if function == "EMPTY" else [(PROPERTY_FUNCTIONS[function], [])]
    if function == "ABSOLUTE_TIME":
        return _absolute(params)
    if function == "RELATIVE_TIME_OF_CUURENT":
        if len(params) != 3 or not isinstance(params[2], str) or params[2].strip().lower() not in ("within", "before"):
            raise Refused("takes [n, unit, \"within\" | \"before\"] with RELATIVE_TIME_OF_CUURENT")
        cmp = "within_last" if params[2].strip().lower() == "within" else "before_last"
        return [(cmp, [_whole(params[0], "n"), _unit(params[1], DURATION_UNITS)])]
    if function == "RELATIVE_TIME_RANGE_CUURENT":
        if len(params) != 3:
            raise Refused("takes [a, b, unit] (from a to b units ago) with RELATIVE_TIME_RANGE_CUURENT")
        a, b, unit = _whole(params[0], "a"), _whole(params[1], "b"), _unit(params[2], DURATION_UNITS)
        if a == b:
            raise Refused("the two ends of RELATIVE_TIME_RANGE_CUURENT must differ")
        return [("within_last", [max(a, b), unit]), ("before_last", [min(a, b), unit])]
    if function in ("EQ", "NOT_EQ") and not params:
        raise Refused(f"at least one param with {function}")
    if function in ONE_PARAM and len(params) != 1:
        raise Refused(f"exactly one param with {function}")
    if function in ("CONTAIN", "NOT_CONTAIN") and not isinstance(params[0], str):
        raise Refused(f"a string param with {function}")
    if function == "RANGE" and len(params) != 2:
        raise Refused("[low, high] with RANGE")
    cmp = PROPERTY_FUNCTIONS[function]
    try:
        check_values(cmp, params)
    except ValidationError as exc:
        raise Refused("; ".join(exc.messages)) from None
    return [(cmp, list(params))]


def _and(nodes: list[dict]) -> dict:
    return nodes[0] if len(nodes) == 1 else {"op": "and", "children": nodes}


# -- rules ----------------------------------------------------------------------------------------


def _function_and_params(rule: dict, path: str, problems: Problems) -> tuple[str | None, list]:
    function = params = None
    try:
        function = _upper(rule.get("function"), "function")
    except Refused as exc:
        problems.add(f"{path}.function", str(exc))
    try:
        params = _list(rule.get("params"), "params")
    except Refused as exc:
        problems.add(f"{path}.params", str(exc))
    return function, params


def _condition(function: str, params: list, path: str, problems: Problems) -> list[tuple[str, list]] | None:
    try:
        return _parts(function, params)
    except Refused as exc:
        field = "function" if function not in PROPERTY_FUNCTIONS else "params"
        problems.add(f"{path}.{field}", str(exc))
        return None


def _user_key_rule(function: str, params: list, path: str, problems: Problems) -> dict | None:
    """user.xwho: the user key. Known users are the universe (profiles plus anyone with an event)."""
    everyone = {"op": "not", "child": {"type": "ids", "keys": []}}
    if function in ("NULL", "NOT_NULL"):
        if params:
            problems.add(f"{path}.params", f"no params with {function}")
            return None
        return everyone if function == "NOT_NULL" else {"type": "ids", "keys": []}
    if function not in ("EQ", "NOT_EQ"):
        problems.add(f"{path}.function", "the user id (user.xwho) takes EQ, NOT_EQ, NULL or NOT_NULL")
        return None
    if not params or any(not isinstance(p, (str, int)) or isinstance(p, bool) for p in params):
        problems.add(f"{path}.params", f"one or more user ids (strings) with {function} on user.xwho")
        return None
    keys = sorted({str(p) for p in params})
    # An id leaf may name users the project has never seen; EQ keeps only known ones, as Ark would.
    return {"op": "and", "children": [{"type": "ids", "keys": keys}, everyone]} if function == "EQ" else {
        "op": "not", "child": {"type": "ids", "keys": keys}}


def _user_rule(rule: dict, path: str, problems: Problems) -> dict | None:
    expression = rule.get("expression")
    match = re.fullmatch(r"user\.([^.\s][^\s]{0,199})", expression) if isinstance(expression, str) else None
    function, params = _function_and_params(rule, path, problems)
    if match is None:
        problems.add(f"{path}.expression", f"must be user.<property id>, got {expression!r}")
    if match is None or function is None or params is None:
        return None
    prop = match.group(1)
    if prop == USER_KEY:
        return _user_key_rule(function, params, path, problems)
    parts = _condition(function, params, path, problems)
    if parts is None:
        return None
    return _and([{"type": "profile", "property": prop, "cmp": cmp, "values": values} for cmp, values in parts])


def _relative_window(text) -> dict:
    """eventRelativeTimeParam: "a,b,unit" = from a to b units ago (both included, 0 = the current unit); "n unit"."""
    if not isinstance(text, str):
        raise Refused("must be a string like \"6,0,day\" (the last 7 days) or \"0 day\" (today)")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        single = parts[0].split()
        if len(single) != 2:
            raise Refused(f"must be \"a,b,unit\" or \"n unit\", got {text!r}")
        n, unit = _whole(single[0], "n"), _unit(single[1], WINDOW_UNITS)
        return {"last": 1, "offset": n, "unit": unit}
    if len(parts) != 3:
        raise Refused(f"must be \"a,b,unit\" or \"n unit\", got {text!r}")
    a, b, unit = _whole(parts[0], "a"), _whole(parts[1], "b"), _unit(parts[2], WINDOW_UNITS)
    if a < b:
        raise Refused(f"\"a,b,unit\" runs from a units ago to b units ago, so a >= b; got {text!r}")
    return {"last": a - b + 1, "offset": b, "unit": unit}


def _absolute_window(params) -> dict:
    """eventAbsoluteTimeParams: [first day, last day], yyyy-MM-dd, both included."""
    if not isinstance(params, list) or len(params) != 2:
        raise Refused("must be [first day, last day], like [\"2019-09-12\", \"2019-09-18\"]")
    (start, start_precision), (end, end_precision) = _moment(params[0]), _moment(params[1])
    if start_precision != "day" or end_precision != "day":
        raise Refused("takes days (yyyy-MM-dd), without a time of day")
    if end < start:
        raise Refused("the last day is before the first")
    return {"start": start.isoformat(), "end": end.isoformat()}


def _filter(value, event: str, path: str, problems: Problems) -> dict | None:
    """An event rule's `filter` ({conditions, relation}) as a canonical filter, or None for none."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.add(path, "must be an object {\"conditions\": [...], \"relation\": \"AND\" | \"OR\"}")
        return None
    unknown = sorted(set(value) - {"conditions", "relation"})
    for key in unknown:
        problems.add(f"{path}.{key}", "unknown field (a filter has conditions and relation)")
    conditions = value.get("conditions")
    if conditions is None:
        conditions = []
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
        problems.add(f"{path}.conditions", f"must be an array of at most {MAX_CONDITIONS} conditions")
        return None
    relation = "and"
    if value.get("relation") is not None:
        try:
            relation = RULE_RELATIONS[_upper(value["relation"], "relation")]
        except (Refused, KeyError):
            problems.add(f"{path}.relation", "must be AND or OR")
    found = []
    for index, condition in enumerate(conditions):
        where = f"{path}.conditions[{index}]"
        if not isinstance(condition, dict):
            problems.add(where, "must be an object {expression, function, params}")
            continue
        for key in sorted(set(condition) - {"expression", "function", "params"}):
            problems.add(f"{where}.{key}", "unknown field (a condition has expression, function and params)")
        expression = condition.get("expression")
        match = re.fullmatch(r"event\.([^.\s]+)\.([^\s]{1,200})", expression) if isinstance(expression, str) else None
        function, params = _function_and_params(condition, where, problems)
        if match is None:
            message = (f"filters of an event rule test the event's properties; a user property ({expression}) is"
                       " a user rule of its own in the group" if isinstance(expression, str)
                       and expression.startswith("user.") else
                       f"must be event.<event id>.<property id>, got {expression!r}")
            problems.add(f"{where}.expression", message)
        elif match.group(1) not in (event, ANY_EVENT):
            problems.add(f"{where}.expression", f"names event {match.group(1)!r}; this rule counts {event!r}"
                                                f" (use event.{event}.<property> or event.{ANY_EVENT}.<property>)")
            match = None
        if match is None or function is None or params is None:
            continue
        parts = _condition(function, params, where, problems)
        if parts is not None:
            found.extend({"property": match.group(2), "cmp": cmp, "values": values} for cmp, values in parts)
            if len(parts) > 1 and relation == "or":
                found[-len(parts):] = [{"op": "and", "children": found[-len(parts):]}]
    if not found:
        return None
    return found[0] if len(found) == 1 else {"op": relation, "children": found}


def _event_rule(rule: dict, path: str, problems: Problems) -> dict | None:
    expression = rule.get("expression")
    match = (re.fullmatch(r"event\.([^.\s]{1,200})(?:\.([^\s]{1,200}))?", expression)
             if isinstance(expression, str) else None)
    aggregator = None
    try:
        aggregator = _upper(rule.get("aggregator"), "aggregator")
        if aggregator not in AGGREGATORS:
            raise Refused("must be TOTAL_COUNT (times the event happened) or REMOVE_DUMPLICATE (distinct values of"
                          " an event property)")
    except Refused as exc:
        problems.add(f"{path}.aggregator", str(exc))
        aggregator = None
    agg = None
    if match is None:
        problems.add(f"{path}.expression", f"must be event.<event id> or event.<event id>.<property id>,"
                                           f" got {expression!r}")
    elif aggregator == "TOTAL_COUNT":
        if match.group(2) is not None:
            problems.add(f"{path}.expression", "give event.<event id>: TOTAL_COUNT counts events")
        agg = {"fn": "count"}
    elif aggregator == "REMOVE_DUMPLICATE":
        if match.group(2) is None:
            problems.add(f"{path}.expression", "give event.<event id>.<property id>: REMOVE_DUMPLICATE counts"
                                               " distinct values of an event property")
        agg = {"fn": "count_distinct", "property": match.group(2)}
    window = None
    try:
        if rule.get("eventAbsoluteTimeParams") is not None:  # it wins when both are given (seed)
            try:
                window = _absolute_window(rule["eventAbsoluteTimeParams"])
            except Refused as exc:
                problems.add(f"{path}.eventAbsoluteTimeParams", str(exc))
        elif rule.get("eventRelativeTimeParam") is not None:
            window = _relative_window(rule["eventRelativeTimeParam"])
        else:
            problems.add(f"{path}.eventAbsoluteTimeParams", "an event rule needs eventAbsoluteTimeParams or"
                                                           " eventRelativeTimeParam")
    except Refused as exc:
        problems.add(f"{path}.eventRelativeTimeParam", str(exc))
    function, params = _function_and_params(rule, path, problems)
    cmp = values = None
    if function is not None and params is not None:
        if function not in METRIC_FUNCTIONS:
            problems.add(f"{path}.function", "an event rule compares a count: one of "
                                             + ", ".join(METRIC_FUNCTIONS) + " (not NULL or NOT_NULL)")
        else:
            try:
                values = [_number(v) for v in params]
                _parts(function, values)  # the same arity and bounds as a property condition
                if function == "RANGE" and values[0] > values[1]:
                    raise Refused("[low, high] with low <= high for RANGE")
            except Refused as exc:
                problems.add(f"{path}.params", str(exc))
            else:
                cmp = METRIC_FUNCTIONS[function]
    event = None if match is None else match.group(1)
    condition = _filter(rule.get("filter"), event, f"{path}.filter", problems) if event else None
    if None in (agg, window, cmp) or event is None:
        return None
    leaf = {"type": "event", "event": "*" if event == ANY_EVENT else event, "agg": agg, "window": window,
            "cmp": cmp, "values": values}
    if condition is not None:
        leaf["filter"] = condition
    return leaf


def _rule(rule, path: str, problems: Problems) -> dict | None:
    if not isinstance(rule, dict):
        problems.add(path, "must be an object")
        return None
    kind = rule.get("type")
    if not isinstance(kind, str) or kind not in RULE_FIELDS:
        problems.add(f"{path}.type", "must be user (a user property rule) or event (an event rule)")
        return None
    for key in sorted(set(rule) - set(RULE_FIELDS[kind])):
        problems.add(f"{path}.{key}", f"unknown field of a {kind} rule")
    return _user_rule(rule, path, problems) if kind == "user" else _event_rule(rule, path, problems)


def _group(group, path: str, problems: Problems) -> dict | None:
    if not isinstance(group, dict):
        problems.add(path, "must be an object {\"rules\": [...], \"relation\": \"AND\" | \"OR\"}")
        return None
    for key in sorted(set(group) - {"rules", "relation"}):
        problems.add(f"{path}.{key}", "unknown field (a rule group has rules and relation)")
    rules = group.get("rules")
    if not isinstance(rules, list) or not 1 <= len(rules) <= MAX_RULES:
        problems.add(f"{path}.rules", f"must be an array of 1 to {MAX_RULES} rules")
        return None
    relation = "and"
    if group.get("relation") is not None or len(rules) > 1:
        try:
            relation = RULE_RELATIONS[_upper(group.get("relation"), "relation")]
        except (Refused, KeyError):
            problems.add(f"{path}.relation", "must be AND or OR")
    nodes = [_rule(rule, f"{path}.rules[{i}]", problems) for i, rule in enumerate(rules)]
    if None in nodes:
        return None
    return nodes[0] if len(nodes) == 1 else {"op": relation, "children": nodes}


def _relations(value, groups: int, problems: Problems) -> list[str] | None:
    """The relation between group N and N+1, for each N: empty = AND, one value = every pair, else groups - 1."""
    if value is None:
        value = []
    if not isinstance(value, list):
        problems.add("content.relations", "must be an array of AND / AND_NOT")
        return None
    relations = []
    for index, item in enumerate(value):
        text = item.strip().upper() if isinstance(item, str) else None
        if text not in GROUP_RELATIONS:
            problems.add(f"content.relations[{index}]", "must be AND or AND_NOT (the relations between rule groups)")
        relations.append(text)
    if len(value) > 1 and len(value) != groups - 1:
        problems.add("content.relations", f"{len(value)} relations for {groups} rule groups: give none (all AND),"
                                          f" one (the same between every pair) or {groups - 1} (one per pair)")
        return None
    if not relations:
        return ["AND"] * (groups - 1)
    return relations * (groups - 1) if len(relations) == 1 else relations


def to_canonical(content) -> dict:
    """The validated canonical tree of a cohort's `content`; ValidationError keyed by body paths (content....)."""
    problems = Problems()
    if not isinstance(content, dict):
        raise ValidationError({"content": ["must be an object {\"ruleGroup\": [...], \"relations\": [...]}"]})
    for key in sorted(set(content) - {"ruleGroup", "relations"}):
        problems.add(f"content.{key}", "unknown field (content has ruleGroup and relations)")
    groups = content.get("ruleGroup")
    if not isinstance(groups, list) or not 1 <= len(groups) <= MAX_GROUPS:
        problems.add("content.ruleGroup", f"must be an array of 1 to {MAX_GROUPS} rule groups")
        problems.raise_any()
    nodes = [_group(group, f"content.ruleGroup[{i}]", problems) for i, group in enumerate(groups)]
    relations = _relations(content.get("relations"), len(groups), problems)
    problems.raise_any()
    # AND and AND_NOT only intersect, so the order of the pairs does not matter: group 0, the AND
    # groups, minus the AND_NOT groups (a `not` is the complement within the known users).
    children = [nodes[0]] + [node if relation == "AND" else {"op": "not", "child": node}
                             for node, relation in zip(nodes[1:], relations, strict=True)]
    tree = children[0] if len(children) == 1 else {"op": "and", "children": children}
    try:
        return parse_definition(tree)
    except DefinitionError as exc:
        raise ValidationError({f"content.{k}" if k != "_root" else "content": v for k, v in exc.errors.items()}) from None


# -- request bodies -------------------------------------------------------------------------------


class CohortBodySchema(Schema):
    """Body of POST /uba/api/cohort; loads to the body plus `definition` (the canonical tree)."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=200, error="must be 1 to 200 characters"))
    dynamic = fields.Integer(strict=True, required=True,
                             validate=validate.OneOf((0, 1), error="must be 1 (recomputed daily) or 0 (computed once)"))
    content = fields.Raw(required=True)

    @validates_schema(skip_on_field_errors=False)
    def _translate(self, data, **kwargs):
        if isinstance(data.get("name"), str) and not data["name"].strip():
            raise ValidationError("must not be blank", "name")
        if "content" in data:
            data["definition"] = to_canonical(data["content"])


def load_cohort(body) -> dict:
    """Validate and translate a POST /uba/api/cohort body; ValidationError with body paths."""
    if not isinstance(body, dict):
        raise ValidationError({"_root": ["the body must be a JSON object {name, dynamic, content}"]})
    return CohortBodySchema().load(body)
