"""Bad input across every command: one `agfprune: error:` line, the documented exit code, no
traceback, and not a single new or changed file (in the working folder or beside the inputs).

Real artefacts are built once (a cifar_resnet20 checkpoint, its calibration, scores, a pruned
checkpoint and a router), so mismatches (artefacts made for other weights, tampered files) are
tested against the real loaders. Numeric options and file contents are fuzzed with hypothesis.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import assert_one_line_error, random_checkpoint

USAGE, DATA, MODEL, NUMERICAL, OUTPUT = 2, 3, 4, 5, 6
FUZZ = settings(max_examples=20, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _run_ok(*args: object) -> None:
    from agfprune.cli.app import run

    code = run([str(a) for a in args] + ["--quiet"])
    assert code == 0, args


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict[str, Path]:
    """Real artefacts of one cifar_resnet20 plus deliberately wrong and damaged ones."""
    root = tmp_path_factory.mktemp("artefacts")
    paths = {name: root / file for name, file in {
        "dense": "dense.safetensors", "other": "other.safetensors", "r32": "r32.safetensors",
        "nan": "nan.safetensors", "calib": "calib.safetensors", "scores": "scores.json",
        "pruned": "pruned.safetensors", "router": "router.yaml"}.items()}
    random_checkpoint(paths["dense"], seed=1)
    random_checkpoint(paths["other"], seed=2)
    random_checkpoint(paths["r32"], seed=1, arch="cifar_resnet32")
    random_checkpoint(paths["nan"], seed=1, poison=True)
    _run_ok("calibrate", "--checkpoint", paths["dense"], "--data", "synthetic:64", "--calib-batches", "1",
            "--calib-batch-size", "8", "--device", "cpu", "--out", paths["calib"])
    _run_ok("score", "--calib", paths["calib"], "--checkpoint", paths["dense"], "--metrics", "agf",
            "--out", paths["scores"])
    _run_ok("prune", "--checkpoint", paths["dense"], "--scores", paths["scores"], "--ratio", "0.5",
            "--device", "cpu", "--out", paths["pruned"])
    _run_ok("route", "calibrate", "--light", paths["pruned"], "--heavy", paths["dense"], "--data", "synthetic:32",
            "--threshold", "0.5", "--split-half", "none", "--device", "cpu", "--out", paths["router"])

    # damaged and mismatched variants
    data = bytearray(paths["pruned"].read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the last tensor
    paths["tampered"] = root / "tampered.safetensors"
    paths["tampered"].write_bytes(bytes(data))
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(paths["pruned"]), framework="pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    # a file without the metadata fingerprint (as written before it existed): edits reach the loader
    unsealed = {k: v for k, v in metadata.items() if k != "metadata_fingerprint"}
    paths["no_structure"] = root / "no-structure.safetensors"
    save_file(tensors, str(paths["no_structure"]), metadata={**unsealed, "structure": "{}"})
    paths["edited_metadata"] = root / "edited-metadata.safetensors"
    save_file(tensors, str(paths["edited_metadata"]), metadata={**metadata, "timm_kwargs": '{"num_classes": 9}'})
    paths["deep_kwargs"] = root / "deep-kwargs.safetensors"
    save_file(tensors, str(paths["deep_kwargs"]), metadata={**unsealed, "timm_kwargs": '{"depth": 100000}'})
    paths["pretrained_kwargs"] = root / "pretrained-kwargs.safetensors"
    save_file(tensors, str(paths["pretrained_kwargs"]),
              metadata={**unsealed, "timm_kwargs": '{"pretrained": true, "checkpoint_path": "/etc/passwd"}'})
    document = json.loads(paths["scores"].read_text())
    document["metrics"]["agf"]["groups"][0]["scores"][0] = None
    paths["null_scores"] = root / "null-scores.json"
    paths["null_scores"].write_text(json.dumps(document))
    router = paths["router"].read_text()
    light_fingerprint = yaml.safe_load(router)["light"]["fingerprint"]
    paths["wrong_router"] = root / "wrong-router.yaml"
    paths["wrong_router"].write_text(router.replace(light_fingerprint, "0123456789abcdef"))
    paths["evil"] = root / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": os.system}, paths["evil"])  # loading would run code
    paths["garbage"] = root / "garbage.safetensors"
    paths["garbage"].write_bytes(bytes(range(256)) * 3)
    paths["garbage_pth"] = root / "garbage.pth"
    paths["garbage_pth"].write_bytes(bytes(range(255, -1, -1)) * 3)
    paths["garbage_json"] = root / "garbage.json"
    paths["garbage_json"].write_bytes(b"\xa1\x00{not json")
    paths["garbage_yaml"] = root / "garbage.yaml"
    paths["garbage_yaml"].write_bytes(b"\x00\xff: [")
    paths["list_yaml"] = root / "list.yaml"
    paths["list_yaml"].write_text("- a\n- b\n")
    paths["badkey_yaml"] = root / "badkey.yaml"
    paths["badkey_yaml"].write_text("calibrate:\n  nonsense: 3\n")
    paths["wrong_keys_npz"] = root / "wrong-keys.npz"
    np.savez(paths["wrong_keys_npz"], x=np.zeros((4, 32, 32, 3), dtype=np.uint8))
    paths["labels_npz"] = root / "labels.npz"
    np.savez(paths["labels_npz"], images=np.zeros((16, 32, 32, 3), dtype=np.uint8), labels=np.full(16, 50))
    paths["foreign_state"] = root / "foreign.state.pt"
    torch.save({"format": "agfprune-finetune-state", "version": 1, "run_fingerprint": "0" * 16,
                "run_key": json.dumps({"lr": 9.0})}, paths["foreign_state"])
    paths["folder"] = root / "folder.safetensors"
    paths["folder"].mkdir()
    paths["a_file"] = root / "a-file"
    paths["a_file"].write_text("it is a file")
    return paths


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under the roots (hidden ones too) with size, mtime and content hash."""
    found: dict[str, tuple] = {}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_dir():
                found[str(path)] = ("dir",)
            else:
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return found


