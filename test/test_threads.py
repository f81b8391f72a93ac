"""Tests of icefall.threads: each case runs a fresh Python, because the
OpenMP settings only matter before torch is first imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, os, sys
from icefall.threads import set_thread_env, apply_num_threads
assert "torch" not in sys.modules, "importing icefall.threads loaded torch"
chosen = set_thread_env()
seen_before_torch = dict(os.environ)
assert "torch" not in sys.modules, "set_thread_env loaded torch"
import torch
applied = apply_num_threads()
print(json.dumps({
    "chosen": chosen, "applied": applied,
    "torch_threads": torch.get_num_threads(),
    "policy_before_torch": seen_before_torch.get("OMP_WAIT_POLICY"),
    "cache_before_torch": seen_before_torch.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
    "icefall_threads": os.environ.get("ICEFALL_NUM_THREADS"),
    "omp_threads": os.environ.get("OMP_NUM_THREADS"),
    "cores": len(os.sched_getaffinity(0)),
}))
"""

VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "ICEFALL_NUM_THREADS", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def run(**env_vars):
    env = {k: v for k, v in os.environ.items() if k not in VARS}
    env.update(env_vars, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env,
                          capture_output=True, text=True, timeout=120)


def result(**env_vars):
    out = run(**env_vars)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_set_before_torch_loads():
    from icefall.threads import DEFAULT_MAX_THREADS

    r = result()
    assert r["policy_before_torch"] == "passive"
    assert r["cache_before_torch"] == "65536"  # oneDNN's default, 1024, thrashes in training
    expected = min(r["cores"], DEFAULT_MAX_THREADS)
    assert r["chosen"] == r["applied"] == r["torch_threads"] == expected
    assert r["icefall_threads"] == str(expected)  # inherited by children
    assert r["omp_threads"] is None  # left to the user and icefall.dist


def test_user_settings_are_kept():
    r = result(OMP_WAIT_POLICY="active", OMP_NUM_THREADS="1", ONEDNN_PRIMITIVE_CACHE_CAPACITY="0")
    assert r["policy_before_torch"] == "active"
    assert r["cache_before_torch"] == "0"
    assert r["omp_threads"] == "1"
    assert r["chosen"] == r["torch_threads"] == 1


def test_icefall_num_threads_wins():
    r = result(OMP_NUM_THREADS="1", ICEFALL_NUM_THREADS="3")
    assert r["chosen"] == r["torch_threads"] == 3
    assert r["policy_before_torch"] == "passive"


def test_bad_thread_count_is_a_one_line_error():
    out = run(ICEFALL_NUM_THREADS="two")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "ICEFALL_NUM_THREADS='two'" in lines[0]
    assert "Traceback" not in out.stderr
