"""README's code block is the complete change to a trainer: executed here, as written, on a tiny model."""

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
STEP_MARKER = "# every step"
TOKENS, GRID, IMAGE = 5 + 784, 28, 224  # the README's Dinomaly-style shapes: 5 prefix tokens, 28 x 28 patches


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_one_python_block_with_the_counted_lines():
    blocks = readme_python_blocks()
    assert len(blocks) == 1
    code = [line for line in blocks[0].splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) == 7  # README: "Seven lines: four once ... and three in the training step"
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "Seven lines: four once" in text and "three in the training step" in text
    assert STEP_MARKER in blocks[0]


def test_readme_block_trains_a_tiny_model():
    block = readme_python_blocks()[0]
    once, step = block.split(STEP_MARKER)
    step = STEP_MARKER + step
    torch.manual_seed(0)
    encoder, decoder = nn.Linear(8, 768), nn.Linear(768, 8)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-3)
    namespace = {"batch_size": 2, "device": "cpu", "optimizer": optimizer}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # K fits the batch: no warning
        exec(compile(once, str(README), "exec"), namespace)
        arcad = namespace["arcad"]
        assert arcad.prototypes.num_prototypes == 64
        assert len(optimizer.param_groups) == 2
        first_weight = arcad.discriminator.net[0].weight.detach().clone()
        for i in range(3):
            tokens = torch.randn(2, TOKENS, 8)
            z = encoder(tokens)
            recon_per_image = (decoder(z) - tokens).pow(2).mean(dim=(1, 2))
            masks = torch.zeros(2, IMAGE, IMAGE)
            masks[1, 40:90, 100:160] = 1
            labels = torch.tensor([0, 1])
            namespace.update(z=z, recon_per_image=recon_per_image, masks=masks, labels=labels)
            exec(compile(step, str(README), "exec"), namespace)
            loss = namespace["loss"]
            assert torch.isfinite(loss)
            # the reconstruction term covers the normal image only
            assert torch.allclose(namespace["loss_recon"], recon_per_image[0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert arcad.initialized  # 784 normal patches a step >= 4 K: initialised on the first step
            if i > 0:
                assert loss.item() > namespace["loss_recon"].item()  # the ArcAD terms are in the loss
    assert not torch.equal(arcad.discriminator.net[0].weight, first_weight)  # the optimiser trains it
