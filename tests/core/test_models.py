"""CIFAR ResNets: registry, option-A equivalence, checkpoint compatibility."""

from __future__ import annotations

import pytest
import timm
import torch

from agfprune.core.errors import ModelError, UsageError
from agfprune.core.models import create_model, load_model
from agfprune.core.models.cifar_resnet import OptionAShortcut, option_a_reference
from tests.conftest import RESNET56_JPEG, RESNET56_TH, VIT_JPEG, needs_shared


@pytest.mark.parametrize("depth,blocks", [(20, 3), (32, 5), (44, 7), (56, 9)])
def test_cifar_resnets_are_registered_in_timm(depth: int, blocks: int) -> None:
    import agfprune.core.models  # noqa: F401

    assert timm.is_model(f"cifar_resnet{depth}")
    model = create_model(f"cifar_resnet{depth}")
    assert len(model.layer1) == blocks
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_own_data_config_equals_timms() -> None:
    """CIFAR ResNets resolve their data config without timm; it must be what timm would say."""
    from timm.data import resolve_data_config

    from agfprune.core.models.factory import resolve_model_data_config

    model = create_model("cifar_resnet20", num_classes=7)
    assert resolve_model_data_config(model) == {**resolve_data_config({}, model=model), "num_classes": 7}


def test_op_counter_imported_before_timm_still_counts_attention() -> None:
    """`count_cost` imports torch-pruning without timm when timm is not loaded; a ViT counted later in
    the same process must still get timm's attention MACs (as in a process that loaded timm first)."""
    import subprocess
    import sys

    code = ("import sys, torch; from agfprune.core.evaluate import count_cost; from agfprune.core.models import create_model\n"
            "first = {order!r} == 'cifar_first'\n"
            "if first: count_cost(create_model('cifar_resnet20'), (3, 32, 32)); assert 'timm' not in sys.modules\n"
            "vit = create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, num_classes=10)\n"
            "print(count_cost(vit, (3, 32, 32)).macs)")
    macs = [int(subprocess.run([sys.executable, "-c", code.format(order=order)], capture_output=True, text=True,
                               check=True).stdout) for order in ("cifar_first", "timm_first")]
    assert macs[0] == macs[1]


def test_option_a_shortcut_equals_pad_and_subsample() -> None:
    torch.manual_seed(0)
    shortcut = OptionAShortcut(16, 32)
    x = torch.randn(3, 16, 9, 9)
    assert torch.equal(shortcut(x), option_a_reference(x, 32))
    assert not shortcut.weight.requires_grad


def test_block_with_conv_shortcut_matches_reference_forward() -> None:
    """A whole downsampling block computed with the reference shortcut gives the same output."""
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    block = model.layer2[0]
    x = torch.randn(2, 16, 16, 16)
    out = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + option_a_reference(x, 32))
    assert torch.allclose(block(x), out, atol=0, rtol=0)


def test_state_dict_without_shortcut_weights_loads() -> None:
    model = create_model("cifar_resnet20")
    state = {k: v for k, v in model.state_dict().items() if "shortcut" not in k}
    fresh = create_model("cifar_resnet20")
    fresh.layer2[0].shortcut.weight.data.zero_()
    fresh.load_state_dict(state, strict=True)
    assert torch.equal(fresh.layer2[0].shortcut.weight, OptionAShortcut.shifted_identity(16, 32))


def test_unknown_model_suggests_names() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet1800'.*did you mean"):
        create_model("resnet1800")


def test_load_model_requires_a_name_or_checkpoint() -> None:
    with pytest.raises(UsageError):
        load_model()


@pytest.mark.shared
@needs_shared(RESNET56_TH)
def test_public_th_checkpoint_loads_strictly() -> None:
    loaded = load_model("cifar_resnet56", RESNET56_TH)
    assert loaded.num_classes == 10
    assert loaded.metadata["best_prec1"] > 90


@pytest.mark.shared
@needs_shared(RESNET56_JPEG, VIT_JPEG)
def test_safetensors_metadata_decides_architecture() -> None:
    assert load_model(checkpoint=RESNET56_JPEG).arch == "cifar_resnet56"
    vit = load_model(checkpoint=VIT_JPEG)
    assert vit.arch == "vit_tiny_patch16_224"
    assert vit.input_size == (3, 32, 32)
    assert vit.model.patch_embed.proj.kernel_size == (4, 4)
    assert vit.model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.shared
@needs_shared(RESNET56_JPEG)
def test_checkpoint_for_another_architecture_is_refused() -> None:
    with pytest.raises(ModelError, match="made for model cifar_resnet56, not cifar_resnet20"):
        load_model("cifar_resnet20", RESNET56_JPEG)
