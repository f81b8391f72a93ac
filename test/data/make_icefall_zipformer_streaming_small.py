"""Extract from icefall's causal Zipformer reference file the parts test_zipformer_model.py uses.

    python test/data/make_icefall_zipformer_streaming_small.py /path/to/icefall_zipformer_streaming_small.pt

writes test/data/icefall_zipformer_streaming_small.pt: the weights and inputs
of the small causal model, and per chunk configuration icefall's simulated
streaming results (the full utterance with chunk masks) and the outputs of
its chunk-by-chunk streaming decode (encoder output, hypothesis, state
shapes; not the per-chunk states).
"""

import sys
from pathlib import Path

import torch


def main(src: str) -> None:
    d = torch.load(src, weights_only=True)
    out = {k: d[k] for k in ("icefall_commit", "torch_version", "model")}
    out["inputs"] = {k: d["inputs"][k] for k in ("x", "x_lens")}
    out["outputs"] = {}
    for name, o in d["outputs"].items():
        sim = {k: v for k, v in o["simulated_streaming"].items() if k != "feature"}
        streaming = [{k: s[k] for k in ("num_frames_after_pad", "num_chunks", "encoder_out_concat",
                                        "greedy_search_hyp", "initial_state_shapes",
                                        "final_state_shapes", "done_frames")}
                     for s in o["streaming"]]
        out["outputs"][name] = {"argv": o["argv"], "chunk_size": o["chunk_size"],
                                "left_context_frames": o["left_context_frames"],
                                "forward_encoder_nopad": o["forward_encoder_nopad"],
                                "simulated_streaming": sim, "streaming": streaming}
    dst = Path(__file__).resolve().parent / "icefall_zipformer_streaming_small.pt"
    torch.save(out, dst)
    print(f"wrote {dst} ({dst.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
