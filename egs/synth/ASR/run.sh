#!/usr/bin/env bash
# The main job: the whole recipe on the built-in corpus, on a CPU, offline.
#
#   cd egs/synth/ASR && ./run.sh
#
# Stages (--stage N --stop-stage M):
#   0 prepare.sh: synthesise the corpus, manifests, fbank, BPE, lang dir
#   1 train a small pruned_transducer_stateless3
#   2 decode the test set from the checkpoints (greedy and modified beam search)
#   3 export.py: average the checkpoints into exp/pretrained.pt
#   4 pretrained.py on held-out test files
#   5 decode.py on the exported model through epoch-9999.pt (the guide's way)
#   6 print the WER table
#
# Smaller/faster: ./run.sh --num-train 1000 --num-epochs 2 (see --help).

set -eou pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
python=${PYTHON:-python3}
# Idle OpenMP threads sleep instead of spinning: on 2 cores, spinning threads
# slow down the dataloader and anything else running.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

stage=0
stop_stage=100
# corpus (prepare.sh)
num_train=6000
num_dev=300
num_test=300
vocab_size=256
# model and training
exp_dir=pruned_transducer_stateless3/exp
num_epochs=26
avg=8
# Two training processes (DDP, gloo), one core each: on 2 cores, 1.34x the
# throughput of one process with two threads. --max-duration is per process,
# so an update sees 2 x 50 s of audio.
world_size=2
max_duration=50
num_encoder_layers=4
encoder_dim=144
nhead=4
dim_feedforward=576
decoder_dim=256
joiner_dim=256
initial_lr=0.005
lr_batches=5000
lr_epochs=20
model_warm_step=100
dropout=0.0
layer_dropout=0.0
# Training runs in two phases (train.py is called twice, the second call
# resuming from the first one's last epoch):
#   epochs 1 .. phase2_epoch-1: no SpecAugment, a slow learning-rate decay
#     (--lr-epochs lr_epochs), so that the model finds its alignments fast;
#   epochs phase2_epoch .. num_epochs: SpecAugment and a faster decay
#     (--lr-epochs phase2_lr_epochs), once the model fits the training
#     voices better than unseen ones.
# Together with no dropout this learns about twice as fast per epoch as
# icefall's regularised set-up on this little data (RESULTS.md).
phase2_epoch=15
phase2_lr_epochs=4
num_workers=0
beam_size=4
# Tokens greedy search may emit on one encoder frame (40 ms). icefall's
# default is 1; espeak-ng speaks fast and the model often emits a word's
# tokens together, so 1 costs about 4 points of WER here (RESULTS.md).
# Stage 2 decodes with both.
max_sym_per_frame=3

__option_names="stage stop_stage num_train num_dev num_test vocab_size exp_dir num_epochs avg
  max_duration num_encoder_layers encoder_dim nhead dim_feedforward decoder_dim joiner_dim
  initial_lr lr_batches lr_epochs model_warm_step dropout layer_dropout phase2_epoch
  phase2_lr_epochs world_size num_workers beam_size max_sym_per_frame"
. "$here/../../shared/parse_options.sh"
. "$here/../../shared/stage_utils.sh"

