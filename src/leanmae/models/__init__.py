from transformers.utils import logging as _hf_logging

# Loading and saving small local checkpoints is instant; transformers bars per call only clutter logs.
_hf_logging.disable_progress_bar()
