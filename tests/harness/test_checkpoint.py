from __future__ import annotations

import urllib.error
from collections import OrderedDict

import pytest
import torch
from torch import nn

from arcad_harness.backbones.checkpoint import (
    MAX_LISTED_KEYS,
    CheckpointDownloadError,
    CheckpointError,
    load_checkpoint,
    load_state_dict,
    unwrap_state_dict,
)


class TinyNet(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, hidden, 3, padding=1)
        self.bn = nn.BatchNorm2d(hidden)
        self.fc = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class Opaque:
    """A class that weights_only unpickling refuses."""


def _randomised(seed: int) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.num_batches_tracked.fill_(7)
    return model


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_round_trip_loads_every_tensor(tmp_path):
    source = _randomised(0).eval()
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    target = _randomised(1).eval()
    report = load_checkpoint(target, path)
    assert report.ok
    _assert_same_state(source, target)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
        lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        lambda sd: {"teacher": sd, "student": {"other": torch.zeros(1)}},
        lambda sd: {"model": {"state_dict": sd}},
    ],
)
def test_common_wrappers_are_removed(tmp_path, wrap):
    source = _randomised(0)
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(source.state_dict()), path)
    target = _randomised(1)
    load_checkpoint(target, path)
    _assert_same_state(source, target)


def test_prefix_is_kept_when_not_shared_by_every_key():
    sd = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    assert set(unwrap_state_dict(sd)) == {"module.a", "b"}


def test_missing_key_is_named(tmp_path):
    sd = _randomised(0).state_dict()
    del sd["bn.running_var"]
    path = tmp_path / "missing.pth"
    torch.save(sd, path)
    target = _randomised(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing key.*bn\.running_var"):
        load_checkpoint(target, path)
    # A failed strict load leaves the model untouched.
    for key, value in target.state_dict().items():
        assert torch.equal(value, before[key])


def test_unexpected_key_is_named():
    sd = _randomised(0).state_dict()
    sd["head.extra"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"unexpected key.*head\.extra"):
        load_checkpoint(_randomised(1), sd)


def test_shape_mismatch_names_key_and_both_shapes():
    sd = _randomised(0).state_dict()
    sd["fc.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_randomised(1), sd)
    message = str(info.value)
    assert "fc.weight" in message and "expected [2, 4]" in message and "found [5, 4]" in message


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_long_key_lists_are_truncated():
    wide = nn.Sequential(*[nn.Linear(2, 2) for _ in range(MAX_LISTED_KEYS + 3)])
    with pytest.raises(CheckpointError, match=r"and \d+ more"):
        load_checkpoint(wide, {})


def test_non_strict_loads_what_fits_and_reports_the_rest():
    source = _randomised(0)
    sd = source.state_dict()
    sd["fc.weight"] = torch.zeros(5, 4)
    del sd["conv.bias"]
    sd["extra"] = torch.zeros(1)
    target = _randomised(1)
    report = load_checkpoint(target, sd, strict=False)
    assert report.missing == ["conv.bias"]
    assert report.unexpected == ["extra"]
    assert report.mismatched == [("fc.weight", (2, 4), (5, 4))]
    assert torch.equal(target.conv.weight, source.conv.weight)
    assert not torch.equal(target.fc.weight, torch.zeros(2, 4))


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_state_dict(path)


def test_non_tensor_objects_are_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": _randomised(0).state_dict(), "config": Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_state_dict(path)


def test_non_tensor_entries_are_reported():
    with pytest.raises(CheckpointError, match="'epoch'"):
        unwrap_state_dict({"w": torch.zeros(1), "epoch": 3})


def test_bad_source_type():
    with pytest.raises(TypeError, match="path"):
        load_state_dict(3)  # type: ignore[arg-type]


def test_url_goes_through_torch_hub(monkeypatch):
    source = _randomised(0)
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return {"model": source.state_dict()}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    target = _randomised(1)
    load_checkpoint(target, "https://example.org/tiny.pth")
    _assert_same_state(source, target)
    (url, kwargs), = calls
    assert url == "https://example.org/tiny.pth"
    assert kwargs["weights_only"] is True and kwargs["map_location"] == "cpu"


def test_offline_download_explains_the_workaround(monkeypatch):
    def offline(url, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointDownloadError) as info:
        load_state_dict("https://example.org/tiny.pth")
    message = str(info.value)
    assert "https://example.org/tiny.pth" in message and "--weights PATH" in message
    assert "tiny.pth" in message.split("copy it to")[-1]
