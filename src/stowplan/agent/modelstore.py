"""Resolve a model URI to a local file: ``file://`` (absolute, or relative to the manifest's
folder), a plain absolute path, or ``http(s)://`` (downloaded once into the cache directory).

Callers: :mod:`stowplan.agent.serving` when it loads a model. Raises ModelLoadError only; never
opens the model (that is :mod:`stowplan.agent.runtime`'s job).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from stowplan.agent.errors import ModelLoadError

MAX_DOWNLOAD_BYTES = 4 * 1024**3


def resolve_uri(
    uri: str, cache_dir: Path, base_dir: Path | None = None, timeout_s: float = 60.0
) -> Path:
    """Return a local path holding the model named by ``uri``."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        return _download(uri, cache_dir, timeout_s)
    if parsed.scheme == "file":
        raw = unquote(parsed.netloc + parsed.path)
    elif parsed.scheme == "":
        raw = uri
    else:
        raise ModelLoadError(f"unsupported model URI scheme {parsed.scheme!r} in {uri!r}")
    path = Path(raw)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path} (from {uri!r})")
    return path


def _download(uri: str, cache_dir: Path, timeout_s: float) -> Path:
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = Path(urlparse(uri).path).name or "model.onnx"
    target = cache_dir / f"{digest}-{name}"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        with httpx.stream("GET", uri, timeout=timeout_s, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise ModelLoadError(f"GET {uri} answered HTTP {resp.status_code}")
            size = 0
            with tmp.open("wb") as out:
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise ModelLoadError(f"{uri} is larger than {MAX_DOWNLOAD_BYTES} bytes")
                    out.write(chunk)
    except httpx.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"cannot download {uri}: {exc}") from exc
    except ModelLoadError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(target)
    return target
