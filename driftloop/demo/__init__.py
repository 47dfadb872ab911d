"""The closed-loop demo: bootstrap a model, stream events, inject a concept drift, watch the loop heal itself.

Runs on the local stack with real processes: the stream workers, the drift monitor and the retraining consumer, each
started as ``driftloop …`` with the same settings. The demo only produces events and labels and observes the topics;
the loop itself is the product's. In parts:

- ``driver``: starts the workers (``foundation.supervisor``), produces the stream, injects the drift, waits for the
  promotion of a version that learned it;
- ``observer``: reads the predictions, labels, drift, dead-letter and models topics;
- ``report``: the summary (from what the observer read and the retraining consumer's run log), the timeline and the
  accuracy plot.
"""

from driftloop.demo.driver import DemoPlan, learned_after, run_loop
from driftloop.demo.observer import Observed, Observer, TopicView
from driftloop.demo.report import run_outcome, summarise, timeline_lines, write_outputs

__all__ = [
    "DemoPlan",
    "Observed",
    "Observer",
    "TopicView",
    "learned_after",
    "run_loop",
    "run_outcome",
    "summarise",
    "timeline_lines",
    "write_outputs",
]
