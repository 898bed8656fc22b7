"""The bundle manifest: a JSON data contract shared by the exporter and the phone-side runtime.

Torch-free and numpy-free on purpose: an app (or the ARM64 check) reads it with nothing but the stdlib.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fedge.edge.errors import BundleError

MANIFEST_NAME = "manifest.json"
FORMAT = "fedge-edge-bundle"
FORMAT_VERSION = 1


def file_digest(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_manifest(**fields: Any) -> dict[str, Any]:
    """A manifest dict with the format header and an empty file table, updated by ``fields``."""
    manifest: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": {}}
    manifest.update(fields)
    return manifest


def register_file(bundle: str | Path, manifest: dict[str, Any], role: str, filename: str) -> dict[str, Any]:
    """Record ``filename`` (relative to ``bundle``) under ``role`` with its size and sha256."""
    path = Path(bundle) / filename
    entry = {"path": filename, "bytes": path.stat().st_size, "sha256": file_digest(path)}
    manifest["files"][role] = entry
    return entry


def write_manifest(bundle: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` into ``bundle`` (pretty-printed, keys in insertion order)."""
    path = Path(bundle) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(bundle: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and check a bundle's manifest; with ``verify`` every listed file's size and sha256 too.

    Raises :class:`BundleError` naming the file and what to do when anything is missing or altered.
    """
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{bundle} is not an edge bundle: {MANIFEST_NAME} is missing; run `fed-edge export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is corrupt ({e}); re-export the bundle") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format_version {manifest.get('format_version')}, this runtime reads "
            f"{FORMAT_VERSION}; re-export the bundle with a matching fedge"
        )
    for key in ("input", "outputs", "files"):
        if key not in manifest:
            raise BundleError(f"{path} lacks the '{key}' section; re-export the bundle")
    if verify:
        for role, entry in manifest["files"].items():
            verify_file(bundle, role, entry)
    return manifest


def verify_file(bundle: Path, role: str, entry: dict[str, Any]) -> Path:
    """Check one file entry (exists, size, sha256) and return its path."""
    path = bundle / entry["path"]
    if not path.is_file():
        raise BundleError(f"bundle {bundle}: {role} file {entry['path']} is missing")
    size = path.stat().st_size
    if size != entry["bytes"] or file_digest(path) != entry["sha256"]:
        raise BundleError(
            f"bundle {bundle}: {role} file {entry['path']} does not match its manifest hash "
            f"({size} bytes, expected {entry['bytes']}); the file is corrupt or was replaced, re-export the bundle"
        )
    return path
