"""Calibration: hook-collected statistics equal brute-force autograd; files round-trip; errors are clear."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from agfprune.core.calibration import (CalibrationStats, check_matches, collect_statistics, load_calibration,
                                       save_calibration)
from agfprune.core.errors import DataError, ModelError, NumericalError, UsageError


class TinyNet(nn.Module):
    """Conv/BN (with an in-place residual add after a BN, as in timm ResNets), tokens, LayerNorm, MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 6, 3, stride=2)
        self.norm = nn.LayerNorm(6)
        self.fc1 = nn.Linear(6, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        z = self.bn2(self.conv2(h))
        z += h  # modifies bn2's output in place
        h = torch.relu(z)
        t = self.conv3(h).flatten(2).transpose(1, 2)  # (N, tokens, 6)
        t = torch.tanh(self.fc1(self.norm(t)))
        return self.head(t.mean(1))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet().double()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model


def _batches(count: int = 3, size: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 8, 8, generator=generator, dtype=torch.float64),
             torch.randint(0, 5, (size,), generator=generator)) for _ in range(count)]


CHANNEL_DIM = {"conv1": 1, "bn1": 1, "conv2": 1, "bn2": 1, "conv3": 1, "norm": -1, "fc1": -1, "head": -1}


def _brute_force(model: nn.Module, batches):
    """Sums computed the slow, obvious way: keep every output, ask autograd for dL/da."""
    model.eval()  # calibration runs in eval mode
    modules = {name: model.get_submodule(name) for name in CHANNEL_DIM}
    out_abs = {n: 0.0 for n in modules}
    out_taylor = {n: 0.0 for n in modules}
    counts = {n: 0 for n in modules}
    in_sq = {n: 0.0 for n in modules if not isinstance(modules[n], (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))}
    grads = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for images, labels in batches:
        outputs, inputs = {}, {}

        def keep(name):
            def hook(module, args, output):
                inputs[name] = args[0].detach().clone()
                outputs[name] = output
                return output * 1.0  # later in-place ops modify the copy, not the recorded output
            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
        loss = nn.functional.cross_entropy(model(images), labels)
        names = list(outputs)
        gradients = torch.autograd.grad(loss, [outputs[n] for n in names] + list(model.parameters()))
        for handle in handles:
            handle.remove()
        for name, grad in zip(names, gradients):
            product = (outputs[name] * grad).detach()
            product = product.movedim(CHANNEL_DIM[name], -1)
            per_sample = product.reshape(product.shape[0], -1, product.shape[-1]).sum(1)
            out_abs[name] = out_abs[name] + product.abs().reshape(-1, product.shape[-1]).sum(0)
            out_taylor[name] = out_taylor[name] + per_sample.abs().sum(0)
            counts[name] += product.numel() // product.shape[-1]
        for name in in_sq:
            x = inputs[name].movedim(CHANNEL_DIM[name], -1)
            in_sq[name] = in_sq[name] + x.pow(2).reshape(-1, x.shape[-1]).sum(0)
        for (name, _), grad in zip(model.named_parameters(), gradients[len(names):]):
            grads[name] += grad
    samples = sum(len(b[0]) for b in batches)
    return ({n: out_abs[n] / counts[n] for n in modules}, {n: out_taylor[n] / samples for n in modules},
            in_sq, grads)


def test_hook_stats_equal_brute_force_autograd_float64():
    model, batches = _tiny_model(), _batches()
    stats = collect_statistics(model, batches, "cpu", batches=len(batches))
    agf, taylor, in_sq, grads = _brute_force(_tiny_model(), batches)
    worst = 0.0
    tapped = [name for name in CHANNEL_DIM if name in stats.out_abs]
    assert tapped == ["bn1", "bn2"]  # removal sites only (tests/core/test_removal_sites.py)
    for name in tapped:
        assert stats.agf(name).dtype == torch.float64
        worst = max(worst, float((stats.agf(name) - agf[name]).abs().max()),
                    float((stats.taylor(name) - taylor[name]).abs().max()))
    for name, expected in in_sq.items():
        worst = max(worst, float((stats.in_sq[name] - expected).abs().max()))
    for name, expected in grads.items():
        worst = max(worst, float((stats.mean_grad(name) - expected / len(batches)).abs().max()))
    assert worst <= 1e-6, worst
    # the in-place add after bn2 really happened and was handled (values differ from bn1's pattern)
    assert float(stats.agf("bn2").sum()) > 0
    assert stats.samples == 15 and stats.batches == 3
    assert stats.metadata["dtype"] == "float64" and stats.metadata["fingerprint"]