def _expect_refusal(cli, code: int, args: list, roots: list[Path]):
    before = _snapshot(*roots)
    result = cli(*args)
    assert_one_line_error(result, code)
    after = _snapshot(*roots)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert changed == [], f"stray or changed files: {changed}"
    return result


# (id, exit code, arguments, text the message must contain). {name} is an artefact, relative names
# are in the working folder. Commands other than `info` get --quiet: the error must be the only line.
CASES = [
    # eval / info
    ("eval-missing-data", USAGE, ["eval", "{dense}"], "--data"),
    ("eval-batch-size-0", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--batch-size", "0"], "--batch-size"),
    ("eval-limit-negative", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--limit", "-1"], "--limit"),
    ("eval-mean-2-values", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--mean", "0.5,0.5"], "--mean"),
    ("eval-mean-not-numbers", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--std", "a,b,c"], "--std"),
    ("eval-unknown-device", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--device", "tpu"], "--device"),
    ("eval-latency-negative", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--latency-repeats", "-1"],
     "--latency-repeats"),
    ("eval-img-size-0", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--img-size", "0"], "--img-size"),
    ("eval-unknown-option", USAGE, ["eval", "{dense}", "--bogus"], "--bogus"),
    ("eval-not-an-integer", USAGE, ["eval", "{dense}", "--data", "synthetic:8", "--batch-size", "x"], "--batch-size"),
    ("eval-no-data-folder", DATA, ["eval", "{dense}", "--data", "no-such-folder"], "no-such-folder"),
    ("eval-synthetic-0", DATA, ["eval", "{dense}", "--data", "synthetic:0"], "synthetic:0"),
    ("eval-npz-wrong-keys", DATA, ["eval", "{dense}", "--data", "{wrong_keys_npz}"], "images"),
    ("eval-labels-beyond-classes", DATA, ["eval", "{dense}", "--data", "{labels_npz}"], "label 50"),
    ("eval-garbage-checkpoint", MODEL, ["eval", "{garbage}", "--data", "synthetic:8"], "safetensors"),
    ("eval-unknown-model", MODEL, ["eval", "--model", "no_such_model", "--data", "synthetic:8"], "no_such_model"),
    ("eval-tampered-pruned", MODEL, ["eval", "{tampered}", "--data", "synthetic:8"], "fingerprint"),
    ("eval-pruned-without-structure", MODEL, ["eval", "{no_structure}", "--data", "synthetic:8"], "does not fit"),
    ("eval-edited-metadata", MODEL, ["eval", "{edited_metadata}", "--data", "synthetic:8"], "metadata fingerprint"),
    ("eval-kwargs-depth-100000", MODEL, ["eval", "{deep_kwargs}", "--data", "synthetic:8"], "timm_kwargs.depth"),
    ("info-kwargs-pretrained", MODEL, ["info", "{pretrained_kwargs}"], "checkpoint_path, pretrained"),
    ("info-nothing", USAGE, ["info"], "--model"),
    ("info-pickle-needing-code", MODEL, ["info", "{evil}"], "posix.system"),
    ("info-garbage-pth", MODEL, ["info", "{garbage_pth}"], "garbage.pth"),
    ("info-unknown-suffix", MODEL, ["info", "{router}"], "unknown checkpoint type"),
    ("info-model-mismatch", MODEL, ["info", "--model", "cifar_resnet20", "--checkpoint", "{r32}"], "cifar_resnet32"),
    # calibrate
    ("calibrate-batches-0", USAGE, ["calibrate", "--checkpoint", "{dense}", "--data", "synthetic:8", "--calib-batches", "0",
                                    "--out", "c.safetensors"], "--calib-batches"),
    ("calibrate-target", USAGE, ["calibrate", "--checkpoint", "{dense}", "--data", "synthetic:8", "--calib-loss", "soft",
                                 "--out", "c.safetensors"], "--calib-loss"),
    ("calibrate-too-few-images", DATA, ["calibrate", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                        "--calib-batches", "4", "--calib-batch-size", "8", "--out", "c.safetensors"],
     "--calib-batches 4"),
    ("calibrate-labels-beyond-classes", DATA, ["calibrate", "--checkpoint", "{dense}", "--data", "{labels_npz}",
                                               "--calib-batches", "1", "--calib-batch-size", "8", "--out", "c.safetensors"],
     "label 50"),
    ("calibrate-nan-weights", NUMERICAL, ["calibrate", "--checkpoint", "{nan}", "--data", "synthetic:16",
                                          "--calib-batches", "1", "--calib-batch-size", "8", "--device", "cpu",
                                          "--out", "c.safetensors"], "batch 1/1"),
    ("calibrate-out-is-folder", OUTPUT, ["calibrate", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                         "--out", "."], "folder"),
    ("calibrate-out-under-file", OUTPUT, ["calibrate", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                          "--out", "{a_file}/c.safetensors"], "it is a file"),
    # score
    ("score-unknown-metric", USAGE, ["score", "--calib", "{calib}", "--metrics", "agff", "--out", "s.json"], "taylor"),
    ("score-no-out", USAGE, ["score", "--calib", "{calib}"], "--out"),
    ("score-normalizer", USAGE, ["score", "--calib", "{calib}", "--normalizer", "z", "--out", "s.json"],
     "--normalizer"),
    ("score-agf-without-calib", USAGE, ["score", "--model", "cifar_resnet20", "--out", "s.json"], "--calib"),
    ("score-garbage-calib", MODEL, ["score", "--calib", "{garbage}", "--out", "s.json"], "calibration"),
    ("score-checkpoint-as-calib", MODEL, ["score", "--calib", "{dense}", "--out", "s.json"], "calibration"),
    ("score-calib-of-other-weights", MODEL, ["score", "--calib", "{calib}", "--checkpoint", "{other}",
                                             "--out", "s.json"], "fingerprint"),
    ("score-calib-of-other-arch", MODEL, ["score", "--calib", "{calib}", "--checkpoint", "{r32}",
                                          "--out", "s.json"], "fingerprint"),
    ("score-out-under-file", OUTPUT, ["score", "--calib", "{calib}", "--out", "{a_file}/s.json"], "it is a file"),
    # prune
    ("prune-ratio-above-1", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--ratio", "1.5",
                                    "--out", "p.safetensors"], "--ratio"),
    ("prune-scores-and-calib", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--calib", "{calib}",
                                       "--ratio", "0.5", "--out", "p.safetensors"], "--scores"),
    ("prune-out-not-safetensors", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--ratio", "0.5",
                                          "--out", "p.pt"], ".safetensors"),
    ("prune-agf-without-data", USAGE, ["prune", "--checkpoint", "{dense}", "--metric", "agf", "--ratio", "0.5",
                                       "--out", "p.safetensors"], "--data"),
    ("prune-steps-0", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--ratio", "0.5",
                              "--steps", "0", "--out", "p.safetensors"], "--steps"),
    ("prune-eval-limit-0", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--ratio", "0.5",
                                   "--eval-data", "synthetic:8", "--eval-limit", "0", "--out", "p.safetensors"],
     "--eval-limit"),
    ("prune-calib-target", USAGE, ["prune", "--checkpoint", "{dense}", "--metric", "magnitude-l1", "--ratio", "0.5",
                                   "--calib-loss", "soft", "--out", "p.safetensors"], "--calib-loss"),
    ("prune-ignore-matches-nothing", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}",
                                             "--ratio", "0.5", "--ignore", "nope.*", "--out", "p.safetensors"],
     "--ignore"),
    ("prune-metric-not-in-scores", USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--metric",
                                           "taylor", "--ratio", "0.5", "--out", "p.safetensors"], "taylor"),
    ("prune-ignore-everything", MODEL, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--ratio", "0.5",
                                        "--ignore", "*", "--out", "p.safetensors"], "no prunable groups"),
    ("prune-scores-of-other-weights", MODEL, ["prune", "--checkpoint", "{other}", "--scores", "{scores}",
                                              "--ratio", "0.5", "--out", "p.safetensors"], "fingerprint"),
    ("prune-scores-of-other-arch", MODEL, ["prune", "--checkpoint", "{r32}", "--scores", "{scores}",
                                           "--ratio", "0.5", "--out", "p.safetensors"], "fingerprint"),
    ("prune-garbage-scores", MODEL, ["prune", "--checkpoint", "{dense}", "--scores", "{garbage_json}",
                                     "--ratio", "0.5", "--out", "p.safetensors"], "scores"),
    ("prune-null-in-scores", MODEL, ["prune", "--checkpoint", "{dense}", "--scores", "{null_scores}",
                                     "--ratio", "0.5", "--out", "p.safetensors"], "non-finite"),
    ("prune-calib-of-other-weights", MODEL, ["prune", "--checkpoint", "{other}", "--calib", "{calib}",
                                             "--ratio", "0.5", "--out", "p.safetensors"], "fingerprint"),
    ("prune-tampered-checkpoint", MODEL, ["prune", "--checkpoint", "{tampered}", "--metric", "magnitude-l1",
                                          "--ratio", "0.5", "--out", "p.safetensors"], "fingerprint"),
    ("prune-nan-weights", NUMERICAL, ["prune", "--checkpoint", "{nan}", "--metric", "magnitude-l1", "--ratio", "0.5",
                                      "--device", "cpu", "--out", "p.safetensors"], "NaN"),
    ("prune-out-is-folder", OUTPUT, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}", "--ratio", "0.5",
                                     "--out", "{folder}"], "folder"),
    # finetune
    ("finetune-epochs-0", USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", "--epochs", "0",
                                  "--out", "f.safetensors"], "--epochs"),
    ("finetune-lr-negative", USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", "--lr", "-1",
                                     "--out", "f.safetensors"], "--lr"),
    ("finetune-optimizer", USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", "--optimizer", "adam",
                                   "--out", "f.safetensors"], "sgd"),
    ("finetune-out-not-safetensors", USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", "--out", "f.pt"],
     ".safetensors"),
    ("finetune-resume-without-state", USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", "--resume",
                                              "--device", "cpu", "--out", "f.safetensors"], "--resume"),
    ("finetune-kd-alpha", USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", "--teacher", "{dense}",
                                  "--kd-alpha", "2", "--out", "f.safetensors"], "--kd-alpha"),
    ("finetune-missing-data", DATA, ["finetune", "{pruned}", "--data", "no-such-folder", "--device", "cpu",
                                     "--out", "f.safetensors"], "no-such-folder"),
    ("finetune-garbage-teacher", MODEL, ["finetune", "{pruned}", "--data", "synthetic:16", "--teacher", "{garbage}",
                                         "--device", "cpu", "--out", "f.safetensors"], "garbage"),
    ("finetune-state-of-another-run", MODEL, ["finetune", "{pruned}", "--data", "synthetic:16", "--resume",
                                              "--state", "{foreign_state}", "--device", "cpu",
                                              "--out", "f.safetensors"], "another run"),
    ("finetune-garbage-state", MODEL, ["finetune", "{pruned}", "--data", "synthetic:16", "--resume",
                                       "--state", "{garbage_pth}", "--device", "cpu", "--out", "f.safetensors"],
     "state"),
    ("finetune-nan-weights", NUMERICAL, ["finetune", "{nan}", "--data", "synthetic:16", "--eval-data", "synthetic:8",
                                         "--batch-size", "8", "--epochs", "1", "--device", "cpu",
                                         "--out", "f.safetensors"], "step 0"),
    ("finetune-out-under-file", OUTPUT, ["finetune", "{pruned}", "--data", "synthetic:16",
                                         "--out", "{a_file}/f.safetensors"], "it is a file"),
    # export
    ("export-format", USAGE, ["export", "{pruned}", "--format", "tflite", "--out", "e.tflite"], "onnx"),
    ("export-opset", USAGE, ["export", "{pruned}", "--format", "onnx", "--opset", "1", "--out", "e.onnx"], "--opset"),
    ("export-torchscript-mode", USAGE, ["export", "{pruned}", "--format", "torchscript", "--torchscript-mode", "jit",
                                        "--out", "e.pt"], "trace"),
    ("export-garbage-checkpoint", MODEL, ["export", "{garbage}", "--format", "onnx", "--out", "e.onnx"], "garbage"),
    ("export-pickle-needing-code", MODEL, ["export", "{evil}", "--format", "onnx", "--out", "e.onnx"], "refused"),
    ("export-out-is-folder", OUTPUT, ["export", "{pruned}", "--format", "safetensors", "--out", "."], "folder"),
    # compare
    ("compare-ratio", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8", "--eval-data",
                              "synthetic:8", "--ratios", "0.5,1.5", "--out", "cmp"], "--ratio"),
    ("compare-metric", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8", "--eval-data",
                               "synthetic:8", "--metrics", "agf,nope", "--out", "cmp"], "nope"),
    ("compare-missing-out", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                    "--eval-data", "synthetic:8"], "--out"),
    ("compare-finetune-lr-nan", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                        "--eval-data", "synthetic:8", "--finetune-lr", "nan", "--out", "cmp"],
     "--finetune-lr"),
    ("compare-eval-limit-0", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                     "--eval-data", "synthetic:8", "--eval-limit", "0", "--out", "cmp"],
     "--eval-limit"),
    ("compare-too-few-images", DATA, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                      "--eval-data", "synthetic:8", "--metrics", "magnitude-l1", "--seeds", "1",
                                      "--ratios", "0.5", "--device", "cpu", "--out", "cmp"], "--calib-batches"),
    ("compare-baseline", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8", "--eval-data",
                                 "synthetic:8", "--baselines", "dense", "--out", "cmp"], "--baselines"),
    ("compare-scratch-no-budget", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                          "--eval-data", "synthetic:8", "--baselines", "scratch", "--out", "cmp"],
     "--scratch-epochs"),
    ("compare-reference", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8", "--eval-data",
                                  "synthetic:8", "--reference", "nope", "--out", "cmp"], "nope"),
    ("compare-teacher-no-finetune", USAGE, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                            "--eval-data", "synthetic:8", "--finetune-teacher", "--out", "cmp"],
     "--finetune-epochs"),
    ("compare-out-is-file", OUTPUT, ["compare", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                     "--eval-data", "synthetic:8", "--out", "{a_file}"], "it is a file"),
    # route
    ("route-calibrate-no-objective", USAGE, ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}",
                                             "--data", "synthetic:8", "--out", "r.yaml"], "objective"),
    ("route-calibrate-two-objectives", USAGE, ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}",
                                               "--data", "synthetic:8", "--match-heavy", "--threshold", "0.5",
                                               "--out", "r.yaml"], "exactly one"),
    ("route-calibrate-signal", USAGE, ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}", "--data",
                                       "synthetic:8", "--threshold", "0.5", "--signal", "vibes", "--out", "r.yaml"],
     "confidence"),
    ("route-calibrate-tolerance-alone", USAGE, ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}",
                                                "--data", "synthetic:8", "--threshold", "0.5", "--tolerance", "1",
                                                "--out", "r.yaml"], "--tolerance"),
    ("route-calibrate-split-half", USAGE, ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}",
                                           "--data", "synthetic:8", "--threshold", "0.5", "--split-half", "third",
                                           "--device", "cpu", "--out", "r.yaml"], "--split-half"),
    ("route-calibrate-garbage-light", MODEL, ["route", "calibrate", "--light", "{garbage}", "--heavy", "{dense}",
                                              "--data", "synthetic:8", "--threshold", "0.5", "--device", "cpu",
                                              "--out", "r.yaml"], "garbage"),
    ("route-calibrate-out-under-file", OUTPUT, ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}",
                                                "--data", "synthetic:8", "--threshold", "0.5", "--device", "cpu",
                                                "--out", "{a_file}/r.yaml"], "it is a file"),
    ("route-eval-garbage-router", MODEL, ["route", "eval", "--router", "{garbage_yaml}", "--data", "synthetic:8"],
     "router"),
    ("route-eval-not-a-router", MODEL, ["route", "eval", "--router", "{list_yaml}", "--data", "synthetic:8"],
     "router"),
    ("route-eval-calibration-as-router", MODEL, ["route", "eval", "--router", "{calib}", "--data", "synthetic:8"],
     "router"),
    ("route-eval-wrong-fingerprint", MODEL, ["route", "eval", "--router", "{wrong_router}", "--data", "synthetic:8",
                                             "--device", "cpu"], "fingerprint"),
    ("route-eval-replaced-light", MODEL, ["route", "eval", "--router", "{router}", "--data", "synthetic:8",
                                          "--light", "{other}", "--device", "cpu"], "fingerprint"),
    ("route-eval-random-draws", USAGE, ["route", "eval", "--router", "{router}", "--data", "synthetic:8",
                                        "--random-draws", "0"], "--random-draws"),
    ("route-eval-plot-is-folder", OUTPUT, ["route", "eval", "--router", "{router}", "--data", "synthetic:8",
                                           "--plot", ".", "--device", "cpu"], "folder"),
    ("route-export-missing-router", MODEL, ["route", "export", "--router", "missing.yaml", "--out", "c.pt"],
     "missing.yaml"),
    ("route-export-replaced-heavy", MODEL, ["route", "export", "--router", "{router}", "--heavy", "{other}",
                                            "--out", "c.pt"], "fingerprint"),
    # demo: refused before the first file or the first training step
    ("demo-ratio", USAGE, ["demo", "--ratio", "2", "--out", "demo"], "--ratio"),
    ("demo-epochs-0", USAGE, ["demo", "--epochs", "0", "--out", "demo"], "--epochs"),
    ("demo-train-images", USAGE, ["demo", "--train-images", "10", "--out", "demo"], "--train-images"),
    ("demo-unknown-model", MODEL, ["demo", "--model", "no_such_model", "--out", "demo"], "no_such_model"),
    # --config
    ("config-missing", USAGE, ["eval", "--config", "missing.yaml"], "missing.yaml"),
    ("config-unknown-key", USAGE, ["calibrate", "--config", "{badkey_yaml}"], "nonsense"),
    ("config-not-a-mapping", USAGE, ["eval", "--config", "{list_yaml}"], "mapping"),
    ("config-binary", USAGE, ["eval", "--config", "{garbage_yaml}"], "--config"),
]


