"""leanmae: how many labelled images do we need, and does MAE pretraining on our own images cut that number?

Every command of the ``leanmae`` CLI is a function here with the same options.
"""

from leanmae.commands.demo import demo
from leanmae.commands.evaluate import evaluate, predict, split
from leanmae.commands.finetune import finetune
from leanmae.commands.pretrain import pretrain
from leanmae.commands.reconstruct import reconstruct

__version__ = "0.1.0"
__all__ = ["demo", "evaluate", "finetune", "predict", "pretrain", "reconstruct", "split", "__version__"]
