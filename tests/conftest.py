import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def unit(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random unit rows (last dimension normalised)."""
    x = torch.randn(*shape, generator=generator)
    return x / x.norm(dim=-1, keepdim=True)
