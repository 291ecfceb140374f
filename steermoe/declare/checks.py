"""The check helpers every validator shares: the safe YAML loader, value checks against a settings-table entry,
names and paths that reach file names and shell commands, and the did-you-mean hint.

Torch-free and cheap to import (the Snakefile uses it at parse time). Every message names where the value came from
(the `where` argument: file, row, line, column or dotted key) and what is allowed.
"""
from __future__ import annotations

import difflib
import math
import re
import reprlib
from pathlib import Path, PurePosixPath

import yaml

from steermoe.declare.settings import REQUIRED
from steermoe.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")  # catalog names and variants: no `_`, no `/`
PATH_RE = re.compile(r"^[A-Za-z0-9._+/-]+$")  # paths that reach file names and shell commands
TRUE, FALSE = ("true", "yes", "1", "y", "on"), ("false", "no", "0", "n", "off")
TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}
# values in one YAML document, counted with every alias expanded: a few aliases can stand for billions (an alias
# bomb), which any message or loop over the data would expand; the largest real matrix or catalog holds thousands
MAX_YAML_VALUES = 100_000


# ---- YAML ------------------------------------------------------------------------------------------------------
class YamlLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe loading with YAML 1.2 floats: 1e-4, 5E-3 and .5 are numbers, not strings. libyaml's parser where
    PyYAML has it: the workflow parses every rendered config at start-up (7x faster than the pure-Python one)."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def yaml_problem(err: Exception) -> str:
    """What is wrong with a YAML text, in one line, for a message after the file's name."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = getattr(err, "problem", None) or str(err).replace("\n", " ")
    if isinstance(err, yaml.constructor.ConstructorError):  # e.g. !!python/object: only plain data is read
        return f"not valid YAML here{where}: tags that build Python objects are refused, plain values only ({what})"
    return f"not valid YAML{where}: {what}"


def load_yaml(text: str, file: str):
    """A YAML text read with YAML 1.2 numbers (1e-2 is a float); errors name `file`. A document that expands
    (aliases followed) to more than MAX_YAML_VALUES values, or refers to itself, is refused."""
    try:
        data = yaml.load(text, Loader=YamlLoader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: {yaml_problem(err)}") from err
    count = expanded_size(data)
    if count is None:
        raise ConfigError(f"{file}: a YAML alias refers to a value that contains it (a recursive document); write "
                          f"the values out")
    if count > MAX_YAML_VALUES:
        raise ConfigError(f"{file}: its aliases expand to {count:,} values (at most {MAX_YAML_VALUES:,} are read); "
                          f"write the values out instead of nesting aliases")
    return data


def expanded_size(data) -> int | None:
    """How many values `data` holds with every shared (aliased) list or mapping counted each time it appears; None
    for a recursive structure. Each distinct object is visited once, so an alias bomb is counted, not expanded."""
    sizes: dict[int, int | None] = {}

    def size(value) -> int | None:
        if not isinstance(value, (list, dict)):
            return 1
        if id(value) in sizes:
            return sizes[id(value)]  # None while it is being counted: a cycle
        sizes[id(value)] = None
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        total = 1
        for child in children:
            counted = size(child)
            if counted is None:
                return None
            total += counted
        sizes[id(value)] = total
        return total

    return size(data)


def read_yaml(path: str | Path):
    """A YAML file read with YAML 1.2 numbers; errors name the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    return load_yaml(text, str(path))


# ---- hints -----------------------------------------------------------------------------------------------------
def closest(value, allowed) -> str:
    """' (did you mean 'x'?)' for the closest allowed value, or ''."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def listed(allowed) -> str:
    return ", ".join(str(a) for a in allowed) or "none"


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict, _SHOWN.maxstring, _SHOWN.maxother = 3, 8, 8, 80, 80


def shown(value) -> str:
    """repr(value) for a message, cut short: a value from a file may be huge (an alias bomb expands to gigabytes)."""
    return _SHOWN.repr(value)


# ---- values ----------------------------------------------------------------------------------------------------
def expected(key) -> str:
    """What a settings-table entry accepts, in words: 'an integer', 'true or false or auto', ..."""
    if isinstance(key.type, tuple):
        return " or ".join(str(c).lower() for c in key.choices)
    return TYPE_WORDS[key.type]


def check_value(where: str, key, value):
    """`value` checked against a settings-table entry (steermoe.declare.settings.Key); returns it in the entry's type
    (an int where a float is wanted becomes a float, a string where a list is wanted a one-item list)."""
    if value is None:
        if key.default is REQUIRED:
            raise ConfigError(f"{where}: required, but empty")
        return None
    wanted = key.type
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if wanted is list and isinstance(value, str):
        value = [value]
    if not isinstance(value, wanted) or (wanted in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{where}: must be {expected(key)}, got {shown(value)} ({type(value).__name__})")
    if wanted is float and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if key.forbidden is not None and value == key.forbidden[0]:
        raise ConfigError(f"{where}: {value!r} {key.forbidden[1]}")
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"{where}: {shown(value)} is not one of {', '.join(map(str, key.choices))}")
    if key.positive and value <= 0:
        raise ConfigError(f"{where}: must be greater than 0, got {value!r}")
    if key.minimum is not None and value < key.minimum:
        raise ConfigError(f"{where}: must be at least {key.minimum}, got {value!r}")
    if key.maximum is not None and value > key.maximum:
        raise ConfigError(f"{where}: must be at most {key.maximum}, got {value!r}")
    if wanted is list and not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: must be a list of non-empty strings, got {shown(value)}")
    return value


def parse_bool(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ConfigError(f"{where}: {value!r} is not true or false")


def check_mapping(where: str, value, allowed, required=()) -> dict:
    """A mapping whose keys are all in `allowed` and hold every `required` key."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping, got {shown(value)}")
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {shown(key)}{closest(key, allowed)}; valid keys: "
                              f"{listed(allowed)}")
    for key in required:
        if value.get(key) in (None, ""):
            raise ConfigError(f"{where}: '{key}' is required")
    return value


# ---- names and paths -------------------------------------------------------------------------------------------
def is_safe_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and ".." not in name


def check_safe_path(where: str, value: str, relative: bool = True) -> str:
    """A path that reaches file names and shell commands: no spaces or shell characters; from the matrix also no
    absolute path and no '..' (the matrix names files inside the workflow; the catalog holds the machine's paths)."""
    parts = PurePosixPath(value).parts
    if not PATH_RE.match(value) or (relative and (value.startswith("/") or ".." in parts)):
        rules = "letters, digits, '.', '_', '-', '+' and '/' (no spaces or shell characters such as ; $ ` ( ) & | *)"
        if relative:
            rules += "; a path relative to the workflow folder, without '..' (machine paths go in the catalog)"
        raise ConfigError(f"{where}: {value!r} is not an allowed path: use {rules}")
    return value
