#!/usr/bin/env bash
# Helpers for prepare.sh stages, sourced after parse_options.sh.

log() {
  # log message: "2024-01-01 12:00:00 (prepare.sh:42:main) message"
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

# stage_done MARKER PARAMS
#   true if MARKER exists and was written with the same PARAMS (the stage is
#   skipped); false if it does not exist (run the stage, then mark_done);
#   exits with an error if it was written with other PARAMS, since silently
#   reusing outputs made with other flags would be wrong.
stage_done() {
  local marker=$1 params=$2
  [ -f "$marker" ] || return 1
  if [ "$(cat "$marker")" != "$params" ]; then
    echo "$0: $marker was made with:" >&2
    echo "    $(cat "$marker")" >&2
    echo "  but this run asks for:" >&2
    echo "    $params" >&2
    echo "  delete $(dirname "$marker") (and later stages' outputs) to redo it, or use the old flags" >&2
    exit 1
  fi
  return 0
}

# stage_begin MARKER PARAMS [OUTPUT ...]
#   called when a stage starts (after stage_done said it is not done): records
#   PARAMS in MARKER.started. If an earlier run of the stage was stopped
#   part-way with other PARAMS, its partial OUTPUTs (files or folders) are
#   removed first, so that outputs made with other flags are never reused;
#   with no OUTPUT given it refuses instead. A re-run with the same PARAMS
#   keeps them (the stage's scripts resume).
stage_begin() {
  local marker=$1 params=$2
  shift 2
  local started=$marker.started
  if [ -f "$started" ] && [ "$(cat "$started")" != "$params" ]; then
    if [ $# -eq 0 ]; then
      echo "$0: an interrupted run of this stage was made with:" >&2
      echo "    $(cat "$started")" >&2
      echo "  but this run asks for:" >&2
      echo "    $params" >&2
      echo "  delete its partial outputs and $started to redo it, or use the old flags" >&2
      exit 1
    fi
    log "$started: an interrupted run with other flags ($(cat "$started")); removing its partial outputs: $*"
    rm -rf -- "$@"
  fi
  mkdir -p "$(dirname "$marker")"
  printf '%s\n' "$params" > "$started.tmp" && mv "$started.tmp" "$started"
}

# mark_done MARKER PARAMS: written only after the stage succeeded.
mark_done() {
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" > "$1.tmp" && mv "$1.tmp" "$1"
  rm -f "$1.started"
}
