#!/usr/bin/env bash
# Prepare the built-in synthetic corpus (English sentences spoken by espeak-ng).
# Run from egs/synth/ASR:
#
#   ./prepare.sh                          # all stages, default sizes
#   ./prepare.sh --stage 3 --vocab-size 500
#   ./prepare.sh --num-train 60 --num-dev 10 --num-test 10 --vocab-size 100 --heldout none  # tiny
#
# Stages (each skipped when done; its marker records its flags; a stage
# stopped part-way resumes with the same flags, and starts afresh, after
# removing its partial outputs, with other flags):
#   0 synthesise audio            data/audio/synth/{train,dev,test,heldout}/*.flac
#   1 lhotse manifests            data/manifests/synth_{recordings,supervisions}_{split}.jsonl.gz
#   2 fbank features              data/fbank/synth_cuts_{split}.jsonl.gz + synth_feats_{split}/
#
# Splits: train, dev and test draw sentences from the text source (WordNet
# 3.0's examples, then its glosses); heldout speaks local/heldout/sentences.txt
# (written for this recipe, never in the corpus text) with the test voices.
#   3 BPE model                   data/lang_bpe_N/{bpe.model,tokens.txt,transcript_words.txt}
#   4 lang dir                    data/lang_bpe_N/{words.txt,lexicon.txt}

set -eou pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

stage=0
stop_stage=100
nj=2
seed=0
num_train=6000
num_dev=300
num_test=300
num_words=20000     # sentences use only the N most frequent words (0: all)
min_words=4
max_words=20
text_source=wordnet # wordnet, wordnet-examples, markov, a .json chain or a text file
heldout=default     # held-out sentences file; default: local/heldout/sentences.txt; none: no heldout split
languages=""        # default: icefall/synth_corpus.py LANGUAGES
train_variants=""   # defaults: icefall/synth_corpus.py *_VARIANTS
dev_variants=""
test_variants=""
perturb_speed=false
vocab_size=256      # BPE vocabulary

__option_names="stage stop_stage nj seed num_train num_dev num_test num_words min_words max_words
  text_source heldout languages train_variants dev_variants test_variants perturb_speed vocab_size"
. "$here/../../shared/parse_options.sh"
. "$here/../../shared/stage_utils.sh"

audio_dir=data/audio/synth
lang_dir=data/lang_bpe_${vocab_size}
case "$heldout" in
  default) heldout_file=$here/local/heldout/sentences.txt ;;
  none) heldout_file="" ;;
  *) heldout_file=$heldout ;;
esac
mkdir -p data

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  params="num_train=$num_train num_dev=$num_dev num_test=$num_test num_words=$num_words"
  params+=" min_words=$min_words max_words=$max_words seed=$seed text_source=$text_source"
  params+=" languages=$languages train_variants=$train_variants dev_variants=$dev_variants"
  params+=" test_variants=$test_variants heldout=$heldout"
  if stage_done $audio_dir/.done "$params"; then
    log "Stage 0: $audio_dir/.done exists, skipping synthesis"
  else
    stage_begin $audio_dir/.done "$params" $audio_dir
    log "Stage 0: synthesise $num_train/$num_dev/$num_test utterances (and heldout: $heldout) into $audio_dir"
    opts=(--heldout "$heldout_file")
    [ -n "$text_source" ] && opts+=(--text-source "$text_source")
    [ -n "$languages" ] && opts+=(--languages "$languages")
    [ -n "$train_variants" ] && opts+=(--train-variants "$train_variants")
    [ -n "$dev_variants" ] && opts+=(--dev-variants "$dev_variants")
    [ -n "$test_variants" ] && opts+=(--test-variants "$test_variants")
    $python "$here/local/synthesize.py" --output-dir $audio_dir \
      --num-train $num_train --num-dev $num_dev --num-test $num_test \
      --num-words $num_words --min-words $min_words --max-words $max_words \
      --seed $seed --nj $nj "${opts[@]}"
    mark_done $audio_dir/.done "$params"
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  if stage_done data/manifests/.synth.done "from $audio_dir"; then
    log "Stage 1: manifests done, skipping"
  else
    stage_begin data/manifests/.synth.done "from $audio_dir" data/manifests/synth_*
    log "Stage 1: lhotse manifests of $audio_dir -> data/manifests"
    $python "$here/local/prepare_manifests.py" --audio-dir $audio_dir --manifest-dir data/manifests
    mark_done data/manifests/.synth.done "from $audio_dir"
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ]; then
  if stage_done data/fbank/.synth.done "perturb_speed=$perturb_speed"; then
    log "Stage 2: fbank done, skipping"
  else
    stage_begin data/fbank/.synth.done "perturb_speed=$perturb_speed" data/fbank/synth_* data/fbank/tmp.synth_*
    log "Stage 2: 80-dim fbank features -> data/fbank/synth_cuts_{train,dev,test,heldout}.jsonl.gz"
    $python "$here/local/compute_fbank.py" --manifest-dir data/manifests --output-dir data/fbank \
      --prefix synth --parts auto --perturb-speed $perturb_speed --num-jobs $nj
    mark_done data/fbank/.synth.done "perturb_speed=$perturb_speed"
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  if stage_done $lang_dir/.bpe.done "vocab_size=$vocab_size"; then
    log "Stage 3: $lang_dir/bpe.model done, skipping"
  else
    stage_begin $lang_dir/.bpe.done "vocab_size=$vocab_size" $lang_dir/bpe.model $lang_dir/unigram_* \
      $lang_dir/tokens.txt $lang_dir/transcript_words.txt
    log "Stage 3: BPE model with $vocab_size tokens from the train transcripts only -> $lang_dir"
    $python "$here/local/prepare_bpe.py" --lang-dir $lang_dir --vocab-size $vocab_size \
      data/manifests/synth_supervisions_train.jsonl.gz
    mark_done $lang_dir/.bpe.done "vocab_size=$vocab_size"
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  if stage_done $lang_dir/.lang.done "vocab_size=$vocab_size"; then
    log "Stage 4: $lang_dir/lexicon.txt done, skipping"
  else
    stage_begin $lang_dir/.lang.done "vocab_size=$vocab_size" $lang_dir/words.txt $lang_dir/lexicon.txt
    log "Stage 4: words.txt and lexicon.txt -> $lang_dir"
    $python "$here/local/prepare_lang.py" --lang-dir $lang_dir
    mark_done $lang_dir/.lang.done "vocab_size=$vocab_size"
  fi
fi

log "Done (stages $stage..$stop_stage)."