lang_dir=data/lang_bpe_${vocab_size}
recipe=./pruned_transducer_stateless3
start_time=$(date +%s)

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  log "Stage 0: prepare the corpus"
  ./prepare.sh --num-train "$num_train" --num-dev "$num_dev" --num-test "$num_test" \
    --vocab-size "$vocab_size"
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  train() {
    $python $recipe/train.py \
      --world-size "$world_size" \
      --exp-dir "$exp_dir" \
      --bpe-model "$lang_dir/bpe.model" \
      --max-duration "$max_duration" \
      --num-workers "$num_workers" \
      --num-encoder-layers "$num_encoder_layers" \
      --encoder-dim "$encoder_dim" \
      --nhead "$nhead" \
      --dim-feedforward "$dim_feedforward" \
      --decoder-dim "$decoder_dim" \
      --joiner-dim "$joiner_dim" \
      --initial-lr "$initial_lr" \
      --lr-batches "$lr_batches" \
      --model-warm-step "$model_warm_step" \
      --dropout "$dropout" \
      --layer-dropout "$layer_dropout" \
      --average-period 10 \
      --save-every-n 200 \
      --keep-last-k 5 \
      --log-interval 25 \
      "$@"
  }
  plain=$(( num_epochs < phase2_epoch - 1 ? num_epochs : phase2_epoch - 1 ))
  if [ $plain -ge 1 ]; then
    log "Stage 1: train epochs 1-$plain into $exp_dir (phase 1: no SpecAugment)"
    train --num-epochs "$plain" --enable-spec-aug False --lr-epochs "$lr_epochs"
  fi
  if [ $num_epochs -gt $plain ]; then
    log "Stage 1: train epochs $((plain + 1))-$num_epochs into $exp_dir (phase 2: SpecAugment)"
    train --start-epoch $((plain + 1)) --num-epochs "$num_epochs" --enable-spec-aug True \
      --lr-epochs "$phase2_lr_epochs"
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  for setting in "greedy_search 1" "greedy_search $max_sym_per_frame" "modified_beam_search 1"; do
    set -- $setting
    log "Stage 2: decode with $1 (max $2 per frame; epoch $num_epochs, avg $avg, averaged model)"
    $python $recipe/decode.py \
      --epoch "$num_epochs" --avg "$avg" --use-averaged-model True \
      --exp-dir "$exp_dir" --lang-dir "$lang_dir" \
      --max-duration 600 --num-workers 0 \
      --decoding-method "$1" --max-sym-per-frame "$2" --beam-size "$beam_size"
  done
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  log "Stage 3: export epoch $num_epochs, avg $avg to $exp_dir/pretrained.pt"
  $python $recipe/export.py \
    --exp-dir "$exp_dir" --tokens "$lang_dir/tokens.txt" \
    --epoch "$num_epochs" --avg "$avg" --use-averaged-model True
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  log "Stage 4: pretrained.py on three held-out test files"
  mapfile -t wavs < <(ls data/audio/synth/test/*.flac | head -n 3)
  $python $recipe/pretrained.py \
    --checkpoint "$exp_dir/pretrained.pt" --tokens "$lang_dir/tokens.txt" \
    --method greedy_search --max-sym-per-frame "$max_sym_per_frame" "${wavs[@]}"
  for w in "${wavs[@]}"; do
    id=$(basename "$w" .flac)
    echo "reference $id: $(zcat data/manifests/synth_supervisions_test.jsonl.gz | grep "\"$id\"" | sed 's/.*"text": "\([^"]*\)".*/\1/')"
  done
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  log "Stage 5: decode the exported model through epoch-9999.pt"
  ln -sfn pretrained.pt "$exp_dir/epoch-9999.pt"
  $python $recipe/decode.py \
    --epoch 9999 --avg 1 --use-averaged-model False \
    --exp-dir "$exp_dir" --lang-dir "$lang_dir" \
    --max-duration 600 --num-workers 0 \
    --decoding-method greedy_search --max-sym-per-frame "$max_sym_per_frame"
fi

if [ $stage -le 6 ] && [ $stop_stage -ge 6 ]; then
  log "Stage 6: WER on the held-out test set (voices and sentences unseen in training)"
  printf '%-22s %-78s %s\n' method "setting-model" WER
  for f in "$exp_dir"/*/wer-summary-test-*.txt; do
    method=$(basename "$(dirname "$f")")
    setting=$(basename "$f" .txt | sed 's/^wer-summary-test-//')
    printf '%-22s %-78s %s\n' "$method" "$setting" "$(tail -n 1 "$f" | cut -f 2)"
  done
  log "run.sh took $(( $(date +%s) - start_time )) s"
fi
