# Sourced by the benchmark scripts that run Blender's Cycles: makes sure the venv
# $XDG_CACHE_HOME/rayfarm-bench/venv (default ~/.cache) holds bpy==$BPY_VERSION, and sets VENV.
# bpy 5.0 is built for CPython 3.11 only.
BPY_VERSION=${BPY_VERSION:-5.0.1}
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/rayfarm-bench/venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import bpy" 2>/dev/null; then
  PY=$(command -v python3.11 || true)
  if [ -z "$PY" ]; then
    echo "error: the bpy wheel needs python3.11, which is not on PATH" >&2
    exit 2
  fi
  echo "installing bpy==$BPY_VERSION into $VENV" >&2
  "$PY" -m venv "$VENV"
  nice -n 19 "$VENV/bin/pip" install -q "bpy==$BPY_VERSION"
fi