def _args(args: list, art: dict[str, Path]) -> list[str]:
    filled = [str(a).format(**{k: str(v) for k, v in art.items()}) for a in args]
    return filled if filled[0] == "info" else [*filled, "--quiet"]


@pytest.mark.parametrize("code,args,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(cli, art, tmp_path, monkeypatch, code, args, needle) -> None:
    monkeypatch.chdir(tmp_path)
    result = _expect_refusal(cli, code, _args(args, art), [tmp_path, art["dense"].parent])
    if needle is not None:
        assert needle in result.stderr, result.stderr


def test_at_least_30_distinct_bad_inputs_across_all_commands() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30
    commands = {c[2][0] if c[2][0] != "route" else " ".join(c[2][:2]) for c in CASES}
    assert {"eval", "info", "demo", "calibrate", "score", "prune", "finetune", "export", "compare",
            "route calibrate", "route eval", "route export"} <= commands


# ---- fuzzing: out-of-range numbers and garbage files -----------------------------------------------

def _outside(low: float, high: float, *, low_valid: bool, high_valid: bool):
    """Floats outside the valid range from `low` to `high` (`*_valid`: whether the bound itself is
    valid), plus NaN and ±inf."""
    below = st.floats(max_value=low, allow_nan=False, exclude_max=low_valid)
    above = st.floats(min_value=high, allow_nan=False, exclude_min=high_valid)
    return st.one_of(below, above, st.sampled_from([math.nan, math.inf, -math.inf]))


@contextlib.contextmanager
def _workdir():
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        yield Path(folder)


def _fuzz_refusal(cli, art, code: int, args: list) -> None:
    with _workdir() as folder:
        _expect_refusal(cli, code, _args(args, art), [folder, art["dense"].parent])


@FUZZ
@given(ratio=_outside(0.0, 1.0, low_valid=False, high_valid=False))
def test_fuzz_prune_ratio(cli, art, ratio) -> None:
    _fuzz_refusal(cli, art, USAGE, ["prune", "--checkpoint", "{dense}", "--scores", "{scores}",
                                    "--ratio", repr(ratio), "--out", "p.safetensors"])


@FUZZ
@given(option=st.sampled_from(["--calib-batches", "--calib-batch-size"]), value=st.integers(max_value=0))
def test_fuzz_calibrate_counts(cli, art, option, value) -> None:
    _fuzz_refusal(cli, art, USAGE, ["calibrate", "--checkpoint", "{dense}", "--data", "synthetic:8",
                                    option, str(value), "--out", "c.safetensors"])


@FUZZ
@given(option=st.sampled_from(["--limit", "--batch-size", "--img-size", "--workers", "--latency-repeats"]),
       value=st.integers(max_value=-1))
def test_fuzz_eval_counts(cli, art, option, value) -> None:
    _fuzz_refusal(cli, art, USAGE, ["eval", "{dense}", "--data", "synthetic:8", option, str(value)])


@FUZZ
@given(case=st.one_of(
    st.tuples(st.just("--epochs"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--lr"), st.one_of(st.floats(max_value=0.0), st.just(math.inf)).map(repr)),
    st.tuples(st.just("--batch-size"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--limit"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--label-smoothing"), _outside(0.0, 1.0, low_valid=True, high_valid=False).map(repr)),
    st.tuples(st.just("--warmup-epochs"), st.floats(max_value=-1e-9).map(repr)),
))
def test_fuzz_finetune_options(cli, art, case) -> None:
    option, value = case
    _fuzz_refusal(cli, art, USAGE, ["finetune", "{pruned}", "--data", "synthetic:16", option, value,
                                    "--out", "f.safetensors"])


ROUTE = ["route", "calibrate", "--light", "{pruned}", "--heavy", "{dense}", "--data", "synthetic:8", "--out", "r.yaml"]


@FUZZ
@given(case=st.one_of(
    st.tuples(st.just(["--match-heavy", "--tolerance"]),
              st.one_of(st.floats(max_value=-1e-9), st.just(math.nan)).map(repr)),
    st.tuples(st.just(["--max-heavy-fraction"]), _outside(0.0, 1.0, low_valid=True, high_valid=True).map(repr)),
    st.tuples(st.just(["--threshold"]), st.just("nan")),
    st.tuples(st.just(["--threshold", "0.5", "--batch-size"]), st.integers(max_value=0).map(str)),
    st.tuples(st.just(["--threshold", "0.5", "--limit"]), st.integers(max_value=0).map(str)),
))
def test_fuzz_route_objectives(cli, art, case) -> None:
    options, value = case
    _fuzz_refusal(cli, art, USAGE, [*ROUTE, *options, value])


@FUZZ
@given(case=st.one_of(
    st.tuples(st.just("--batch-size"), st.integers(max_value=0).map(str)),
    st.tuples(st.just("--opset"), st.one_of(st.integers(max_value=6), st.integers(min_value=31)).map(str)),
))
def test_fuzz_export_options(cli, art, case) -> None:
    option, value = case
    _fuzz_refusal(cli, art, USAGE, ["export", "{pruned}", "--format", "onnx", option, value, "--out", "e.onnx"])


# Garbage bytes where an artefact is expected (all refused with exit 4): (arguments, the file's name)
GARBAGE_TARGETS = {
    "checkpoint": (["eval", "{file}", "--data", "synthetic:8"], "model.safetensors"),
    "torch-checkpoint": (["info", "{file}"], "model.pth"),
    "calibration": (["score", "--calib", "{file}", "--out", "s.json"], "calib.safetensors"),
    "scores": (["prune", "--checkpoint", "{dense}", "--scores", "{file}", "--ratio", "0.5", "--out", "p.safetensors"],
               "scores.json"),
    "router": (["route", "eval", "--router", "{file}", "--data", "synthetic:8"], "router.yaml"),
    "finetune-state": (["finetune", "{pruned}", "--data", "synthetic:16", "--resume", "--state", "{file}",
                        "--device", "cpu", "--out", "f.safetensors"], "f.state.pt"),
}


@FUZZ
@given(kind=st.sampled_from(sorted(GARBAGE_TARGETS)), content=st.binary(max_size=600))
def test_fuzz_garbage_artefacts(cli, art, kind, content) -> None:
    args, name = GARBAGE_TARGETS[kind]
    with _workdir() as folder:
        path = folder / name
        path.write_bytes(content)
        filled = [a.replace("{file}", str(path)) for a in args]
        _expect_refusal(cli, MODEL, _args(filled, art), [folder, art["dense"].parent])


# ---- integrity guards the commands rely on ----------------------------------------------------------

def test_scores_with_nan_never_prune(art) -> None:
    """A metric that yields NaN/Inf for a group stops pruning with NumericalError (exit 5)."""
    from agfprune.core.errors import NumericalError
    from agfprune.core.metrics import get_metric
    from agfprune.core.models import load_model
    from agfprune.core.pruning import MetricScorer, PruneOptions, prune_model

    loaded = load_model(checkpoint=art["dense"], device="cpu")
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}

    def poisoned(_model, _step):
        real = get_metric("magnitude-l1")
        return lambda group: real(group) * torch.tensor(float("nan"))

    with pytest.raises(NumericalError, match="NaN/Inf scores for group"):
        prune_model(loaded, MetricScorer("poisoned", poisoned), PruneOptions(ratio=0.5))
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the input model is untouched


def test_config_sections_of_sub_commands_are_nested(cli, art, tmp_path, monkeypatch) -> None:
    """`route calibrate` reads `route: {calibrate: ...}`, never the `calibrate:` section of `agfprune calibrate`."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    # a top-level calibrate section with keys route calibrate does not have must not affect it
    config.write_text("device: cpu\ncalibrate:\n  batches: 1\n  target: labels\n"
                      "route:\n  split_half: none\n  calibrate:\n    threshold: 0.25\n    signal: margin\n")
    result = cli("route", "calibrate", "--light", art["pruned"], "--heavy", art["dense"], "--data", "synthetic:16",
                 "--out", "r.yaml", "--config", config, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["threshold"] == 0.25 and document["signal"] == "margin" and document["split_half"] == "none"
    # unknown keys in the nested section are reported with the full command name
    config.write_text("route:\n  calibrate:\n    batches: 3\n")
    result = _expect_refusal(cli, USAGE, ["route", "calibrate", "--config", config, "--quiet"], [tmp_path])
    assert "route calibrate: batches" in result.stderr
    # and the top-level section still configures `agfprune calibrate`
    config.write_text("calibrate:\n  calib_batches: 0\n")
    result = _expect_refusal(cli, USAGE, ["calibrate", "--checkpoint", art["dense"], "--data", "synthetic:8",
                                          "--config", config, "--quiet"], [tmp_path])
    assert "--calib-batches 0" in result.stderr


def test_outputs_get_normal_permissions(art) -> None:
    """safetensors replaces the temporary file with its own 0600 one; outputs are readable like any file."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("dense", "calib", "pruned", "scores", "router"):
        assert art[name].stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_exports_carry_format_version_and_source_fingerprint(cli, art, tmp_path) -> None:
    from agfprune.core.checkpoint import read_checkpoint
    from agfprune.core.export import read_export_metadata

    fingerprint = read_checkpoint(art["pruned"]).metadata["fingerprint"]
    for fmt, name in (("torchscript", "m.pt"), ("onnx", "m.onnx")):
        result = cli("export", art["pruned"], "--format", fmt, "--out", tmp_path / name, "--quiet")
        assert result.exit_code == 0, result.stderr
        metadata = read_export_metadata(tmp_path / name)
        assert metadata["format"] == "agfprune-export" and metadata["format_version"] == "1", fmt
        assert metadata["source_fingerprint"] == fingerprint and metadata["arch"] == "cifar_resnet20", fmt
    result = cli("route", "export", "--router", art["router"], "--out", tmp_path / "cascade.pt", "--quiet")
    assert result.exit_code == 0, result.stderr
    metadata = read_export_metadata(tmp_path / "cascade.pt")
    router = yaml.safe_load(art["router"].read_text())
    assert metadata["light_fingerprint"] == router["light"]["fingerprint"]
    assert metadata["heavy_fingerprint"] == router["heavy"]["fingerprint"]
