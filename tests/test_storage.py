"""Trial storage: folders and s3:// locations, on an S3-compatible store named by one setting
(AWS_ENDPOINT_URL). A real sweep on such a store (moto's S3 server): test_tracking_server.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs

from pipeline import storage


def test_a_folder_and_an_s3_location_resolve_to_their_filesystems(tmp_path: Path) -> None:
    filesystem, path = storage.locate(str(tmp_path / "ray"))
    assert isinstance(filesystem, pafs.LocalFileSystem) and path == str(tmp_path / "ray")
    filesystem, path = storage.locate("s3://bucket/hpo/", "http://minio.local:9000")
    assert isinstance(filesystem, pafs.S3FileSystem) and path == "bucket/hpo"
    assert storage.for_ray("s3://bucket/hpo") == ("s3://bucket/hpo", None), "AWS: Ray's own"
    path, filesystem = storage.for_ray("s3://bucket/hpo", "https://s3.example.com")
    assert path == "bucket/hpo" and isinstance(filesystem, pafs.S3FileSystem)
