#!/usr/bin/env bash
# Kaldi/icefall-style option parsing, sourced by prepare.sh scripts:
#
#   stage=0; vocab_size=500
#   . "$(dirname "$0")/../../shared/parse_options.sh"
#
# turns "--vocab-size 256" or "--vocab-size=256" into vocab_size=256. Only
# variables that the script already defines can be set; an unknown flag or a
# missing value is an error that names the flag. "--help" prints the flags.

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "Usage: $0 [options]; options and their defaults:"
      for __v in ${__option_names:-}; do
        echo "  --${__v//_/-} ${!__v}"
      done
      exit 0 ;;
    --*=*)
      __name="${1%%=*}"; __value="${1#*=}"; shift ;;
    --*)
      __name="$1"
      if [ $# -lt 2 ]; then
        echo "$0: option $__name needs a value" >&2; exit 1
      fi
      __value="$2"; shift 2 ;;
    *)
      echo "$0: unexpected argument '$1' (options look like --stage 2)" >&2; exit 1 ;;
  esac
  __var="${__name#--}"; __var="${__var//-/_}"
  if [[ ! "$__var" =~ ^[a-z_][a-z0-9_]*$ ]] || [ -z "${!__var+set}" ]; then
    echo "$0: unknown option $__name (try --help)" >&2; exit 1
  fi
  printf -v "$__var" '%s' "$__value"
done
unset __name __value __var __v
true
