#!/bin/sh
# Builds llmship as an AWS Lambda layer (an external extension):
#
#   deploy/lambda/build.sh [--arch x86_64|arm64] [--python 3.12] [--with-boto3] [--no-deps] [--out DIR]
#
# Layout (a layer is unpacked under /opt):
#   extensions/llmship   the launcher Lambda starts at init (deploy/lambda/extensions/llmship)
#   llmship/lib/         the llmship package and its dependencies, for the target's CPU and Python
# and DIR.zip of it, for `aws lambda publish-layer-version --zip-file fileb://DIR.zip`.
#
# Dependencies are binary wheels for manylinux2014 on --arch and --python, fetched by pip from PyPI
# (run it on Linux: pip evaluates the dependencies' environment markers on this machine). --with-boto3 adds
# boto3, for DD_API_KEY_SECRET_ARN outside a runtime that ships it. --no-deps packs llmship alone (tests).
# llmship goes in as its Python sources: the optional compiled span encoder is not built, and the
# pure-Python one runs (the same output; see src/llmship/sinks/spanenc.py).
set -eu

arch=x86_64 python_version=3.12 with_boto3="" deps=1
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="$repo/dist/lambda-layer"
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --python) python_version="$2"; shift 2 ;;
    --with-boto3) with_boto3=boto3; shift ;;
    --no-deps) deps=""; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "build.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$arch" in
  x86_64) platform=manylinux2014_x86_64 ;;
  arm64) platform=manylinux2014_aarch64 ;;
  *) echo "build.sh: --arch is x86_64 or arm64, not $arch" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"

rm -rf "$out" "$out.zip"
mkdir -p "$out/extensions" "$out/llmship/lib"
cp "$here/extensions/llmship" "$out/extensions/llmship"
chmod 755 "$out/extensions/llmship"
# The package's sources and data, without build products or caches.
(cd "$repo/src" && find llmship -type f \( -name '*.py' -o -path 'llmship/data/*' \) ! -path '*/__pycache__/*' \
  -exec sh -c 'mkdir -p "$0/$(dirname "$1")" && cp "$1" "$0/$1"' "$out/llmship/lib" {} \;)

if [ -n "$deps" ]; then
  # The [project] dependencies of pyproject.toml, one per line (markers included).
  "$python" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$repo/pyproject.toml" > "$out/requirements.txt"
  [ -n "$with_boto3" ] && echo boto3 >> "$out/requirements.txt"
  "$python" -m pip install --quiet --target "$out/llmship/lib" --platform "$platform" --implementation cp \
    --python-version "$python_version" --only-binary=:all: -r "$out/requirements.txt"
  rm "$out/requirements.txt"
fi

# zip, keeping the launcher's executable bit (zipfile stores each file's mode)
(cd "$out" && "$python" -c 'import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk("."):
        for name in sorted(files):
            z.write(os.path.join(root, name), os.path.relpath(os.path.join(root, name), "."))' "$out.zip")
echo "llmship layer: $out ($out.zip)"
