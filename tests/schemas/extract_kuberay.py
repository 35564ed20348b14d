"""Write the OpenAPI schemas of KubeRay's CRDs (RayCluster, RayJob, RayCronJob) as the tests
read them: tests/schemas/kuberay-VERSION/KIND.json.gz.

    python tests/schemas/extract_kuberay.py /path/to/kuberay-checkout v1.6.1 v1.7.0

Takes ray-operator/config/crd/bases/ray.io_*.yaml at each git tag (via `git show`).
"""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import yaml

CRDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}


def main(checkout: str, tags: list[str]) -> None:
    for tag in tags:
        folder = Path(__file__).parent / f"kuberay-{tag.removeprefix('v')}"
        folder.mkdir(exist_ok=True)
        for kind, plural in CRDS.items():
            path = f"{tag}:ray-operator/config/crd/bases/ray.io_{plural}.yaml"
            text = subprocess.run(
                ["git", "-C", checkout, "show", path], capture_output=True, text=True, check=True
            ).stdout
            crd = yaml.safe_load(text)
            [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = version["schema"]["openAPIV3Schema"]
            with gzip.open(folder / f"{kind}.json.gz", "wt") as stream:
                json.dump(schema, stream, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
