from .cyclical import CyclicalSchedules, create_cyclical_schedules, cyclical_schedule_kwargs
from .value import CyclicalValueScheduler, cyclical_value
from .weight_decay import CyclicalWeightDecayScheduler
