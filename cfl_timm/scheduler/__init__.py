from .cyclical_scheduler import CYCLICAL_VALUE_NAMES, CyclicalScheduler, check_cyclical_arguments, scheduled_clip_args
from .cyclical_value import cyclical_value
from .cyclical_weight_decay import CyclicalWeightDecayScheduler
from .onecycle import OneCycleLRScheduler
from .scheduler_registry import create_scheduler_v2, register, scheduler_kwargs
