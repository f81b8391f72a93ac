#!/usr/bin/env bash
# Prepare LibriSpeech as icefall does, without k2 or kaldifeat. Run from egs/librispeech/ASR:
#
#   ./prepare.sh                                  # download and everything
#   ./prepare.sh --stage 1 --dl-dir /data/corpora # LibriSpeech already in /data/corpora/LibriSpeech
#   ./prepare.sh --musan true                     # also MUSAN (noise for augmentation)
#
# Stages (each skipped when done; its marker records its flags; a stage
# stopped part-way resumes with the same flags, and starts afresh, after
# removing its partial outputs, with other flags; an interrupted download
# with other flags is refused instead, as it may hold hours of data):
#   0 download LibriSpeech (and MUSAN)    $dl_dir/LibriSpeech, $dl_dir/musan
#   1 lhotse manifests                    data/manifests/librispeech_{recordings,supervisions}_<part>.jsonl.gz
#   2 MUSAN manifests (--musan true)      data/manifests/musan_*.jsonl.gz
#   3 fbank, train x3 speed perturbation  data/fbank/librispeech_cuts_<part>.jsonl.gz (+ musan_cuts.jsonl.gz)
#   4 BPE model of the train transcripts  data/lang_bpe_N/{bpe.model,tokens.txt,transcript_words.txt}
#   5 lang dir                            data/lang_bpe_N/{words.txt,lexicon.txt}

set -eou pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}

stage=0
stop_stage=100
nj=2
dl_dir=download         # holds LibriSpeech/ (and musan/)
dataset_parts=librispeech   # for the download: librispeech (all 7 parts) or mini_librispeech
musan=false
perturb_speed=true
vocab_size=500

__option_names="stage stop_stage nj dl_dir dataset_parts musan perturb_speed vocab_size"
. "$here/../../shared/parse_options.sh"
. "$here/../../shared/stage_utils.sh"

lang_dir=data/lang_bpe_${vocab_size}
mkdir -p data

if [ $stage -le 0 ] && [ $stop_stage -ge 0 ]; then
  if stage_done $dl_dir/.librispeech_download.done "dataset_parts=$dataset_parts musan=$musan"; then
    log "Stage 0: $dl_dir/.librispeech_download.done exists, skipping download"
  else
    stage_begin $dl_dir/.librispeech_download.done "dataset_parts=$dataset_parts musan=$musan"
    log "Stage 0: download LibriSpeech ($dataset_parts) into $dl_dir (musan=$musan)"
    $python "$here/local/download.py" --dl-dir $dl_dir --dataset-parts $dataset_parts --musan $musan
    mark_done $dl_dir/.librispeech_download.done "dataset_parts=$dataset_parts musan=$musan"
  fi
fi

if [ $stage -le 1 ] && [ $stop_stage -ge 1 ]; then
  if stage_done data/manifests/.librispeech.done "from $dl_dir/LibriSpeech"; then
    log "Stage 1: LibriSpeech manifests done, skipping"
  else
    stage_begin data/manifests/.librispeech.done "from $dl_dir/LibriSpeech" \
      data/manifests/librispeech_* data/manifests/tmp.librispeech_*
    log "Stage 1: lhotse manifests of $dl_dir/LibriSpeech -> data/manifests"
    $python "$here/local/prepare_manifests.py" --corpus-dir $dl_dir/LibriSpeech \
      --output-dir data/manifests --num-jobs $nj
    mark_done data/manifests/.librispeech.done "from $dl_dir/LibriSpeech"
  fi
fi

if [ $stage -le 2 ] && [ $stop_stage -ge 2 ] && [ "$musan" = true ]; then
  if stage_done data/manifests/.musan.done "from $dl_dir/musan"; then
    log "Stage 2: MUSAN manifests done, skipping"
  else
    stage_begin data/manifests/.musan.done "from $dl_dir/musan" data/manifests/musan_*
    log "Stage 2: MUSAN manifests of $dl_dir/musan -> data/manifests"
    $python "$here/local/prepare_musan.py" --corpus-dir $dl_dir/musan --output-dir data/manifests
    mark_done data/manifests/.musan.done "from $dl_dir/musan"
  fi
fi

if [ $stage -le 3 ] && [ $stop_stage -ge 3 ]; then
  if stage_done data/fbank/.librispeech.done "perturb_speed=$perturb_speed musan=$musan"; then
    log "Stage 3: fbank done, skipping"
  else
    stage_begin data/fbank/.librispeech.done "perturb_speed=$perturb_speed musan=$musan" \
      data/fbank/librispeech_* data/fbank/tmp.librispeech_* data/fbank/musan_* data/fbank/tmp.musan_*
    log "Stage 3: 80-dim fbank -> data/fbank/librispeech_cuts_<part>.jsonl.gz (perturb_speed=$perturb_speed)"
    $python "$here/local/compute_fbank.py" --manifest-dir data/manifests --output-dir data/fbank \
      --prefix librispeech --parts auto --perturb-speed $perturb_speed --musan $musan --num-jobs $nj
    mark_done data/fbank/.librispeech.done "perturb_speed=$perturb_speed musan=$musan"
  fi
fi

if [ $stage -le 4 ] && [ $stop_stage -ge 4 ]; then
  if stage_done $lang_dir/.bpe.done "vocab_size=$vocab_size"; then
    log "Stage 4: $lang_dir/bpe.model done, skipping"
  else
    train_sups=$(ls data/manifests/librispeech_supervisions_train-*.jsonl.gz 2>/dev/null || true)
    if [ -z "$train_sups" ]; then
      echo "$0: no data/manifests/librispeech_supervisions_train-*.jsonl.gz; run stage 1 with a train part in $dl_dir/LibriSpeech" >&2
      exit 1
    fi
    stage_begin $lang_dir/.bpe.done "vocab_size=$vocab_size" $lang_dir/bpe.model $lang_dir/unigram_* \
      $lang_dir/tokens.txt $lang_dir/transcript_words.txt
    log "Stage 4: BPE model with $vocab_size tokens from $(echo $train_sups | wc -w) train parts -> $lang_dir"
    $python "$here/local/prepare_bpe.py" --lang-dir $lang_dir --vocab-size $vocab_size $train_sups
    mark_done $lang_dir/.bpe.done "vocab_size=$vocab_size"
  fi
fi

if [ $stage -le 5 ] && [ $stop_stage -ge 5 ]; then
  if stage_done $lang_dir/.lang.done "vocab_size=$vocab_size"; then
    log "Stage 5: $lang_dir/lexicon.txt done, skipping"
  else
    stage_begin $lang_dir/.lang.done "vocab_size=$vocab_size" $lang_dir/words.txt $lang_dir/lexicon.txt
    log "Stage 5: words.txt and lexicon.txt -> $lang_dir"
    $python "$here/local/prepare_lang.py" --lang-dir $lang_dir
    mark_done $lang_dir/.lang.done "vocab_size=$vocab_size"
  fi
fi

log "Done (stages $stage..$stop_stage)."
