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

# mark_done MARKER PARAMS: written only after the stage succeeded.
mark_done() {
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$2" > "$1.tmp" && mv "$1.tmp" "$1"
}
