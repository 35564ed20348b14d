"""Print the requirements of one extra of pyproject.toml, one per line: the images install
their package sets from the project's own extras, e.g.

    python deploy/requirements.py server > requirements.txt && pip install -r requirements.txt

(Python >= 3.11: it reads the file with tomllib.)
"""

import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

if __name__ == "__main__":
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    if len(sys.argv) != 2 or sys.argv[1] not in extras:
        sys.exit(f"usage: requirements.py EXTRA (one of {', '.join(extras)})")
    print("\n".join(extras[sys.argv[1]]))
