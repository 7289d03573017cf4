"""Generate Python modules and typed stubs for protos/forge/v1 into gen/ (imports read `forge.v1`).

Run `python tools/gen_protos.py` after editing a .proto file; a test regenerates into a temporary
folder and fails when the committed code is out of step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
DEFAULT_OUT = REPO_ROOT / "gen"
PACKAGE_MARKERS = ("forge/__init__.py", "forge/v1/__init__.py", "forge/py.typed")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "forge" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    # grpc_tools ships the well-known types (timestamp, duration) next to its own module.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    # mypy-protobuf's plugins live beside this interpreter; don't rely on an activated venv's PATH.
    plugins = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={plugins / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugins / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    for marker in PACKAGE_MARKERS:
        (out_dir / marker).touch()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
