"""Thin TrainerCallbacks (one per file); the math lives in :mod:`loraexp.analysis`."""

from loraexp.run.callbacks.adapter_stats import AdapterStatsCallback
from loraexp.run.callbacks.checkpoint_record import CheckpointRecordCallback
from loraexp.run.callbacks.efficiency import EfficiencyCallback
from loraexp.run.callbacks.final_checkpoint import FinalCheckpointCallback
from loraexp.run.callbacks.frozen_base import FrozenBaseCallback
from loraexp.run.callbacks.full_training import FullTrainingCallback
from loraexp.run.callbacks.grad_flow import GradFlowCallback
from loraexp.run.callbacks.history import HistoryCallback
from loraexp.run.callbacks.non_finite import NonFiniteCallback
from loraexp.run.callbacks.preemption import StopOnSignalCallback
from loraexp.run.callbacks.progress import QuietProgressCallback
from loraexp.run.callbacks.rung_stop import RungStopCallback
from loraexp.run.callbacks.timed_checkpoint import TimedCheckpointCallback

__all__ = ["AdapterStatsCallback", "CheckpointRecordCallback", "EfficiencyCallback", "FinalCheckpointCallback",
           "FrozenBaseCallback", "FullTrainingCallback", "GradFlowCallback", "HistoryCallback", "NonFiniteCallback",
           "QuietProgressCallback", "RungStopCallback", "StopOnSignalCallback", "TimedCheckpointCallback"]
