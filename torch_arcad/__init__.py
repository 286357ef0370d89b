"""torch-arcad: ArcAD's cold-start calibration for reconstruction-based anomaly detectors.

The paper's parts, one module each: :class:`SinkhornPrototypes` (section 3.2), :class:`HypersphereAnomalySynthesizer`
and :class:`DefectGuidedLoss` (3.3), :class:`FocalDiscriminator` (3.4), composed by :class:`ArcAD` (eq. 10).
The equations themselves are pure functions in :mod:`torch_arcad.functional`.
"""

from . import functional
from .arcad import ArcAD, ArcADOutput, ArcADScores
from .calibration import DefectGuidedLoss
from .discriminator import FocalDiscriminator
from .patches import PatchWeighting, PatchWeights
from .config import PRESETS, ArcADConfig, get_preset
from .prototypes import PrototypeOutput, SinkhornPrototypes, suggest_num_prototypes
from .synthesis import HypersphereAnomalySynthesizer

__version__ = "0.1.0"

__all__ = [
    "ArcAD",
    "ArcADOutput",
    "ArcADScores",
    "SinkhornPrototypes",
    "PrototypeOutput",
    "suggest_num_prototypes",
    "HypersphereAnomalySynthesizer",
    "DefectGuidedLoss",
    "FocalDiscriminator",
    "PatchWeighting",
    "PatchWeights",
    "ArcADConfig",
    "PRESETS",
    "get_preset",
    "functional",
    "__version__",
]
