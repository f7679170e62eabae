"""engine: a hybrid asyncio + process-pool execution engine for agent graphs.

I/O-bound nodes run as tasks on the event loop, CPU-bound nodes in a process
pool, joined in one super-step scheduler. This module only re-exports the
public API; ``tests/test_api.py`` checks the exported surface.
"""

from .app import CompiledGraph as CompiledGraph
from .cache import CachePolicy as CachePolicy
from .cache import InMemoryCache as InMemoryCache
from .cache import NodeCache as NodeCache
from .cache import SqliteCache as SqliteCache
from .classify import LaneDecision as LaneDecision
from .classify import cpu as cpu
from .classify import inline as inline
from .classify import io as io
from .classify import thread as thread
from .context import Runtime as Runtime
from .context import get_config as get_config
from .context import get_runtime as get_runtime
from .errors import CheckpointError as CheckpointError
from .errors import EngineError as EngineError
from .errors import GraphError as GraphError
from .errors import GraphRecursionError as GraphRecursionError
from .errors import InvalidUpdateError as InvalidUpdateError
from .errors import NodeError as NodeError
from .errors import NodeTimeoutError as NodeTimeoutError
from .errors import RecursionLimitError as RecursionLimitError
from .errors import WorkerCrashedError as WorkerCrashedError
from .errors import node_error_of as node_error_of
from .events import BudgetWaited as BudgetWaited
from .events import Event as Event
from .events import LoopBlocked as LoopBlocked
from .events import NodeFailed as NodeFailed
from .events import NodeFinished as NodeFinished
from .events import NodeStarted as NodeStarted
from .events import RunFinished as RunFinished
from .events import RunStarted as RunStarted
from .events import RunStatus as RunStatus
from .events import StepFinished as StepFinished
from .events import StepStarted as StepStarted
from .events import WorkerLoaded as WorkerLoaded
from .explain import ExplainRow as ExplainRow
from .explain import Explanation as Explanation
from .graph import END as END
from .graph import START as START
from .graph import Graph as Graph
from .graph import Send as Send
from .interrupts import GraphInterrupt as GraphInterrupt
from .interrupts import Interrupt as Interrupt
from .interrupts import interrupt as interrupt
from .lanes.pool import default_executor as default_executor
from .options import RunKwargs as RunKwargs
from .options import RunOptions as RunOptions
from .policy import RetryPolicy as RetryPolicy
from .resources import Clock as Clock
from .resources import FakeClock as FakeClock
from .resources import Rate as Rate
from .running import run_sync as run_sync
from .scheduler import RunResult as RunResult
from .spec import Command as Command
from .trace import Metrics as Metrics
from .trace import NodeCall as NodeCall
from .trace import Trace as Trace

__version__ = "0.1.0"

__all__ = [
    "END",
    "START",
    "BudgetWaited",
    "CachePolicy",
    "CheckpointError",
    "Clock",
    "Command",
    "CompiledGraph",
    "EngineError",
    "Event",
    "ExplainRow",
    "Explanation",
    "FakeClock",
    "Graph",
    "GraphError",
    "GraphInterrupt",
    "GraphRecursionError",
    "InMemoryCache",
    "Interrupt",
    "InvalidUpdateError",
    "LaneDecision",
    "LoopBlocked",
    "Metrics",
    "NodeCache",
    "NodeCall",
    "NodeError",
    "NodeFailed",
    "NodeFinished",
    "NodeStarted",
    "NodeTimeoutError",
    "Rate",
    "RecursionLimitError",
    "RetryPolicy",
    "RunFinished",
    "RunKwargs",
    "RunOptions",
    "RunResult",
    "RunStarted",
    "RunStatus",
    "Runtime",
    "Send",
    "SqliteCache",
    "StepFinished",
    "StepStarted",
    "Trace",
    "WorkerCrashedError",
    "WorkerLoaded",
    "cpu",
    "default_executor",
    "get_config",
    "get_runtime",
    "inline",
    "interrupt",
    "io",
    "node_error_of",
    "run_sync",
    "thread",
]
