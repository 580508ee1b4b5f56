"""Training helpers for train.py: temperature task, crash-safe run files, CPU-capable distributed helpers."""
from .distributed import barrier, ddp_device_ids, gather_objects
from .io import SUMMARY_COLUMNS, SummaryWriter, atomic_write_bytes, atomic_write_text, read_summary, save_args_yaml
from .task import TemperatureClassificationTask
