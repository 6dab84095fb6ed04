"""Reading a YAML mapping chosen by name (a file in a known folder) or by path, with one-line errors.
Spaces and hardware profiles are both chosen this way."""

from __future__ import annotations

from pathlib import Path

import yaml

from edgesearch.common.errors import InputError


def names_in(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def read_named_yaml(name_or_path: str | Path, folder: Path, kind: str) -> tuple[Path, dict]:
    """(path, mapping) of `folder/<name>.yaml`, or of the path itself when it has a suffix."""
    path = Path(name_or_path)
    if not path.suffix:
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(f"unknown {kind} {str(name_or_path)!r}; available: {', '.join(names_in(folder))}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{kind} {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{kind} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:
        raise InputError(f"{kind} {path} nests too deeply to read") from None
    except OSError as error:
        raise InputError(f"{kind} {path}: {error.strerror or error}") from None
    if not isinstance(raw, dict):
        raise InputError(f"{kind} {path.name}: expected a mapping at the top level")
    return path, raw