def _group_norm_model() -> nn.Module:
    """TinyNet whose bn2 is a GroupNorm: an output that later code modifies in place (`z += h`)
    and that calibration cannot recompute, so it redoes the first batch holding a copy."""
    model = _tiny_model()
    torch.manual_seed(2)
    model.bn2 = nn.GroupNorm(2, 4).double()
    with torch.no_grad():
        model.bn2.weight.uniform_(0.5, 1.5)
        model.bn2.bias.uniform_(-0.2, 0.2)
    return model


def test_outputs_modified_in_place_are_copied_and_equal_brute_force():
    model, batches = _group_norm_model(), _batches()
    stats = collect_statistics(model, batches, "cpu", batches=len(batches))
    agf, taylor, _, _ = _brute_force(_group_norm_model(), batches)
    assert sorted(stats.out_abs) == ["bn1", "bn2"]
    for name in ("bn1", "bn2"):
        torch.testing.assert_close(stats.agf(name), agf[name], rtol=0, atol=1e-10)
        torch.testing.assert_close(stats.taylor(name), taylor[name], rtol=0, atol=1e-10)


def test_batchnorm_outputs_are_not_held_until_backward():
    """Memory: calibration keeps a BatchNorm's input (which BN's backward saves anyway) and recomputes
    the output when its gradient arrives, so an output autograd drops (read by a non-inplace ReLU, or
    by an in-place add) is freed after the forward, as in a plain step."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from agfprune.core.calibration import removal_sites_of
    from agfprune.core.calibration_hooks import _Collector

    model, ((images, labels),) = _tiny_model().eval(), _batches(1)
    collector = _Collector(model, torch.float64, torch.device("cpu"), removal_sites_of(model, images[:1]))
    outputs = {}
    for name in ("bn1", "bn2"):
        model.get_submodule(name).register_forward_hook(
            lambda module, args, output, name=name: outputs.__setitem__(name, StorageWeakRef(output.untyped_storage())))
    loss = nn.functional.cross_entropy(model(images), labels)
    assert {name: ref.expired() for name, ref in outputs.items()} == {"bn1": True, "bn2": True}
    loss.backward()
    collector.remove()
    assert not collector.modified_in_place and collector.stats.out_abs.keys() == {"bn1", "bn2"}


def test_model_is_left_unchanged_and_gradients_cleared():
    model, batches = _tiny_model(), _batches(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collect_statistics(model, batches, "cpu", batches=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_save_load_roundtrip_and_fingerprint_check(tmp_path):
    model, batches = _tiny_model(), _batches(2)
    stats = collect_statistics(model, batches, "cpu", batches=2, metadata={"model": "tiny", "seed": 3})
    path = tmp_path / "calib.safetensors"
    save_calibration(path, stats)
    loaded = load_calibration(path)
    assert isinstance(loaded, CalibrationStats)
    assert loaded.metadata["model"] == "tiny" and loaded.metadata["seed"] == 3
    assert loaded.counts == stats.counts and loaded.samples == stats.samples
    for name in stats.out_abs:
        assert torch.equal(loaded.out_abs[name], stats.out_abs[name])
        assert torch.equal(loaded.in_sq.get(name, torch.zeros(0)), stats.in_sq.get(name, torch.zeros(0)))
    check_matches(loaded, model)
    with torch.no_grad():
        model.fc1.weight[0, 0] += 1.0
    with pytest.raises(ModelError, match="fingerprint"):
        check_matches(loaded, model)


def test_load_rejects_other_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_calibration(tmp_path / "missing.safetensors")
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError):
        load_calibration(bogus)


def test_zero_batches_and_bad_target_are_usage_errors():
    with pytest.raises(UsageError, match="--calib-batches 0"):
        collect_statistics(_tiny_model(), _batches(1), "cpu", batches=0)
    with pytest.raises(UsageError, match="--calib-loss"):
        collect_statistics(_tiny_model(), _batches(1), "cpu", batches=1, target="soft")


def test_too_few_batches_is_a_data_error():
    with pytest.raises(DataError, match="only 1 batch"):
        collect_statistics(_tiny_model(), _batches(1), "cpu", batches=2)


def test_nan_loss_names_the_batch():
    batches = _batches(3)
    batches[1][0][0, 0, 0, 0] = math.nan
    with pytest.raises(NumericalError, match="batch 2/3"):
        collect_statistics(_tiny_model(), batches, "cpu", batches=3)


def test_self_target_needs_no_labels():
    batches = [(x, torch.full_like(y, 99)) for x, y in _batches(1)]  # labels out of range: ignored
    stats = collect_statistics(_tiny_model(), batches, "cpu", batches=1, target="self")
    assert float(stats.agf("bn1").sum()) > 0
    with pytest.raises(DataError, match="label 99"):
        collect_statistics(_tiny_model(), batches, "cpu", batches=1, target="labels")


def test_frozen_shortcut_and_float32_accumulation():
    from agfprune.core.models import create_model

    torch.manual_seed(0)
    model = create_model("cifar_resnet20")
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    stats = collect_statistics(model, batches, "cpu", batches=1)
    assert "layer2.0.shortcut.weight" not in stats.grad  # frozen: requires_grad=False
    assert "layer2.0.bn1.weight" in stats.grad and "layer2.0.bn1.bias" in stats.grad
    assert "layer2.0.shortcut" not in stats.out_abs  # a frozen re-indexing is never a removal site
    assert stats.out_abs["layer2.0.bn2"].shape == (32,)
    assert stats.in_sq["layer3.0.conv1"].shape == (32,)
    assert stats.out_abs["bn1"].dtype == torch.float32


def test_vit_attention_projection_inputs_are_collected():
    from agfprune.core.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                         num_classes=5)
    batches = [(torch.randn(3, 3, 16, 16), torch.randint(0, 5, (3,)))]
    stats = collect_statistics(model, batches, "cpu", batches=1)
    assert stats.in_abs["blocks.0.attn.proj"].shape == (32,)   # heads: the proj input
    assert stats.in_abs["blocks.0.mlp.fc2"].shape == (128,)    # MLP neurons: the fc2 input
    assert stats.out_abs["blocks.0.attn.proj"].shape == (32,)  # stream writes
    assert stats.out_abs["blocks.0.mlp.fc2"].shape == (32,)
    assert stats.in_abs["blocks.0"].shape == (32,)             # patch embedding + positions + cls
    assert "blocks.0.norm1" not in stats.out_abs and "blocks.0.attn.qkv" not in stats.out_abs  # reads
    assert stats.counts["out"]["blocks.0.attn.proj"] == 3 * 5  # samples x tokens (4 patches + cls)


def test_calibration_autocasts_to_bf16_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """AMP is on by default for calibrate as for eval and finetune, but its backward pass has no loss
    scaling: on a GPU without bf16 it runs in float32 instead of fp16 (whose small gradients underflow)."""
    from agfprune.core.device import autocast_dtype

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(cuda, True) == torch.float16  # eval and finetune (finetune scales its loss)
    assert autocast_dtype(cuda, True, fp16=False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(cuda, True, fp16=False) == torch.bfloat16
    assert autocast_dtype(cuda, False) is None and autocast_dtype(cpu, True) is None
    calls = []
    import agfprune.core.calibration as calibration

    original = calibration.autocast
    monkeypatch.setattr(calibration, "autocast", lambda *a, **k: calls.append(k) or original(*a, **k))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    collect_statistics(model, [(images, labels)], torch.device("cpu"), batches=1, amp=True)
    assert calls and all(call.get("fp16") is False for call in calls)


def test_token_sites_equal_brute_force_autograd():
    """(N, tokens, C) sites (ViT head features and stream writes) against |a * dL/da| from autograd."""
    from agfprune.core.models import create_model

    def vit() -> nn.Module:
        torch.manual_seed(0)
        return create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                            num_classes=5).double().eval()

    generator = torch.Generator().manual_seed(3)
    batches = [(torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64), torch.tensor([0, 4, 2]))]
    stats = collect_statistics(vit(), batches, "cpu", batches=1)
    model, tensors = vit(), {}
    model.blocks[0].attn.proj.register_forward_pre_hook(lambda m, args: tensors.__setitem__("proj:in", args[0]))
    model.blocks[0].mlp.fc2.register_forward_hook(lambda m, args, out: tensors.__setitem__("fc2:out", out))
    (images, labels), = batches
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(images), labels), list(tensors.values()))
    expected = {key: (tensors[key] * grad).detach() for key, grad in zip(tensors, grads)}  # (N, T, C)
    for key, sums, taylors in (("proj:in", stats.in_abs["blocks.0.attn.proj"], stats.in_taylor["blocks.0.attn.proj"]),
                               ("fc2:out", stats.out_abs["blocks.0.mlp.fc2"], stats.out_taylor["blocks.0.mlp.fc2"])):
        assert float(expected[key].abs().sum()) > 0
        torch.testing.assert_close(sums, expected[key].abs().sum((0, 1)), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(taylors, expected[key].sum(1).abs().sum(0), rtol=1e-9, atol=1e-12)
