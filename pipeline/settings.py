"""Where runs, trial state and data are kept: resolved once by the CLI from flags and the
environment, then handed down to every stage as one value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The stores and the cluster a command works with."""

    tracking_uri: str  # MLflow: sqlite:///.../mlflow.db, postgresql://..., http(s)://server
    artifact_root: Path | None  # local stores: artifacts under mlruns/; servers choose their own
    storage: str  # Ray trial storage: an absolute folder or a URI such as s3://bucket/path
    data_dir: Path  # downloaded data sets (MNIST, Fashion-MNIST)
    ray_address: str | None = None  # None: a local Ray
    code_version: str | None = None  # git commit of the code that runs
    storage_endpoint: str | None = None  # an S3-compatible store's URL, for s3:// storage
    spool_dir: Path = Path("mlruns/spool")  # tracking writes kept until the store accepts them
    outage_timeout: float = 600.0  # seconds to wait for a tracking store that is away
