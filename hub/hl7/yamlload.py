"""YAML loading that remembers line numbers, so every error can name file and line."""

from __future__ import annotations

from typing import Any

import yaml

from hub.hl7.errors import MappingFileError


class LDict(dict[str, Any]):
    """A mapping that knows the line of itself and of each key."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[str, int] = {}


class LList(list[Any]):
    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[int] = []


class _Loader(yaml.SafeLoader):
    pass


def _mapping(loader: _Loader, node: yaml.MappingNode) -> LDict:
    loader.flatten_mapping(node)
    out = LDict()
    out.line = node.start_mark.line + 1
    for k_node, v_node in node.value:
        key = loader.construct_object(k_node, deep=True)
        if not isinstance(key, str | int | float | bool):
            raise yaml.constructor.ConstructorError(
                None, None, "mapping keys must be scalars", k_node.start_mark
            )
        skey = str(key) if not isinstance(key, str) else key
        if skey in out:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {skey!r}", k_node.start_mark)
        out[skey] = loader.construct_object(v_node, deep=True)
        out.lines[skey] = k_node.start_mark.line + 1
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> LList:
    out = LList()
    out.line = node.start_mark.line + 1
    for item in node.value:
        out.append(loader.construct_object(item, deep=True))
        out.lines.append(item.start_mark.line + 1)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def load_yaml(text: str, path: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise MappingFileError(path, line, f"YAML error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise MappingFileError(path, None, f"YAML error: {exc}") from None


def line_of(doc: Any, path: list[Any] | tuple[Any, ...]) -> int | None:
    """Best line for a JSON path inside a loaded document."""
    node = doc
    line = getattr(doc, "line", None)
    for part in path:
        if isinstance(node, LDict) and part in node:
            line = node.lines.get(part, line)
            node = node[part]
        elif isinstance(node, LList) and isinstance(part, int) and part < len(node):
            line = node.lines[part] if part < len(node.lines) else line
            node = node[part]
        else:
            break
        inner = getattr(node, "line", None)
        if inner and not isinstance(node, LDict | LList):
            line = inner
    return line
