"""Thin TrainerCallbacks (one per file); the math lives in :mod:`loraexp.analysis`."""

from loraexp.callbacks.adapter_stats import AdapterStatsCallback
from loraexp.callbacks.checkpoint_record import CheckpointRecordCallback
from loraexp.callbacks.efficiency import EfficiencyCallback
from loraexp.callbacks.final_checkpoint import FinalCheckpointCallback
from loraexp.callbacks.frozen_base import FrozenBaseCallback
from loraexp.callbacks.full_training import FullTrainingCallback
from loraexp.callbacks.grad_flow import GradFlowCallback
from loraexp.callbacks.history import HistoryCallback
from loraexp.callbacks.non_finite import NonFiniteCallback
from loraexp.callbacks.preemption import StopOnSignalCallback
from loraexp.callbacks.progress import QuietProgressCallback
from loraexp.callbacks.rung_stop import RungStopCallback
from loraexp.callbacks.timed_checkpoint import TimedCheckpointCallback

__all__ = ["AdapterStatsCallback", "CheckpointRecordCallback", "EfficiencyCallback", "FinalCheckpointCallback",
           "FrozenBaseCallback", "FullTrainingCallback", "GradFlowCallback", "HistoryCallback", "NonFiniteCallback",
           "QuietProgressCallback", "RungStopCallback", "StopOnSignalCallback", "TimedCheckpointCallback"]
