"""Training glue for train.py: the command line (args), the temperature task, crash-safe checkpoints and
CPU-capable distributed helpers."""
from .amp import CountingScaler
from .args import save_args_yaml
from .checkpoint import (
    AtomicCheckpointSaver,
    find_resume_checkpoint,
    load_training_checkpoint,
    recover_run_dir,
    restore_training_state,
    run_dir_in_use,
)
from .distillation import create_distillation_task, distillation_kwargs
from .distributed import ProcessInfo, barrier, ddp_device_ids, gather_objects, init_process
from .evaluate import (
    EvalResult,
    EvalShard,
    create_eval_loader,
    evaluate,
    evaluate_temperature_scaled,
    metrics_of_logits,
    predict,
    shard_eval_dataset,
)
from .run_owner import RunLock, claim_run
from .task import CriterionStateClassificationTask
