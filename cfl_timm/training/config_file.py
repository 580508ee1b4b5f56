"""The one reader of YAML config files (train.py's ``-c/--config``, the OLTR trainer's ``--config``).

A config must be a non-empty UTF-8 YAML mapping of one document that gives each key once (plain YAML keeps the last
of two equal keys silently). Every defect is a ``ValueError`` naming the file, so a tool's command line reports it
as a one-line usage error.
"""
import os
from typing import Any

import yaml

__all__ = ['read_config_file']


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f'duplicate key {key!r}')
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str | os.PathLike) -> dict[Any, Any]:
    """The mapping a YAML config file holds.

    Raises:
        ValueError: The file is missing, not UTF-8, not valid YAML, repeats a key, is empty or holds no mapping.
    """
    if not os.path.isfile(path):
        raise ValueError(f'Config file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            config = yaml.load(f, Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise ValueError(f'Config file {path}: key {e.key!r} appears twice (line {e.line}); give each key once.') \
            from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f'Config file {path} is not valid YAML: {" ".join(str(e).split())[:200]}') from None
    if config is None:  # an empty file, or only comments: most likely the wrong file
        raise ValueError(f'Config file {path} is empty: it must hold a mapping of names to values.')
    if not isinstance(config, dict):
        raise ValueError(f'Config file {path} must hold a mapping of names to values, got '
                         f'{type(config).__name__}.')
    return config
