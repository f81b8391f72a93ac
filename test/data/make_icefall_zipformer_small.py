"""Extract from icefall's Zipformer reference file the parts test_zipformer_model.py uses.

    python test/data/make_icefall_zipformer_small.py /path/to/icefall_zipformer_small.pt

writes test/data/icefall_zipformer_small.pt: the config, weights, inputs and
eval outputs of the small model (the embed's two conv outputs only every
8th channel), and the training references for the
scaling functions (autograd cases, Swoosh, ScheduledFloat schedules).  The
ScaledAdam/Eden references (most of the 22 MB) are left out.
"""

import sys
from pathlib import Path

import torch

KEYS = ("icefall_commit", "torch_version", "config", "model", "inputs", "outputs",
        "state_dict_entries_without_effect_on_outputs")


def main(src: str) -> None:
    d = torch.load(src, weights_only=True)
    out = {k: d[k] for k in KEYS}
    out["config"] = {"argv": d["config"]["argv"]}
    # The embed's conv outputs [N, 128, T, 19] are 1 MB each: keep every 8th
    # channel (encoder_embed_out, which all channels feed, is kept whole).
    inter = dict(out["outputs"]["intermediates"])
    for k in ("encoder_embed.conv", "encoder_embed.convnext"):
        inter[k] = inter[k][:, ::8].clone()
    out["outputs"] = {**out["outputs"], "intermediates": inter}
    out["training"] = {k: d["training"][k]
                       for k in ("autograd_functions", "swoosh", "scheduled_floats")}
    dst = Path(__file__).resolve().parent / "icefall_zipformer_small.pt"
    torch.save(out, dst)
    print(f"wrote {dst} ({dst.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
