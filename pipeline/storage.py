"""Where Ray keeps trial state and checkpoints: a folder (shared by every node on a cluster) or
an s3:// location, on AWS or on an S3-compatible store (MinIO, Ceph...) named by one setting,
the endpoint (AWS_ENDPOINT_URL, as boto3 and the aws CLI read it)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

log = logging.getLogger(__name__)


def locate(uri: str, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `uri` (a folder or s3://bucket/prefix) and the path on it; s3://
    goes to `endpoint` when one is given."""
    if uri.startswith("s3://") and endpoint:
        parts = urlsplit(endpoint)
        filesystem = pafs.S3FileSystem(
            endpoint_override=parts.netloc or parts.path, scheme=parts.scheme or "https"
        )
        return filesystem, uri.removeprefix("s3://").rstrip("/")
    if "://" not in uri:
        uri = Path(uri).absolute().as_uri()
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path


def for_ray(uri: str, endpoint: str | None = None) -> tuple[str, pafs.FileSystem | None]:
    """Ray's storage_path and storage_filesystem for `uri`: a filesystem of our own only where
    Ray, given the URI alone, would not reach it (an S3-compatible endpoint)."""
    if uri.startswith("s3://") and endpoint:
        filesystem, path = locate(uri, endpoint)
        return path, filesystem
    return uri, None


def remove(uri: str, endpoint: str | None = None) -> None:
    """Delete a folder of trial state (a finished sweep's); a failure is logged, not raised."""
    try:
        filesystem, path = locate(uri, endpoint)
        if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
            filesystem.delete_dir(path)
    except (OSError, pa.ArrowException) as exc:
        log.warning("could not remove the trial state at %s: %s", uri, exc)


FULL_BELOW_BYTES = 1 << 20  # less free than this: a checkpoint or Tune's state cannot be written


def full(uri: str) -> str | None:
    """Why the folder holding trial storage `uri` is full (its free bytes), None if it is not
    or cannot be told (object stores)."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    folder = Path(uri.removeprefix("file://"))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    return f"{free} bytes free" if free < FULL_BELOW_BYTES else None
