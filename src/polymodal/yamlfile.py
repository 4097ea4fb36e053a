"""Reading the YAML that users write (run configs, `--set` values, dataset specs, recipes): one
loader, stricter than `yaml.safe_load` in two ways.

* A key given twice in one mapping is an error naming the file, the line and the key. PyYAML
  keeps the second silently, so a repeated `optim:` block used to replace the first one.
* Only `true` / `false` (any case) are booleans. YAML 1.1 also reads `yes`, `no`, `on` and `off`
  as booleans, which turned the documented `precision: no` into `False`; here they stay
  strings, and a config field that wants a boolean accepts them (polymodal.train.config).
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import yaml

from polymodal.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (list, dict)) and key in seen:
                    raise _DuplicateKey(key, seen[key], key_node.start_mark.line + 1)
                if not isinstance(key, (list, dict)):
                    seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(f"key {key!r} is given twice (first on line {first}); keep one, merging what each says")
        self.again = again


# YAML 1.2 booleans: drop PyYAML's bool resolver (yes/no/on/off) and add back true/false only.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text strictly (see the module docs); a ConfigError names `source` and the line.

    Args:
        source: where the text came from, for messages (a file, "--set a.b=c").
    """
    stream = io.StringIO(text)
    stream.name = source  # PyYAML's messages say `in "<source>", line 2, column 1`
    try:
        return yaml.load(stream, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}:{exc.again}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None


def read_yaml(path: str | Path) -> Any:
    """`load_yaml` of a file; an unreadable file is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read this YAML file ({exc})") from None
    return load_yaml(text, str(path))
