#!/usr/bin/env bash
# Installs everything speechkit needs on a Debian/Ubuntu machine with Python >= 3.11:
#   - system packages: FFmpeg's shared libraries (audio decoding), espeak-ng (the offline demo's voices),
#     libsndfile (soundfile), python3-venv where missing; with dev, Chromium (the tests' browser);
#   - a virtual environment in .venv with speechkit and its pinned dependencies (pyproject.toml).
# Usage: ./install.sh          runtime only
#        ./install.sh dev      plus the test tools and the docs site's
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"
extras="${1:-}"

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      python=$candidate; break
    fi
  done
fi
[ -n "$python" ] || { echo "install.sh: speechkit needs Python >= 3.11 (set PYTHON=/path/to/python)" >&2; exit 1; }

missing=()
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
ldconfig -p 2>/dev/null | grep -q libsndfile || missing+=(libsndfile1)
"$python" -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# dev: the tests open report.html in a real browser (headless, driven over its DevTools protocol): Debian's Chromium
[ "$extras" = "dev" ] && ! command -v chromium >/dev/null && missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "install.sh: installing system packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$python" -m venv .venv
target="."
[ "$extras" = "dev" ] && target=".[dev]"
# uv installs what pip would (the same versions, checked against pip's freeze) in a fraction of the time (on 2
# cores, about 1 min against 3, a fifth of the test command's budget); pip's find-links and index settings are passed
# on to it. Bytecode is compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE is set (as in CI), every
# process would otherwise compile transformers anew (7 s more per start-up, and the tests start hundreds).
# Where uv cannot be installed, pip installs everything itself.
if .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.10" 2>/dev/null; then
  links=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
  options=(--quiet --compile-bytecode --python .venv/bin/python)
  for link in $links; do options+=(--find-links "$link"); done
  [ -n "${PIP_INDEX_URL:-}" ] && options+=(--index-url "$PIP_INDEX_URL")
  .venv/bin/python -m uv pip install "${options[@]}" -e "$target"
else
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
fi
echo "install.sh: ready. Run: .venv/bin/python train.py experiment=demo"
