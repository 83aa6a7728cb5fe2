"""Fine-tuning as upstream MatterSim's ``finetune_mattersim.py`` (resumable, with
committees trained in one compiled step), committees of models, and the run's
metrics.

See the user guide's "Fine-tuning and committees" page.
"""

from ._src.committee import Committee, save_committee, stack_models
from ._src.dataset import InvalidLabelError
from ._src.io import load_committee
from ._src.train import train
from ._src.train_metrics import plot_metrics, read_metrics
from ._src.train_settings import TrainResult, TrainSettings

__all__ = [
    "Committee",
    "InvalidLabelError",
    "TrainResult",
    "TrainSettings",
    "load_committee",
    "plot_metrics",
    "read_metrics",
    "save_committee",
    "stack_models",
    "train",
]
