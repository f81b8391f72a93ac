#!/usr/bin/env bash
# A small Zipformer against run.sh's small pruned_transducer_stateless3 on the
# synth corpus, at EQUAL training time on a 2-core machine: both train at the
# same time, one process with one thread each (one core each), for
# --minutes of wall-clock time, then both are stopped with SIGTERM (the
# trainer saves checkpoint-<batch>.pt) and decoded with greedy search on the
# test split and the held-out sentences by the same code
# (benchmarks/greedy_wer.py). Prints seconds per update, seconds of audio
# per second and the WERs; the figures are in egs/synth/ASR/RESULTS.md.
#
#   benchmarks/zipformer_vs_pts3.sh --minutes 35 --work-dir /tmp/zvp
#
# The corpus must exist (egs/synth/ASR/prepare.sh; RESULTS.md used
# ./prepare.sh --num-train 20000). Both models see the same batches' sizes
# (--max-duration 50, run.sh's value per process), no SpecAugment (run.sh's
# first phase), the same BPE model.

set -eou pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
recipe_dir=$root/egs/synth/ASR
python=${PYTHON:-python3}
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

minutes=25
work_dir=zipformer_vs_pts3
vocab_size=256
max_duration=50
save_every_n=100
# Zipformer size: one layer per stack (icefall's "small" has two and wider
# stacks; on one core it does fewer than half as many updates).
zipformer_flags="--num-encoder-layers 1,1,1,1,1,1 --feedforward-dim 384,512,512,512,512,512
  --encoder-dim 128,192,192,192,192,192 --encoder-unmasked-dim 128,128,128,128,128,128
  --decoder-dim 256 --joiner-dim 256 --use-ctc 1 --ref-duration 10 --warm-step 300"
# run.sh's pts3 flags (its first phase).
pts3_flags="--num-encoder-layers 4 --encoder-dim 144 --nhead 4 --dim-feedforward 576
  --decoder-dim 256 --joiner-dim 256 --initial-lr 0.005 --lr-batches 5000 --lr-epochs 20
  --model-warm-step 100 --average-period 10 --dropout 0.0 --layer-dropout 0.0"

usage() {
  echo "usage: $0 [--minutes N ($minutes)] [--work-dir DIR ($work_dir)] [--vocab-size N ($vocab_size)]" \
    "[--max-duration S ($max_duration)]" >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes=$2; shift 2 ;;
    --work-dir) work_dir=$2; shift 2 ;;
    --vocab-size) vocab_size=$2; shift 2 ;;
    --max-duration) max_duration=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "$0: unknown option $1" >&2; usage ;;
  esac
done
lang_dir=$recipe_dir/data/lang_bpe_$vocab_size
fbank=$recipe_dir/data/fbank
for f in "$lang_dir/bpe.model" "$fbank/synth_cuts_train.jsonl.gz" "$fbank/synth_cuts_test.jsonl.gz" \
         "$fbank/synth_cuts_heldout.jsonl.gz"; do
  [ -f "$f" ] || { echo "$0: $f not found: run egs/synth/ASR/prepare.sh first" >&2; exit 2; }
done
if [ -e "$work_dir" ]; then
  echo "$0: --work-dir $work_dir exists; remove it or choose another" >&2
  exit 2
fi
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)

common=(--world-size 1 --bpe-model "$lang_dir/bpe.model" --manifest-dir "$fbank"
  --max-duration "$max_duration" --num-workers 0 --enable-spec-aug False --num-epochs 100
  --save-every-n "$save_every_n" --keep-last-k 0 --log-interval 10 --tensorboard False
  --average-period 10)  # run.sh's value; zipformer's default (200) leaves short runs no window
cd "$recipe_dir"
# shellcheck disable=SC2086
$python zipformer/train.py "${common[@]}" --exp-dir "$work_dir/zipformer" $zipformer_flags \
  > "$work_dir/zipformer.log" 2>&1 &
zpid=$!
# shellcheck disable=SC2086
$python pruned_transducer_stateless3/train.py "${common[@]}" --exp-dir "$work_dir/pruned_transducer_stateless3" $pts3_flags \
  > "$work_dir/pruned_transducer_stateless3.log" 2>&1 &
ppid=$!
echo "$(date +%T) training zipformer (pid $zpid) and pts3 (pid $ppid) for $minutes min; logs in $work_dir"
start=$(date +%s)
sleep $((minutes * 60))
# CPU seconds each got (equal to each other unless one crashed; less than the
# wall-clock time when other jobs share the cores).
declare -A cpu=([zipformer]=$(ps -o times= -p "$zpid" | tr -d " ")
  [pruned_transducer_stateless3]=$(ps -o times= -p "$ppid" | tr -d " "))
kill -TERM "$zpid" "$ppid" 2>/dev/null || true
wait "$zpid" || true
wait "$ppid" || true
elapsed=$(( $(date +%s) - start ))

# The newest batch checkpoint of an exp dir.
last_batch() {
  ls "$1"/checkpoint-*.pt | sed 's/.*checkpoint-\([0-9]*\)\.pt/\1/' | sort -n | tail -n 1
}
# Speed and greedy WERs of one model: the last weights, and the mean model
# over about the last third of the updates (icefall's averaged model between
# two checkpoints), with 1 and 3 tokens per frame at most.
report() {
  local name=$1 b avg line
  b=$(last_batch "$work_dir/$name")
  avg=$(( b / 3 / save_every_n ))
  [ "$avg" -ge 1 ] || avg=1
  [ "$b" -gt "$save_every_n" ] || { echo "$name: only $b updates; no window to average" >&2; avg=0; }
  line=$(grep 'batch size' "$work_dir/$name.log" | tail -n 1 | sed 's/.*; lr [^;]*; //' || true)
  echo "$name: $b updates in $elapsed s ($(awk "BEGIN {printf \"%.2f\", $elapsed / $b}") s per update)," \
    "${cpu[$name]:-?} CPU s ($(awk "BEGIN {printf \"%.2f\", ${cpu[$name]:-0} / $b}") CPU s per update);" \
    "last log line: $line"
  for setting in "1 False 1" "$avg True 1" "$avg True 3"; do
    set -- $setting
    [ "$1" -ge 1 ] || continue
    $python "$root/benchmarks/greedy_wer.py" --recipe-dir "$recipe_dir/$name" \
      --exp-dir "$work_dir/$name" --iter "$b" --avg "$1" --use-averaged-model "$2" \
      --max-sym-per-frame "$3" --tokens "$lang_dir/tokens.txt" --errs-dir "$work_dir/$name" \
      "$fbank/synth_cuts_test.jsonl.gz" "$fbank/synth_cuts_heldout.jsonl.gz" 2>>"$work_dir/decode.log" \
      | sed "s|^|$name --iter $b --avg $1 --use-averaged-model $2 --max-sym-per-frame $3\t|"
  done
}
# One decoding process per model, at the same time (one core each).
report zipformer > "$work_dir/zipformer.result" &
report pruned_transducer_stateless3 > "$work_dir/pts3.result" &
wait
cat "$work_dir/zipformer.result" "$work_dir/pts3.result"
