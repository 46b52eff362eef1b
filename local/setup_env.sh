# shellcheck shell=bash
# Shared set-up for run_local.sh and run_tests.sh (source it, then call setup_env).
#
# * Creates .venv with python3.11 (or python3 >= 3.11) if it does not exist.
# * Installs requirements-dev.txt (the lock requirements.txt plus dev tools) and
#   the project (-e .) only when requirements*.txt, setup.py or pyproject.toml
#   changed since the last install (a hash stamp in .venv/.requirements.sha256).
# * Places DuckDB's spatial extension where bqemulator expects it (offline).
# * Installs Debian's chromium and chromium-driver (the dashboard's browser
#   test) with apt-get when they are missing, as root (or with sudo -n); without
#   apt or root it says so and goes on (that test then skips, or fails in CI).
#   SKIP_BROWSER_SETUP=1 skips this step.
#
# Variables: VENV_DIR (default <repo>/.venv), PYTHON (interpreter for a new venv).
# After sourcing: REPO_ROOT, VENV_DIR, VENV_PY.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
VENV_PY="$VENV_DIR/bin/python"

_setup_log() { echo "[setup] $*" >&2; }

# Prints the first interpreter that is Python >= 3.11.
_pick_python() {
  local cand
  for cand in "${PYTHON:-}" python3.11 python3; do
    [ -n "$cand" ] || continue
    command -v "$cand" >/dev/null 2>&1 || continue
    if "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$cand"
      return 0
    fi
  done
  return 1
}

requirements_hash() {
  (cd "$REPO_ROOT" &&
    cat requirements.txt requirements-dev.txt setup.py pyproject.toml | sha256sum | cut -d' ' -f1)
}

ensure_venv() {
  local py stamp want
  if [ ! -x "$VENV_PY" ]; then
    if ! py="$(_pick_python)"; then
      _setup_log "ERROR: Python >= 3.11 is needed (python3.11 or python3) to create $VENV_DIR"
      return 1
    fi
    _setup_log "creating $VENV_DIR with $(command -v "$py") ($("$py" --version 2>&1))"
    "$py" -m venv "$VENV_DIR" || return 1
  fi
  stamp="$VENV_DIR/.requirements.sha256"
  want="$(requirements_hash)" || return 1
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    _setup_log "installing requirements-dev.txt and -e . into $VENV_DIR" \
      "(requirements changed; several minutes on a fresh machine)"
    (cd "$REPO_ROOT" && "$VENV_PY" -m pip install --quiet -r requirements-dev.txt -e .) || {
      _setup_log "ERROR: pip install failed (see above)"
      return 1
    }
    echo "$want" >"$stamp"
  fi
}

ensure_duckdb_spatial() {
  (cd "$REPO_ROOT" &&
    "$VENV_PY" -c 'from local.emulators import ensure_duckdb_spatial; ensure_duckdb_spatial()') || {
    _setup_log "ERROR: could not place DuckDB's spatial extension (needed by bqemulator)"
    return 1
  }
}

ensure_browser() {
  local sudo=()
  [ "${SKIP_BROWSER_SETUP:-0}" = 1 ] && return 0
  if command -v chromedriver >/dev/null 2>&1 &&
    { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    _setup_log "WARNING: chromium/chromedriver missing and no apt-get here: the dashboard's" \
      "browser test will skip (install chromium and its driver by hand)"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      _setup_log "WARNING: chromium/chromedriver missing and not root: run" \
        "'apt-get install -y chromium chromium-driver' as root for the browser test"
      return 0
    fi
  fi
  _setup_log "installing chromium and chromium-driver with apt-get (the browser test)"
  { "${sudo[@]}" apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq chromium chromium-driver \
      >/dev/null; } || {
    _setup_log "ERROR: apt-get install chromium chromium-driver failed (see above)"
    return 1
  }
}

setup_env() {
  ensure_venv && ensure_duckdb_spatial && ensure_browser
}
