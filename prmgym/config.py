"""Config loading: YAML files and ``key=value`` overrides onto dataclass configs.

Configs are plain dataclasses (fields carry help text in ``metadata["help"]`` and reject
impossible values in ``__post_init__``). This module turns a YAML mapping into such a
dataclass, nested sections included, and says exactly what is wrong when it cannot:

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Opt:
...     lr: float = field(default=1e-3, metadata={"help": "learning rate"})
...     steps: int = 10
>>> from_dict(Opt, apply_overrides({"lr": "1e-4"}, ["steps=20"]))
Opt(lr=0.0001, steps=20)
>>> try:
...     from_dict(Opt, {"step": 3})
... except ConfigError as e:
...     print(e)
unknown key 'step'; did you mean 'steps'? Valid keys: lr, steps

No torch here: importing configs costs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Mapping, Sequence


def help_field(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with help text (``metadata["help"]``); dict/list defaults are copied per instance.

    >>> @dataclasses.dataclass
    ... class C:
    ...     n: int = help_field(3, "how many")
    >>> field_help(C)
    {'n': 'how many'}
    """
    meta = {"help": help, **metadata}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and how to fix it."""


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping from ``path`` (an empty file is an empty mapping)."""
    import yaml

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist; pass the path of a YAML file (see examples/configs/)")
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping (key: value lines), got {type(data).__name__}")
    return data


def parse_override(item: str, flag: str = "--set") -> tuple[list[str], Any]:
    """``"trainer.lr=1e-5"`` -> (``["trainer", "lr"]``, ``1e-5``); the value is read as YAML.

    The one ``KEY=VALUE`` parser of the project: ``--set`` config overrides and ``--env-arg``
    environment keywords both go through it (``flag`` only names the option in errors).
    """
    import yaml

    if "=" not in item:
        raise ConfigError(f"bad {flag} {item!r}: write key=value (nested keys with dots, e.g. trainer.learning_rate=1e-5)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad {flag} {item!r}: empty key; write key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str] = (), flag: str = "--set") -> dict:
    """Return a copy of ``data`` with every ``key=value`` override applied (dots nest).

    >>> apply_overrides({}, ["difficulty=2", "source_kwargs.max_len=5", "task=gcd"], flag="--env-arg")
    {'difficulty': 2, 'source_kwargs': {'max_len': 5}, 'task': 'gcd'}
    """
    out = _deepcopy(dict(data))
    for item in overrides or ():
        keys, value = parse_override(item, flag)
        node = out
        for k in keys[:-1]:
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{flag} {item!r}: {k!r} is a value, not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def add_env_arg(parser: Any) -> None:
    """The ``--env-arg KEY=VALUE`` option (gym.make keywords) every command spells the same way;
    parse it with ``apply_overrides({}, args.env_arg, flag="--env-arg")``."""
    parser.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra gym.make keyword (repeatable), e.g. --env-arg difficulty=2; VALUE is read as YAML")


def add_precision_args(parser: Any) -> None:
    """``--dtype fp32|bf16|fp16`` and ``--device auto|cpu|cuda|cuda:N|mps``, spelled the same on every
    command (None when not given: the config's value, else the command's default)."""
    parser.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16", "float32", "bfloat16", "float16"),
                        help="compute precision (autocast; fp16 needs CUDA; a vLLM engine's dtype too); default: "
                        "the config's, else fp32")
    parser.add_argument("--device", default=None, help="torch device: auto (cuda if visible, else cpu) | cpu | cuda | "
                        "cuda:N | mps; default: the config's, else auto")


def add_set_arg(parser: Any, example: str = "trainer.learning_rate=1e-4") -> None:
    """The ``--set KEY=VALUE`` option (config overrides, stored in ``args.overrides``)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value (repeatable; dots nest), e.g. --set {example}")


def add_import_arg(parser: Any) -> None:
    """The ``--import MODULE`` option (stored in ``args.imports``): modules imported before
    anything is made, so the user's ``register_reasoning_env`` calls run first."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (repeatable): a module on sys.path or in the current directory, "
                             "or a .py file path, that registers your own envs")


def import_modules(names: Sequence[str], where: str = "--import") -> list:
    """Import each module in ``names`` (its registrations run); the current directory is
    searched too, and a name ending in ``.py`` (or containing a path separator) is loaded from
    that file. A module that fails to import is a `ConfigError` naming it and the cause."""
    import importlib
    import importlib.util
    import sys

    out = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: expected a module name such as 'mylab.envs', got {name!r}")
        try:
            if name.endswith(".py") or os.sep in name:
                path = os.path.abspath(name)
                if not os.path.isfile(path):
                    raise ConfigError(f"{where} {name}: no such file")
                mod_name = os.path.splitext(os.path.basename(path))[0]
                mod = sys.modules.get(mod_name)
                if mod is None or os.path.abspath(getattr(mod, "__file__", "") or "") != path:
                    spec = importlib.util.spec_from_file_location(mod_name, path)
                    mod = importlib.util.module_from_spec(spec)
                    sys.modules[mod_name] = mod
                    try:
                        spec.loader.exec_module(mod)
                    except BaseException:
                        del sys.modules[mod_name]
                        raise
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.insert(0, os.getcwd())
                mod = importlib.import_module(name)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001  (any failure of the user's module is reported, named)
            hint = (" Fix: run from the directory that holds it, add that directory to PYTHONPATH, "
                    "or pass the file path (--import path/to/module.py)") if isinstance(e, ModuleNotFoundError) else ""
            raise ConfigError(f"{where} {name}: the module failed to import: {type(e).__name__}: {e}.{hint}") from e
        out.append(mod)
    return out


def _deepcopy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def field_help(cls: type) -> dict[str, str]:
    """``{field name: help text}`` of a dataclass (for ``--help`` style listings)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: Mapping[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys, wrong types and the class's own
    ``__post_init__`` checks all raise `ConfigError` naming the key."""
    data = {} if data is None else data
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__} must be a mapping of its fields, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            names = sorted(fields)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            hint = hint or "."
            raise ConfigError(f"unknown key {_join(where, key)!r}{hint} Valid keys: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints.get(key, Any), _join(where, key))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}{e}") from e


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts/lists, ready for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} does not fit type {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; valid: {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        inner = args[0] if args and args[-1] is not Ellipsis or len(args) == 2 else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:  # YAML 1.1 reads "1e-5" as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value
