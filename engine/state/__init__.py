"""State: schemas of TypedDict, dataclass and pydantic states, their channels, node
views, and the deterministic merge at the barrier.

This package only re-exports; see ``schema.py`` for how a run's state is held.
"""

from .channels import Channel as Channel
from .channels import Key as Key
from .channels import Kind as Kind
from .channels import Reducer as Reducer
from .channels import input_type_of as input_type_of
from .channels import kind_of as kind_of
from .merge import ABSENT as ABSENT
from .merge import Write as Write
from .merge import writes_of as writes_of
from .roundtrip import RoundTrip as RoundTrip
from .roundtrip import round_trip as round_trip
from .schema import Conventions as Conventions
from .schema import StateSchema as StateSchema
from .schema import Values as Values
from .views import View as View

__all__ = [
    "ABSENT",
    "Channel",
    "Conventions",
    "Key",
    "Kind",
    "Reducer",
    "RoundTrip",
    "StateSchema",
    "Values",
    "View",
    "Write",
    "input_type_of",
    "kind_of",
    "round_trip",
    "writes_of",
]
