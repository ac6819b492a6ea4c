"""Print the project's requirements from pyproject.toml, one a line, for `pip install -r`.

    python3 docker/requirements.py [--extra NAME ...] [--without NAME ...]

The images install the dependencies from this list before the code is copied in, so editing the
code does not reinstall them; ``--without onnxruntime --extra gpu`` swaps in onnxruntime-gpu.
"""

import argparse
import re

import tomllib

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--pyproject", default="pyproject.toml")
parser.add_argument("--extra", action="append", default=[], help="add an optional-dependencies group")
parser.add_argument("--without", action="append", default=[], help="drop a requirement by its name")
args = parser.parse_args()

project = tomllib.load(open(args.pyproject, "rb"))["project"]
requirements = project["dependencies"] + [r for extra in args.extra for r in project["optional-dependencies"][extra]]
for requirement in requirements:
    if re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0] not in args.without:
        print(requirement)
