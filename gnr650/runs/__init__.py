"""Running and continuing runs: run and sweep directories, resume, skip_done, safe checkpoint reading,
atomic checkpoint writing, the resume checkpoint, RNG and sampler state, kept CSV history, results.json."""

from gnr650.runs.checkpoint_io import LocalCheckpointIO
from gnr650.runs.control import RunControl, run_control
from gnr650.runs.last_checkpoint import RunInterrupted
from gnr650.runs.preflight import PreflightError, check_launch, check_writable
from gnr650.runs.process import prepare_process
from gnr650.runs.results import evaluation_fields, provenance, versions, write_results
from gnr650.runs.resume import completed_results

__all__ = [
    "LocalCheckpointIO",
    "PreflightError",
    "RunControl",
    "RunInterrupted",
    "check_launch",
    "check_writable",
    "completed_results",
    "evaluation_fields",
    "prepare_process",
    "provenance",
    "run_control",
    "versions",
    "write_results",
]
